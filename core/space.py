"""Space mode: the studio as a public Hugging Face Space demo (``SPACE_ID`` set, as Spaces do).

What changes there:

* the workspace goes under ``/data`` when persistent storage is attached (``/data`` exists and is writable), else it
  stays on the Space's ephemeral disk — the banner says which;
* caps per run and per visitor (environment, with defaults sized for the free CPU tier): ``FTS_SPACE_MAX_STEPS``
  (60), ``FTS_SPACE_MAX_ROWS`` rows per imported dataset (2000), ``FTS_SPACE_RUNS_PER_VISITOR`` queued or running
  training runs per visitor (1);
* the demo task is preloaded, so the quick start and the Train tab have data on the first visit;
* Deploy serves through the local server only; TGI / vLLM give the command to run on a GPU host.

A visitor is the login name when the studio has accounts (core.users), else a salted hash of their address
(``x-forwarded-for`` behind the Spaces proxy): the raw address is never stored.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from core.config import positive_int_env


class SpaceLimitError(ValueError):
    """Something a Space visitor asked for that is over this Space's caps; the message says the cap."""


@dataclass(frozen=True)
class Limits:
    max_steps: int
    max_rows: int
    runs_per_visitor: int


def max_upload_mb() -> int:
    """``FTS_MAX_UPLOAD_MB``: the largest file a browser may upload (default 1024 MB locally, 100 MB on a Space)."""
    return positive_int_env("FTS_MAX_UPLOAD_MB", 100 if in_space() else 1024)


def space_id() -> str | None:
    return os.environ.get("SPACE_ID") or None


def in_space() -> bool:
    return space_id() is not None


def limits() -> Limits:
    return Limits(positive_int_env("FTS_SPACE_MAX_STEPS", 60), positive_int_env("FTS_SPACE_MAX_ROWS", 2000),
                  positive_int_env("FTS_SPACE_RUNS_PER_VISITOR", 1))


def persistent_root() -> Path | None:
    """``/data`` (or ``FTS_SPACE_DATA_DIR``) when it is a writable folder: a Space's persistent storage."""
    root = Path(os.environ.get("FTS_SPACE_DATA_DIR", "/data"))
    return root if root.is_dir() and os.access(root, os.W_OK) else None


def default_workspace() -> Path | None:
    """Where a Space keeps its workspace when ``FTS_WORKSPACE`` is not set (None: not a Space, or no persistent
    storage — the repository's ``workspace/`` on the ephemeral disk)."""
    if not in_space():
        return None
    root = persistent_root()
    return root / "workspace" if root is not None else None


def signed_in_name(request) -> str:
    """The account behind a request (Gradio's login, ``FTS_AUTH``); '' for an anonymous visitor."""
    return str(getattr(request, "username", None) or "")


def visitor_id(request) -> str:
    """A stable, anonymous id for the browser behind a Gradio request ('' outside a request)."""
    if request is None:
        return ""
    name = signed_in_name(request)
    if name:
        return name
    headers = getattr(request, "headers", None) or {}
    forwarded = headers.get("x-forwarded-for", "") if hasattr(headers, "get") else ""
    client = getattr(getattr(request, "client", None), "host", "") or ""
    address = forwarded.split(",")[0].strip() or client
    if not address:
        return ""
    salt = os.environ.get("FTS_VISITOR_SALT") or (space_id() or "local")
    return "v-" + hashlib.sha256(f"{salt}|{address}".encode()).hexdigest()[:12]


def check_training(config, visitor: str = "") -> None:
    """Refuse a training run over this Space's caps (not a Space: nothing to check)."""
    if not in_space():
        return
    lim = limits()
    if config.max_steps < 1 or config.max_steps > lim.max_steps:
        raise SpaceLimitError(f"on this Space a run is at most {lim.max_steps} steps (shared CPU): set Max steps to "
                              f"1–{lim.max_steps} (got {config.max_steps}{' = epochs' if config.max_steps < 1 else ''})"
                              "; run the studio on your own machine for longer runs")
    if visitor:
        from core import runs

        active = [r for r in runs.list_runs(kind="train") if r.owner == visitor and not r.status.is_finished]
        if len(active) >= lim.runs_per_visitor:
            raise SpaceLimitError(f"on this Space each visitor has at most {lim.runs_per_visitor} run(s) queued or "
                                  f"running; run #{active[0].id} is {active[0].status.value} — wait for it or stop it")


def check_rows(n_rows: int) -> None:
    if in_space() and n_rows > limits().max_rows:
        raise SpaceLimitError(f"on this Space a dataset has at most {limits().max_rows} rows (this one has {n_rows}): "
                              "import a sample of it")


def banner_markdown() -> str:
    lim = limits()
    root = persistent_root()
    disk = (f"persistent storage is attached: datasets and runs are kept under `{root}`" if root is not None else
            "**the disk is ephemeral**: datasets and runs are lost when the Space restarts (attach persistent "
            "storage to keep them)")
    return (f"**Running as a Hugging Face Space** (`{space_id()}`) on a shared CPU. Runs are capped at "
            f"{lim.max_steps} steps, datasets at {lim.max_rows} rows, {lim.runs_per_visitor} run(s) per visitor at a "
            f"time; {disk}. Deploy serves through the local server only — for TGI / vLLM it gives the command to run "
            "on a GPU host. Duplicate the Space or run it locally (`make run`) for real work.")


def preload_demo() -> str:
    """Import the demo task once, when the Space's workspace has no datasets (idempotent)."""
    from core.data import list_datasets

    if list_datasets():
        return "datasets present"
    from core import quickstart

    ds = quickstart.load_demo()
    return f"demo task preloaded as dataset #{ds.id}"
