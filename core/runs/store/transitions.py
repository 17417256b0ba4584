"""The run lifecycle as one table, and the one compare-and-set that moves a job along it.

Every status change is ``UPDATE … WHERE id = ? AND status = ?``, so two writers racing — a worker finishing while a
reader marks it dead — never clobber each other: the loser sees the new status and does nothing.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import update

from core.config import db_session
from core.runs.errors import JobError, TransitionError
from core.runs.store.retry import retrying
from storage import Run, RunStatus

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
