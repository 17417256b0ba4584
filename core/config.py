"""Typed settings from the environment (workspace dir, DATABASE_URL, auth, worker limits, whether this is a Space).

Every value can be overridden with an ``FTS_*`` environment variable; ``DATABASE_URL`` follows the usual convention.
Settings are read fresh on each call of :func:`get_settings` so tests and subprocesses can point at their own
workspace through the environment.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def positive_int_env(name: str, default: int) -> int:
    """A whole number of at least 1 from the environment; unset or not a number: ``default`` (caps and sizes a
    Space admin sets, where a typo must not stop the page)."""
    try:
        return max(1, int(os.environ.get(name, default)))
    except ValueError:
        return default


def switched_on(value: str | None) -> bool:
    """An on/off setting (``FTS_CPU_SHARE``, ``FTS_WARM_WORKER``): unset, empty or anything else is on; ``0``,
    ``false``, ``no`` or ``off`` (any case, spaces around) is off."""
    return (value or "").strip().lower() not in ("0", "false", "no", "off")


def _int_env(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ValueError(f"environment variable {name}={raw!r} must be a whole number") from exc


@dataclass(frozen=True)
class Settings:
    workspace: Path
    database_url: str
    models_dir: Path
    auth: tuple[str, str] | None
    max_concurrent_runs: int
    worker_threads: int  # 0 = torch's default (all cores)
    cpu_share: bool  # a CPU training's threads follow the host's free cores (core.train.cpu_share)
    worker_nice: int
    stop_timeout_s: float
    worker_max_memory_bytes: int  # 0 = no cap; else the worker's address space is capped (a clean OOM, not a dead box)

    @property
    def runs_dir(self) -> Path:
        return self.workspace / "runs"

    @property
    def datasets_dir(self) -> Path:
        return self.workspace / "datasets"


def space_id() -> str | None:
    """The Hugging Face Space this studio runs as (``SPACE_ID``, set by Spaces); None: not a Space (core.space)."""
    return os.environ.get("SPACE_ID") or None


def in_space() -> bool:
    return space_id() is not None


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


def get_settings() -> Settings:
    workspace = Path(os.environ.get("FTS_WORKSPACE") or default_workspace() or REPO_ROOT / "workspace"
                     ).expanduser().resolve()
    database_url = os.environ.get("DATABASE_URL") or f"sqlite:///{workspace / 'studio.db'}"
    models_dir = Path(os.environ.get("FTS_MODELS_DIR", workspace / "models")).expanduser().resolve()
    auth = None
    raw_auth = os.environ.get("FTS_AUTH", "")
    if raw_auth:
        user, sep, password = raw_auth.partition(":")
        if not sep or not user or not password:
            raise ValueError("FTS_AUTH must look like 'user:password'")
        auth = (user, password)
    return Settings(
        workspace=workspace,
        database_url=database_url,
        models_dir=models_dir,
        auth=auth,
        max_concurrent_runs=max(1, _int_env("FTS_MAX_CONCURRENT_RUNS", 1)),
        worker_threads=max(0, _int_env("FTS_WORKER_THREADS", 0)),
        cpu_share=switched_on(os.environ.get("FTS_CPU_SHARE")),
        worker_nice=_int_env("FTS_WORKER_NICE", 10),
        stop_timeout_s=float(os.environ.get("FTS_STOP_TIMEOUT_S", "60")),
        worker_max_memory_bytes=int(float(os.environ.get("FTS_WORKER_MAX_MEMORY_GB", "0")) * 1024**3),
    )


def db_session():
    """A committed-on-success session on the configured database (``DATABASE_URL`` or the workspace SQLite)."""
    from storage import session_scope  # here: reading settings does not load SQLAlchemy

    return session_scope(get_settings().database_url)
