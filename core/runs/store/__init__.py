"""The only code that changes a job's status.

Every status change is a compare-and-set along :data:`TRANSITIONS` (``UPDATE … WHERE id = ? AND status = ?``), so
two writers racing — a worker finishing while a reader marks it dead — never clobber each other: the loser sees the
new status and does nothing. Progress, metrics and heartbeats are written here too (they never touch the status).

When the database cannot take the write that records how a job ended (a full disk, say), :func:`finish` puts it
into the job's ``outcome.json`` — a file reserved at submit, so rewriting it in place needs no new disk blocks —
and every read folds that record back into the database (or, while it still cannot write, into what it returns).

Writes retry on a busy or briefly unreachable database ("database is locked", a restarting server) for up to
``FTS_DB_RETRY_S`` seconds (default 60): a lock held by another writer never reaches a user or kills a worker.

The parts, each importing only the ones above it:

    retry        retrying on a busy or briefly unreachable database
    outcome      the reserved ``outcome.json`` a job's ending goes to when the database cannot take it
    transitions  the lifecycle table and the compare-and-set that moves a job along it
    reads        jobs' rows and metric rows (folding an ending from ``outcome.json`` back in)
    progress     progress fields, heartbeats, metric rows (never the status)
    edits        a job's name and tags; deleting ended jobs' rows
    lifecycle    submit, claim / unclaim, started, stop asked for, resume, finish

Callers use this package (``from core.runs import store``; ``store.get(...)``); its names are re-exported here.
"""
from __future__ import annotations

from core.runs.store.edits import NAME_MAX, TAG_MAX, TAGS_MAX, delete_rows, normalise_tags, rename, set_tags
from core.runs.store.lifecycle import claim_next, finish, mark_started, request_stop, requeue, submit, unclaim
from core.runs.store.outcome import OUTCOME_RESERVED_BYTES, clear_outcome, read_outcome, reserve_outcome, write_outcome
from core.runs.store.progress import (
    METRIC_FIELDS,
    PROGRESS_FIELDS,
    add_metric,
    drop_metrics_after,
    heartbeat,
    report_progress,
)
from core.runs.store.reads import active_runs, children, get, job_path, list_runs, metrics
from core.runs.store.retry import is_transient_db_error, retrying
from core.runs.store.transitions import TRANSITIONS, allowed, transition
from storage.tables import utcnow

__all__ = [
    "METRIC_FIELDS", "NAME_MAX", "OUTCOME_RESERVED_BYTES", "PROGRESS_FIELDS", "TAGS_MAX", "TAG_MAX", "TRANSITIONS",
    "active_runs", "add_metric", "allowed", "children", "claim_next", "clear_outcome", "delete_rows",
    "drop_metrics_after", "finish", "get", "heartbeat", "is_transient_db_error", "job_path", "list_runs",
    "mark_started", "metrics", "normalise_tags", "read_outcome", "rename", "report_progress", "request_stop",
    "requeue", "reserve_outcome", "retrying", "set_tags", "submit", "transition", "unclaim", "utcnow",
    "write_outcome",
]
