"""The status-changing steps of a job's life: submit (queued), claim (starting) or unclaim, started (running), a stop
asked for, a resume (queued again), and how it ended (:func:`finish`, into ``outcome.json`` when the database cannot
take it). Claims hold the database's write lock, so they are serialised across every process sharing it.
"""
from __future__ import annotations

import json
from collections.abc import Iterable
from contextlib import contextmanager
from typing import Any

import yaml
from sqlalchemy import func, update
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlmodel import select

from core.config import db_session
from core.runs import paths
from core.runs.errors import TransitionError
from core.runs.store.outcome import clear_outcome, reserve_outcome, write_outcome
from core.runs.store.progress import _update
from core.runs.store.reads import get
from core.runs.store.retry import retrying
from core.runs.store.transitions import transition
from core.text import clean_label
from storage import Run, RunStatus
from storage.tables import as_utc, utcnow


@contextmanager
def _exclusive(session):
    """A transaction that holds the database's write lock from its first statement (claims are serialised across
    every process that shares the database — dashboards, CLIs, finishing workers, other hosts)."""
    conn = session.connection()
    dialect = conn.dialect.name
    if dialect == "sqlite":
        conn.exec_driver_sql("BEGIN IMMEDIATE")
    elif dialect == "postgresql":
        conn.exec_driver_sql("SELECT pg_advisory_xact_lock(727301)")
    yield session


def claim_next(limit: int, kinds: Iterable[str] | None = None) -> Run | None:
    """Claim a queued job (queued → starting) if fewer than ``limit`` jobs are active. Atomic in the DB.

    ``kinds``: one lane of the queue — only these kinds are counted against ``limit`` and claimed. Within a lane the
    queue is fair between people: the next job is the oldest queued one of the owner whose last job started longest
    ago (never: first), so one person's ten queued evaluations take turns with another's one. With a single owner
    (a one-person studio) that is plain first-in, first-out."""
    kinds = list(kinds) if kinds is not None else None

    def _once() -> int | None:
        with db_session() as s, _exclusive(s):
            active = select(func.count()).select_from(Run).where(Run.status.in_(list(RunStatus.active())))
            if kinds is not None:
                active = active.where(Run.kind.in_(kinds))
            if s.exec(active).one() >= limit:
                return None
            q = select(Run.id, Run.owner).where(Run.status == RunStatus.queued)
            if kinds is not None:
                q = q.where(Run.kind.in_(kinds))
            queued = s.exec(q.order_by(Run.id).limit(1000)).all()
            if not queued:
                return None
            owners = {o or "" for _, o in queued}
            pick = queued[0][0]
            if len(owners) > 1:
                last = dict(s.exec(select(Run.owner, func.max(Run.started_at))
                                   .where(Run.owner.in_(list(owners)), Run.started_at.is_not(None))
                                   .group_by(Run.owner)).all())
                first_of = {}
                for job_id, owner in queued:
                    first_of.setdefault(owner or "", job_id)
                never = [first_of[o] for o in owners if last.get(o) is None]
                if never:
                    pick = min(never)
                else:
                    owner = min(owners, key=lambda o: (as_utc(last[o]), first_of[o]))
                    pick = first_of[owner]
            nxt = s.get(Run, pick)
            s.exec(update(Run).where(Run.id == nxt.id, Run.status == RunStatus.queued).values(
                status=RunStatus.starting, attempt=(nxt.attempt or 0) + 1, heartbeat_at=utcnow(), pid=None,
                worker_pid=None, external_id=None, peak_memory_bytes=None))
            return nxt.id

    job_id = retrying(_once)
    if job_id is None:
        return None
    clear_outcome(job_id)
    return get(job_id, fold=False)


def unclaim(job_id: int, *, attempt: int, note: str) -> bool:
    """A claimed job its backend could not start right now: starting → queued with the claim's attempt undone (the
    retry submits under the same attempt, so a submit that got through after all is not run twice); ``note`` says
    why in its ``error`` until it starts. False when it moved meanwhile (a stop: it stays stopped)."""
    from core.secrets import redact

    def _once() -> bool:
        with db_session() as s:
            res = s.exec(update(Run).where(Run.id == job_id, Run.status == RunStatus.starting,
                                           Run.attempt == attempt)
                         .values(status=RunStatus.queued, attempt=max(0, attempt - 1), error=redact(note)))
            s.commit()
            return res.rowcount == 1

    return retrying(_once)


