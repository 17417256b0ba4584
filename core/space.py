"""Space mode: the studio as a public Hugging Face Space demo (``SPACE_ID`` set, as Spaces do).

What changes there:

* the workspace goes under ``/data`` when persistent storage is attached (``/data`` exists and is writable), else it
  stays on the Space's ephemeral disk — the banner says which (core.config chooses the workspace);
* caps per run and per visitor (environment, with defaults sized for the free CPU tier): ``FTS_SPACE_MAX_STEPS``
  (60), ``FTS_SPACE_MAX_ROWS`` rows per imported dataset (2000), ``FTS_SPACE_RUNS_PER_VISITOR`` queued or running
  training runs per visitor (1, counted where a run is submitted: core.train.jobs);
* the demo task is preloaded (core.quickstart.preload_demo), so the quick start and the Train tab have data on the
  first visit;
* Deploy serves through the local server only; TGI / vLLM give the command to run on a GPU host.
* **Sign in with Hugging Face** (``hf_oauth: true`` in the README's front matter; the Space then sets
  ``OAUTH_CLIENT_ID``): the page shows Gradio's ``LoginButton``. A signed-in visitor is their Hugging Face account —
  ``hf:<username>`` (:func:`hf_owner`) owns their runs, datasets and deployments on any device — and gets the
  account's caps (``FTS_SPACE_RUNS_PER_ACCOUNT``, default 2, instead of the anonymous visitor's 1). A Hub push uses the
  visitor's own OAuth token (scope ``contribute-repos``: new repositories, only those), held in the request's
  handler only — never the Space owner's ``HF_TOKEN``, never stored or logged.

A visitor is the login name when the studio has accounts (core.users), the Hugging Face account when signed in with
it, else a salted hash of their address (``x-forwarded-for`` behind the Spaces proxy; ui.common.visitor_id): the raw
address is never stored.

This module reads only the environment: it sits with core.config at the bottom of core, so any layer may ask it.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass

from core.config import in_space, persistent_root, positive_int_env, space_id

HF_OWNER_PREFIX = "hf:"  # an owner signed in with Hugging Face (no studio account name holds ':')
HF_USERNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
# the OAuth scopes a visitor's token needs to push (README front matter asks for contribute-repos)
PUSH_SCOPES = ("contribute-repos", "write-repos", "manage-repos")


class SpaceLimitError(ValueError):
    """Something a Space visitor asked for that is over this Space's caps; the message says the cap."""


@dataclass(frozen=True)
class Limits:
    max_steps: int
    max_rows: int
    runs_per_visitor: int
    runs_per_account: int  # a visitor signed in with Hugging Face


def max_upload_mb() -> int:
    """``FTS_MAX_UPLOAD_MB``: the largest file a browser may upload (default 1024 MB locally, 100 MB on a Space)."""
    return positive_int_env("FTS_MAX_UPLOAD_MB", 100 if in_space() else 1024)


def limits() -> Limits:
    return Limits(positive_int_env("FTS_SPACE_MAX_STEPS", 60), positive_int_env("FTS_SPACE_MAX_ROWS", 2000),
                  positive_int_env("FTS_SPACE_RUNS_PER_VISITOR", 1), positive_int_env("FTS_SPACE_RUNS_PER_ACCOUNT", 2))


def oauth_enabled() -> bool:
    """Sign in with Hugging Face: a Space whose README asks for it (``hf_oauth: true``: the Space sets
    ``OAUTH_CLIENT_ID``). Gradio mocks the sign-in off a Space (gradio.oauth), with this machine's Hub login."""
    return in_space() and bool(os.environ.get("OAUTH_CLIENT_ID"))


def hf_owner(username: str | None) -> str:
    """The owner a Hugging Face account is recorded as (``hf:<username>``); '' for a name that is not a Hub
    username (nothing is made of it)."""
    name = str(username or "")
    return HF_OWNER_PREFIX + name if HF_USERNAME.match(name) else ""


def is_hf_owner(owner: str | None) -> bool:
    return str(owner or "").startswith(HF_OWNER_PREFIX)


def runs_allowed(owner: str) -> int:
    """Queued or running training runs ``owner`` may have on this Space: an account's cap, or a visitor's."""
    lim = limits()
    return lim.runs_per_account if is_hf_owner(owner) else lim.runs_per_visitor


def can_push(scope: str | None) -> bool:
    """Whether an OAuth token of this scope (space-separated) may create and write a model repository."""
    return bool(set(str(scope or "").split()) & set(PUSH_SCOPES))


def check_training(config) -> None:
    """Refuse a training run over this Space's step cap (not a Space: nothing to check). The runs-per-visitor cap
    is counted where runs are submitted (core.train.jobs.submit_training)."""
    if not in_space():
        return
    lim = limits()
    if config.max_steps < 1 or config.max_steps > lim.max_steps:
        raise SpaceLimitError(f"on this Space a run is at most {lim.max_steps} steps (shared CPU): set Max steps to "
                              f"1–{lim.max_steps} (got {config.max_steps}{' = epochs' if config.max_steps < 1 else ''})"
                              "; run the studio on your own machine for longer runs")


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
    account = (f" ({lim.runs_per_account} when signed in with Hugging Face: your runs follow your account, and a "
               "Hub push uses your own token)") if oauth_enabled() else ""
    return (f"**Running as a Hugging Face Space** (`{space_id()}`) on a shared CPU. Runs are capped at "
            f"{lim.max_steps} steps, datasets at {lim.max_rows} rows, {lim.runs_per_visitor} run(s) per visitor at a "
            f"time{account}; {disk}. Deploy serves through the local server only — for TGI / vLLM it gives the "
            "command to run on a GPU host. Duplicate the Space or run it locally (`make run`) for real work.")
