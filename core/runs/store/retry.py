"""Writes (and reads) that retry on a busy or briefly unreachable database ("database is locked", a restarting
server) for up to ``FTS_DB_RETRY_S`` seconds (default 60): a lock held by another writer never reaches a user or
kills a worker. A full disk or a broken schema is not retried.
"""
from __future__ import annotations

import os
import random
import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.exc import DBAPIError, OperationalError

T = TypeVar("T")


def _retry_window_s() -> float:
    try:
        return float(os.environ.get("FTS_DB_RETRY_S", "60"))
    except ValueError:
        return 60.0


def is_transient_db_error(exc: BaseException) -> bool:
    """Locks and dropped connections pass; a full disk or a broken schema does not."""
    if not isinstance(exc, (OperationalError, DBAPIError)):
        return False
    text = str(exc).lower()
    if "disk is full" in text or "disk i/o error" in text or "no space" in text:
        return False
    if getattr(exc, "connection_invalidated", False):
        return True
    return any(w in text for w in ("database is locked", "database table is locked", "could not serialize",
                                   "deadlock detected", "server closed the connection", "connection refused",
                                   "terminating connection", "connection reset", "could not connect",
                                   "the database system is starting up", "the database system is shutting down"))


def retrying(fn: Callable[[], T], window_s: float | None = None) -> T:
    deadline = time.monotonic() + (_retry_window_s() if window_s is None else window_s)
    delay = 0.05
    while True:
        try:
            return fn()
        except (OperationalError, DBAPIError) as exc:
            if not is_transient_db_error(exc) or time.monotonic() > deadline:
                raise
            time.sleep(delay * (1 + random.random()))  # noqa: S311 - retry jitter
            delay = min(delay * 2, 2.0)
