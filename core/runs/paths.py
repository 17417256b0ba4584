"""Where a job's files live, and which of its checkpoints are complete.

Both the scheduler side and the workers import this module; it imports neither. Layout of ``workspace/runs/<id>/``::

    config.yaml          the job's config as submitted
    worker.log           supervisor + worker output (stdout and stderr), one "===== attempt N" header per start
    outcome.json         a small file reserved at submit: the job's ending when the database could not take it
    ranks.json           a multi-process run's ranks at their end (which failed and how, peaks, nodes)
    checkpoints/         checkpoint-<step>/ folders, each complete (written under .staging/, renamed when whole)
    checkpoints/.staging/ a checkpoint being written (a leftover here is a save that never finished)
    adapter/ | model/    the trained result (also written under a temporary name and renamed)

A checkpoint is *complete* when it carries the marker file written last (``.fts-complete``), or — for checkpoints
written before markers existed — when it has its trainer state, weights and optimizer state.
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from core.config import get_settings
from core.runs.errors import DiskFullError, disk_full_message, is_disk_full

COMPLETE_MARKER = ".fts-complete"
STAGING = ".staging"
CHECKPOINT_PREFIX = "checkpoint-"
_WEIGHT_FILES = ("adapter_model.safetensors", "model.safetensors", "model.safetensors.index.json",
                 "adapter_model.bin", "pytorch_model.bin")


def job_dir(job_id: int) -> Path:
    return get_settings().runs_dir / str(job_id)


def log_path(job_id: int) -> Path:
    return job_dir(job_id) / "worker.log"


def ranks_path(job_id: int) -> Path:
    """A multi-process run's ranks as its launcher saw them end (core.runs.ranks): which failed and how, each one's
    peak memory and node."""
    return job_dir(job_id) / "ranks.json"


def outcome_path(job_id: int) -> Path:
    return job_dir(job_id) / "outcome.json"


def checkpoints_dir(run_dir: Path) -> Path:
    return run_dir / "checkpoints"


def staging_dir(run_dir: Path) -> Path:
    return checkpoints_dir(run_dir) / STAGING


def checkpoint_step(path: str | Path) -> int:
    try:
        return int(Path(path).name.rsplit("-", 1)[-1])
    except ValueError:
        return 0


def is_complete_checkpoint(path: Path) -> bool:
    if not path.is_dir():
        return False
    if (path / COMPLETE_MARKER).is_file():
        return True
    # written before completion markers: whole only if state, weights and optimizer are all there
    return ((path / "trainer_state.json").is_file() and (path / "optimizer.pt").is_file()
            and any((path / f).is_file() for f in _WEIGHT_FILES))


def _numbered_checkpoints(run_dir: Path) -> list[Path]:
    root = checkpoints_dir(run_dir)
    if not root.is_dir():
        return []
    return [p for p in root.glob(f"{CHECKPOINT_PREFIX}*") if p.is_dir() and p.name.rsplit("-", 1)[-1].isdigit()]


def complete_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest step first."""
    return sorted((p for p in _numbered_checkpoints(run_dir) if is_complete_checkpoint(p)), key=checkpoint_step)


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest *complete* checkpoint (a half-written folder is never picked)."""
    done = complete_checkpoints(run_dir)
    return done[-1] if done else None


def partial_checkpoints(run_dir: Path) -> list[Path]:
    """Folders a save left behind unfinished: numbered folders without the marker, and anything in .staging."""
    partial = [p for p in _numbered_checkpoints(run_dir) if not is_complete_checkpoint(p)]
    staging = staging_dir(run_dir)
    if staging.is_dir():
        partial += [p for p in staging.iterdir() if p.is_dir()]
    return partial


def remove_partial_checkpoints(run_dir: Path) -> list[Path]:
    """Delete unfinished checkpoint folders; returns what was removed."""
    removed = []
    for p in partial_checkpoints(run_dir):
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(p)
    return removed


def dir_size_bytes(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(root, f))
            except OSError:
                pass
    return total


def free_bytes(path: Path) -> int:
    """Free space on the filesystem that holds ``path`` (or its nearest existing parent)."""
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free


def attempt_header(attempt: int, where: str = "") -> str:
    """The line a backend writes to the job's log before it starts anything of an attempt (``where``: e.g. the Ray
    job it submits): the reconcile reads it back (:func:`attempt_began`)."""
    when = time.strftime("%Y-%m-%d %H:%M:%S")
    return f"\n===== attempt {attempt} at {when}{f' ({where})' if where else ''} =====\n"


def attempt_began(job_id: int, attempt: int) -> bool:
    """A backend began this attempt of the job: its header is in the job's log."""
    return f"===== attempt {attempt} at " in file_tail(log_path(job_id), max_lines=10_000, max_chars=64_000)


def log_tail(job_id: int, max_lines: int = 40, max_chars: int = 6000) -> str:
    return file_tail(log_path(job_id), max_lines, max_chars)


def file_tail(p: Path, max_lines: int = 40, max_chars: int = 6000) -> str:
    """The last lines of a log file, reading only its end (logs grow without bound)."""
    if not p.is_file():
        return ""
    with open(p, "rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - 64_000))
        text = f.read().decode("utf-8", errors="replace")
    lines = text.splitlines()[-max_lines:]
    from core.secrets import redact

    return redact("\n".join(lines)[-max_chars:]) or ""


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def publish(tmp: Path, target: Path) -> None:
    """A folder written whole under ``tmp`` becomes ``target``: marked complete, synced, renamed into place."""
    (tmp / COMPLETE_MARKER).write_text(time.strftime("%Y-%m-%dT%H:%M:%S\n"))
    fsync_dir(tmp)
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)
    fsync_dir(target.parent)


def save_atomically(target: Path, write, *, needed_bytes: int | None, what: str, tmp: Path | None = None) -> None:
    """Run ``write(tmp)`` and rename ``tmp`` to ``target`` only when it is whole (marker written last). On failure
    nothing is left behind; a full disk becomes a DiskFullError that says how much was free and needed."""
    tmp = tmp or target.with_name(f".{target.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        write(tmp)
        publish(tmp, target)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if is_disk_full(exc) and not isinstance(exc, DiskFullError):
            raise DiskFullError(disk_full_message(free_bytes(target.parent), needed_bytes, what)) from exc
        raise
