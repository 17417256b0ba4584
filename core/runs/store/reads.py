"""Reading jobs' rows and metric rows. Every read of an active job folds an ending recorded in its ``outcome.json``
back into the database (or, while it still cannot write, into what it returns).
"""
from __future__ import annotations

from datetime import datetime
from pathlib import Path

from sqlalchemy.exc import DBAPIError, OperationalError
from sqlmodel import select

from core.config import db_session
from core.runs import paths
from core.runs.errors import JobError, TransitionError
from core.runs.store.outcome import read_outcome
from core.runs.store.retry import retrying
from core.runs.store.transitions import transition
from storage import Run, RunMetric, RunStatus
from storage.tables import as_utc, utcnow


def _fold(run: Run) -> Run:
    """Apply an ending recorded in outcome.json to an active row (in the DB when it can take it)."""
    if run is None or not RunStatus(run.status).is_active:
        return run
    rec = read_outcome(run.id)
    if not rec or rec.get("status") not in {s.value for s in RunStatus.finished()}:
        return run
    if rec.get("attempt") not in (None, run.attempt):
        return run
    fields = dict(rec.get("fields") or {})
    finished_at = _parse_dt(rec.get("finished_at")) or utcnow()
    try:
        moved = transition(run.id, rec["status"], expect=RunStatus.active(), error=rec.get("error"),
                           finished_at=finished_at, stop_requested=False, **fields)
        return moved or _get_row(run.id)
    except (OperationalError, DBAPIError, TransitionError):
        run.status = RunStatus(rec["status"])  # the DB cannot write yet: report it anyway, fold it later
        run.error = rec.get("error")
        run.finished_at = finished_at
        for k, v in fields.items():
            if hasattr(run, k):
                setattr(run, k, v)
        return run


def _parse_dt(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return as_utc(datetime.fromisoformat(text))
    except ValueError:
        return None


def _get_row(job_id: int) -> Run | None:
    with db_session() as s:
        return s.get(Run, job_id)


def get(job_id: int, *, fold: bool = True) -> Run:
    run = retrying(lambda: _get_row(job_id))
    if run is None:
        raise JobError(f"run {job_id} not found")
    return _fold(run) if fold else run


def list_runs(kind: str | None = None, limit: int = 200) -> list[Run]:
    def _once() -> list[Run]:
        with db_session() as s:
            q = select(Run)
            if kind is not None:
                q = q.where(Run.kind == kind)
            return list(s.exec(q.order_by(Run.id.desc()).limit(limit)).all())

    return [_fold(r) for r in retrying(_once)]


def children(job_id: int) -> list[Run]:
    """Jobs made from this one (parent_run_id): its evaluations, exports, continued runs."""
    def _once() -> list[Run]:
        with db_session() as s:
            return list(s.exec(select(Run).where(Run.parent_run_id == job_id).order_by(Run.id)).all())

    return [_fold(r) for r in retrying(_once)]


def active_runs() -> list[Run]:
    def _once() -> list[Run]:
        with db_session() as s:
            return list(s.exec(select(Run).where(Run.status.in_(list(RunStatus.active())))).all())

    return retrying(_once)


def metrics(job_id: int, since_id: int = 0) -> list[RunMetric]:
    """Metric rows with id > ``since_id`` (a refreshing page reads only what it has not seen)."""
    def _once() -> list[RunMetric]:
        with db_session() as s:
            q = (select(RunMetric).where(RunMetric.run_id == job_id, RunMetric.id > since_id)
                 .order_by(RunMetric.step, RunMetric.id))
            return list(s.exec(q).all())

    return retrying(_once)


def job_path(job_id: int) -> Path:
    return paths.job_dir(job_id)
