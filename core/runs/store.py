"""The only code that changes a job's status.

Every status change is a compare-and-set along :data:`TRANSITIONS` (``UPDATE … WHERE id = ? AND status = ?``), so
two writers racing — a worker finishing while a reader marks it dead — never clobber each other: the loser sees the
new status and does nothing. Progress, metrics and heartbeats are written here too (they never touch the status).

When the database cannot take the write that records how a job ended (a full disk, say), :func:`finish` puts it
into the job's ``outcome.json`` — a file reserved at submit, so rewriting it in place needs no new disk blocks —
and every read folds that record back into the database (or, while it still cannot write, into what it returns).

Writes retry on a busy or briefly unreachable database ("database is locked", a restarting server) for up to
``FTS_DB_RETRY_S`` seconds (default 60): a lock held by another writer never reaches a user or kills a worker.
"""
from __future__ import annotations

import json
import os
import random
import re
import time
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import yaml
from sqlalchemy import delete, func, update
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlmodel import select

from core.config import db_session
from core.runs import paths
from core.runs.errors import JobError, TransitionError
from core.text import clean_label
from storage import Run, RunMetric, RunStatus
from storage.tables import as_utc, utcnow

S = RunStatus
#: The run lifecycle: status → the statuses it may move to. Nothing else moves a job.
TRANSITIONS: dict[RunStatus, frozenset[RunStatus]] = {
    S.queued: frozenset({S.starting, S.stopped}),  # claimed by the scheduler / cancelled
    S.starting: frozenset({S.running, S.stopping, S.failed, S.stopped, S.interrupted,
                           S.queued}),  # back in the queue: the backend could not take it (a cluster not answering)
    S.running: frozenset({S.stopping, S.succeeded, S.failed, S.interrupted}),
    S.stopping: frozenset({S.stopped, S.succeeded, S.failed}),
    S.succeeded: frozenset(),
    S.failed: frozenset({S.queued}),  # resume
    S.stopped: frozenset({S.queued}),
    S.interrupted: frozenset({S.queued}),
}
OUTCOME_RESERVED_BYTES = 16 * 1024
PROGRESS_FIELDS = frozenset({"step", "max_steps", "epoch", "tokens_per_s", "eta_s", "last_loss", "adapter_path",
                             "output_dir", "final_metrics", "heartbeat_at", "peak_memory_bytes",
                             "memory_limit_bytes", "worker_pid", "worker_host", "resume_from_checkpoint"})
METRIC_FIELDS = ("step", "epoch", "loss", "eval_loss", "lr", "grad_norm", "tokens_per_s", "memory_bytes",
                 "wall_time_s", "extra")
T = TypeVar("T")


# ---- retrying writes -----------------------------------------------------------------------------------------------

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


# ---- the outcome file ----------------------------------------------------------------------------------------------

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


# ---- transitions ---------------------------------------------------------------------------------------------------

def allowed(current: RunStatus | str, new: RunStatus | str) -> bool:
    return RunStatus(new) in TRANSITIONS[RunStatus(current)]


def transition(job_id: int, new: RunStatus | str, *, expect: Iterable[RunStatus] | None = None,
               attempt: int | None = None, **fields: Any) -> Run | None:
    """Move a job to ``new`` (with ``fields``) if the lifecycle allows it.

    ``expect``: only move from one of these statuses; from any other the call does nothing and returns None (a
    reader that lost a race to the worker). Without ``expect`` a move the table forbids raises TransitionError.
    ``attempt``: only while the job is still on this attempt (a finished attempt's late writer changes nothing
    once the job has been resumed); otherwise None.
    """
    new = RunStatus(new)
    expect_set = None if expect is None else {RunStatus(x) for x in expect}
    if fields.get("error"):
        from core.secrets import redact

        fields["error"] = redact(fields["error"])

    def _once() -> Run | None:
        while True:
            with db_session() as s:
                run = s.get(Run, job_id)
                if run is None:
                    raise JobError(f"run {job_id} not found")
                current = RunStatus(run.status)
                if attempt is not None and run.attempt != attempt:
                    return None
                if expect_set is not None and current not in expect_set:
                    return None
                if new not in TRANSITIONS[current]:
                    if expect_set is not None:
                        return None
                    raise TransitionError(f"run {job_id} is {current}; it cannot become {new}")
                cond = [Run.id == job_id, Run.status == current]
                if attempt is not None:
                    cond.append(Run.attempt == attempt)
                res = s.exec(update(Run).where(*cond).values(status=new, **fields))
                if res.rowcount == 1:
                    s.commit()
                    s.expire_all()
                    return s.get(Run, job_id)
            # another writer moved it between our read and write: look again

    return retrying(_once)


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


# ---- lifecycle writes ----------------------------------------------------------------------------------------------

def submit(kind: str, config: dict, *, name: str = "", base_model: str = "", dataset_ref: str = "", method: str = "",
           parent_run_id: int | None = None, owner: str = "") -> Run:
    """Store a queued job and its files' folder. Returns the row (status queued)."""
    name = clean_label(name)

    def _once() -> Run:
        with db_session() as s:
            run = Run(kind=kind, name=name, status=RunStatus.queued, config=dict(config), base_model=base_model,
                      dataset_ref=dataset_ref, method=method, parent_run_id=parent_run_id, owner=owner)
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


