"""Errors of the runs core, and the words for how a job died (shared by every kind of job)."""
from __future__ import annotations

import errno

MB = 1024**2
GB = 1024**3


class JobError(ValueError):
    """An action on a job that cannot be done as asked; the message says why."""


class TransitionError(JobError):
    """A status change the lifecycle does not allow (e.g. a finished run cannot become running)."""


class DiskFullError(OSError):
    """The disk filled while a job wrote its files; the message says how much was free and how much was needed."""

    def __init__(self, message: str):
        super().__init__(errno.ENOSPC, message)
        self.message = message

    def __str__(self) -> str:
        return self.message


_DISK_FULL_WORDS = ("no space left on device", "os error 28", "database or disk is full", "disk quota exceeded",
                    "enospc")
_OOM_WORDS = ("out of memory", "can't allocate memory", "cannot allocate memory")


def is_disk_full(exc: BaseException) -> bool:
    """True for the many shapes a full disk takes (OSError 28, SafetensorError, sqlite, torch's stream writer)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, DiskFullError):
            return True
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(w in str(exc).lower() for w in _DISK_FULL_WORDS):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def is_out_of_memory(exc: BaseException) -> bool:
    text = f"{type(exc).__name__}: {exc}".lower()
    return type(exc).__name__ in ("OutOfMemoryError", "MemoryError") or any(w in text for w in _OOM_WORDS)


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "?"
    if n >= GB:
        return f"{n / GB:.1f} GB"
    return f"{n / MB:.0f} MB"


def disk_full_message(free: int | None, needed: int | None, what: str = "a checkpoint of this run") -> str:
    need = f"; {what} needs ~{fmt_bytes(needed)}" if needed else ""
    return (f"disk full: {fmt_bytes(free)} free in the workspace{need}. Free space (or move the workspace), then "
            "resume the run: it continues from its last complete checkpoint.")


def describe_exception(exc: BaseException, *, oom_advice: str = "", disk_free: int | None = None,
                       disk_needed: int | None = None) -> str:
    """One message a person can act on, for an exception that ended a job."""
    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, DiskFullError):
        return exc.message
    if isinstance(exc, JobError):  # already worded for a person
        return str(exc)[:2000]
    if is_disk_full(exc):
        return disk_full_message(disk_free, disk_needed) + f" ({text[:200]})"
    if is_out_of_memory(exc):
        advice = oom_advice or "use a smaller batch or sequence length"
        return f"out of memory: the job does not fit on this device. {advice} ({text[:300]})"
    return text[:2000]
