"""A job's ``outcome.json``: where :func:`core.runs.store.finish` records how a job ended when the database cannot
take the write (a full disk, say). The file is reserved at submit, so rewriting it in place needs no new disk blocks;
every read folds the record back into the database (core.runs.store.reads).
"""
from __future__ import annotations

import json
import os

from core.runs import paths

OUTCOME_RESERVED_BYTES = 16 * 1024


def reserve_outcome(job_id: int) -> None:
    """Allocate ``outcome.json`` now, while there is room, so the ending can be written into it in place later."""
    p = paths.outcome_path(job_id)
    p.parent.mkdir(parents=True, exist_ok=True)
    with open(p, "wb") as f:
        f.write(b" " * OUTCOME_RESERVED_BYTES)
        f.flush()
        os.fsync(f.fileno())


def write_outcome(job_id: int, record: dict) -> bool:
    """Write the record into the reserved file without growing it. True when it is on disk."""
    p = paths.outcome_path(job_id)
    data = json.dumps(record, default=str).encode()
    if len(data) >= OUTCOME_RESERVED_BYTES:  # keep it inside the reservation: shorten the error text
        record = {**record, "error": str(record.get("error") or "")[: OUTCOME_RESERVED_BYTES // 2]}
        data = json.dumps(record, default=str).encode()[: OUTCOME_RESERVED_BYTES - 1]
    try:
        size = p.stat().st_size if p.exists() else 0
        fd = os.open(p, os.O_RDWR | os.O_CREAT)
        try:
            os.pwrite(fd, data + b" " * max(0, size - len(data)), 0)
            os.fsync(fd)
        finally:
            os.close(fd)
        return True
    except OSError:
        return False


def read_outcome(job_id: int) -> dict | None:
    p = paths.outcome_path(job_id)
    try:
        raw = p.read_bytes().strip(b" \x00\n")
    except OSError:
        return None
    if not raw:
        return None
    try:
        rec = json.loads(raw)
    except ValueError:
        return None
    return rec if isinstance(rec, dict) else None


def clear_outcome(job_id: int) -> None:
    p = paths.outcome_path(job_id)
    if p.exists():
        write_outcome_blank = b" " * p.stat().st_size
        try:
            fd = os.open(p, os.O_RDWR)
            try:
                os.pwrite(fd, write_outcome_blank, 0)
            finally:
                os.close(fd)
        except OSError:
            pass
    else:
        try:
            reserve_outcome(job_id)
        except OSError:
            pass