def _update(job_id: int, **fields: Any) -> None:
    bad = set(fields) - PROGRESS_FIELDS - {"pid", "worker_host", "backend", "external_id", "started_at"}
    if bad:
        raise ValueError(f"not a progress field: {sorted(bad)}")

    def _once() -> None:
        with db_session() as s:
            s.exec(update(Run).where(Run.id == job_id).values(**fields))

    retrying(_once)


def report_progress(job_id: int, **fields: Any) -> None:
    """Step, ETA, throughput, artifacts … (never the status)."""
    bad = set(fields) - PROGRESS_FIELDS
    if bad:
        raise ValueError(f"not a progress field: {sorted(bad)}")
    _update(job_id, **fields)


def heartbeat(job_id: int, **fields: Any) -> None:
    report_progress(job_id, heartbeat_at=utcnow(), **fields)


def add_metric(job_id: int, **fields: Any) -> RunMetric:
    """One row of the job's curves (and the run's latest loss)."""
    unknown = set(fields) - set(METRIC_FIELDS)
    if unknown:
        raise ValueError(f"not a metric field: {sorted(unknown)}")

    def _once() -> RunMetric:
        with db_session() as s:
            m = RunMetric(run_id=job_id, **fields)
            s.add(m)
            if fields.get("loss") is not None:
                s.exec(update(Run).where(Run.id == job_id).values(last_loss=fields["loss"]))
            return m

    return retrying(_once)


def drop_metrics_after(job_id: int, step: int) -> None:
    """On resume the steps after the checkpoint run again: their old rows go, so the curve has one row per step."""
    def _once() -> None:
        with db_session() as s:
            s.exec(delete(RunMetric).where(RunMetric.run_id == job_id, RunMetric.step > step))

    retrying(_once)


# ---- reads ---------------------------------------------------------------------------------------------------------

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


NAME_MAX = 80


def rename(job_id: int, name: str) -> Run:
    """A job's new name (the config's name follows, so a continued run or an export names it the same)."""
    name = clean_label(name)
    if not name:
        raise JobError("a run needs a name: type one")
    if len(name) > NAME_MAX:
        raise JobError(f"a run's name is at most {NAME_MAX} characters (this one has {len(name)})")

    def _once() -> Run:
        with db_session() as s:
            run = s.get(Run, job_id)
            if run is None:
                raise JobError(f"run {job_id} not found")
            config = dict(run.config)
            if "name" in config:
                config["name"] = name
            s.exec(update(Run).where(Run.id == job_id).values(name=name, config=config))
            s.commit()
            s.expire_all()
            return s.get(Run, job_id)

    return retrying(_once)


TAG_MAX, TAGS_MAX = 32, 10
_TAG_OK = re.compile(r"^[\w.+-]+$")


def normalise_tags(tags: Iterable[str]) -> list[str]:
    """Tags as stored: trimmed, '#' dropped, lower case, unique in the order given; letters, digits, . _ + - only."""
    out: list[str] = []
    for raw in tags:
        for t in str(raw or "").replace(",", " ").split():
            t = t.lstrip("#").lower()
            if not t:
                continue
            if len(t) > TAG_MAX or not _TAG_OK.match(t):
                raise JobError(f"tag {t[:40]!r}: at most {TAG_MAX} letters, digits, '.', '_', '+' or '-'")
            if t not in out:
                out.append(t)
    if len(out) > TAGS_MAX:
        raise JobError(f"a run has at most {TAGS_MAX} tags ({len(out)} given)")
    return out


def set_tags(job_id: int, tags: Iterable[str]) -> Run:
    """Replace a job's tags (an empty list clears them)."""
    clean = normalise_tags(tags)

    def _once() -> Run:
        with db_session() as s:
            if s.get(Run, job_id) is None:
                raise JobError(f"run {job_id} not found")
            s.exec(update(Run).where(Run.id == job_id).values(tags=clean or None))
            s.commit()
            s.expire_all()
            return s.get(Run, job_id)

    return retrying(_once)


def delete_rows(job_ids: Iterable[int]) -> int:
    """Remove ended jobs' rows and metric rows in one transaction. A job that is active (it became so meanwhile)
    stops the whole delete with JobError. Returns the number of job rows removed."""
    ids = sorted(set(job_ids))
    if not ids:
        return 0

    def _once() -> int:
        with db_session() as s:
            busy = s.exec(select(Run.id, Run.status).where(Run.id.in_(ids),
                                                          Run.status.in_(list(RunStatus.active())))).all()
            if busy:
                raise JobError("; ".join(f"run {i} is {RunStatus(st).value}" for i, st in busy)
                               + ": stop it before deleting")
            s.exec(delete(RunMetric).where(RunMetric.run_id.in_(ids)))
            return s.exec(delete(Run).where(Run.id.in_(ids))).rowcount

    return retrying(_once)


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