def submit(kind: str, config: dict, *, name: str = "", base_model: str = "", dataset_ref: str = "", method: str = "",
           parent_run_id: int | None = None, owner: str = "", dataset_hash: str = "") -> Run:
    """Store a queued job and its files' folder. Returns the row (status queued)."""
    name = clean_label(name)

    def _once() -> Run:
        with db_session() as s:
            run = Run(kind=kind, name=name, status=RunStatus.queued, config=dict(config), base_model=base_model,
                      dataset_ref=dataset_ref, method=method, parent_run_id=parent_run_id, owner=owner,
                      dataset_hash=dataset_hash)
            s.add(run)
            s.flush()
            if not run.name:
                run.name = f"run-{run.id}" if kind == "train" else f"{kind}-{run.id}"
            if "name" in run.config and not run.config.get("name"):
                run.config = {**run.config, "name": run.name}
            rd = paths.job_dir(run.id)
            run.output_dir = str(rd)
            run.log_path = str(rd / "worker.log")
            s.add(run)
            return run

    run = retrying(_once)
    rd = paths.job_dir(run.id)
    rd.mkdir(parents=True, exist_ok=True)
    (rd / "config.yaml").write_text(yaml.safe_dump(run.config, sort_keys=False), encoding="utf-8")
    reserve_outcome(run.id)
    return run


def mark_started(job_id: int, *, pid: int | None, host: str, backend: str, external_id: str | None = None) -> Run:
    """The backend started the job's processes: starting → running (a stop asked for meanwhile keeps 'stopping')."""
    now = utcnow()
    # error=None: a note left while it waited (a cluster that did not answer) is over
    fields = dict(backend=backend, external_id=external_id, heartbeat_at=now, error=None)
    if pid is not None:
        fields["pid"] = pid
    if host:  # a cluster backend learns the host from the job's supervisor, which may have written it already
        fields["worker_host"] = host
    run = get(job_id, fold=False)
    fields["started_at"] = run.started_at or now
    moved = transition(job_id, RunStatus.running, expect=[RunStatus.starting], **fields)
    if moved is None:  # stopping already: record where it runs so the stop can reach it
        _update(job_id, **fields)
        return get(job_id, fold=False)
    return moved


def request_stop(job_id: int, reason: str | None = None) -> Run:
    """A person asked to stop: queued → stopped at once; starting/running → stopping (the worker checkpoints).
    ``reason``: when the studio itself stops it (a budget), why — kept as the stopped job's note."""
    run = get(job_id)
    if run.status == RunStatus.queued:
        moved = transition(job_id, RunStatus.stopped, expect=[RunStatus.queued], finished_at=utcnow())
        if moved is not None:
            return moved
        run = get(job_id)
    if run.status == RunStatus.stopping:
        return run
    if run.status not in (RunStatus.starting, RunStatus.running):
        raise TransitionError(f"run {job_id} is {run.status}; only queued or running runs can be stopped")
    extra = {"error": reason} if reason else {}
    moved = transition(job_id, RunStatus.stopping, expect=[RunStatus.starting, RunStatus.running],
                       stop_requested=True, **extra)
    return moved or get(job_id)


def requeue(job_id: int, *, resume_from_checkpoint: str | None) -> Run:
    """Resume: failed / stopped / interrupted → queued, to continue from ``resume_from_checkpoint``."""
    run = get(job_id)
    if run.status not in RunStatus.resumable():
        raise TransitionError(f"run {job_id} is {run.status}; only stopped, failed or interrupted runs can be resumed")
    moved = transition(job_id, RunStatus.queued, expect=RunStatus.resumable(), error=None, finished_at=None,
                       stop_requested=False, pid=None, worker_pid=None, external_id=None,
                       resume_from_checkpoint=resume_from_checkpoint)
    if moved is None:
        raise TransitionError(f"run {job_id} changed while resuming; try again")
    return moved


def finish(job_id: int, status: RunStatus | str, *, error: str | None = None, attempt: int | None = None,
           **fields: Any) -> bool:
    """Record how an active job ended. True when the database took it; False when it went to ``outcome.json``
    (a reader folds it in later). A job that has already ended is left as it is."""
    status = RunStatus(status)
    if not status.is_finished:
        raise TransitionError(f"{status} is not an ending")
    from core.secrets import redact

    error = redact(error)
    values = dict(error=error, finished_at=utcnow(), stop_requested=False, **fields)
    if status == RunStatus.stopped and error is None:
        del values["error"]  # a stop's reason, written when the studio asked for it (a budget), stays
    try:
        transition(job_id, status, expect=RunStatus.active(), attempt=attempt, **values)
        return True
    except (OperationalError, DBAPIError, OSError) as exc:
        record = {"status": status.value, "error": error, "attempt": attempt,
                  "finished_at": values["finished_at"].isoformat(),
                  "fields": {k: v for k, v in fields.items() if _jsonable(v)},
                  "db_error": f"{type(exc).__name__}: {str(exc)[:300]}"}
        write_outcome(job_id, record)
        return False


def _jsonable(v: Any) -> bool:
    try:
        json.dumps(v)
        return True
    except (TypeError, ValueError):
        return False
