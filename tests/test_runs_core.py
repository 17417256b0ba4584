"""The runs core on its own: the lifecycle table, atomic claims across processes, a second kind of job through the
same queue / stop / reconcile (real supervisor and worker subprocesses of a trivial kind), the outcome file. The
claims and the queue run on SQLite and on PostgreSQL (``db_workspace``)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from sqlalchemy import update

from core import runs
from core.config import REPO_ROOT, db_session
from core.runs import paths, store
from core.runs.errors import TransitionError
from storage import Run, RunStatus
from tests.conftest import wait_until


@pytest.fixture
def count_kind(monkeypatch):
    """The trivial 'count' kind (tests/job_kinds.py), known to this process and to every job process."""
    monkeypatch.setenv("FTS_JOB_KINDS", "tests.job_kinds")
    from core.runs.kinds import get_kind

    return get_kind("count")


def _force_status(job_id: int, status: RunStatus) -> None:
    with db_session() as s:
        s.exec(update(Run).where(Run.id == job_id).values(status=status))


def test_every_transition_in_the_table_and_no_other(workspace):
    job = store.submit("train", {"dataset": "x"})
    checked = 0
    for current in RunStatus:
        for new in RunStatus:
            _force_status(job.id, current)
            if new in store.TRANSITIONS[current]:
                moved = store.transition(job.id, new)
                assert moved.status == new and isinstance(moved.status, RunStatus)
            else:
                with pytest.raises(TransitionError, match=f"is {current}; it cannot become {new}"):
                    store.transition(job.id, new)
                assert store.get(job.id, fold=False).status == current
            checked += 1
    assert checked == len(RunStatus) ** 2
    # the case that matters: a finished run never becomes running again
    for done in RunStatus.finished():
        assert RunStatus.running not in store.TRANSITIONS[done]


def test_a_reader_that_loses_the_race_does_nothing(workspace):
    job = store.submit("train", {"dataset": "x"})
    _force_status(job.id, RunStatus.succeeded)
    # a reconciler that thinks the job is still running must not overwrite the worker's ending
    assert store.transition(job.id, RunStatus.failed, expect=RunStatus.active()) is None
    assert store.finish(job.id, RunStatus.failed, error="too late") is True
    assert store.get(job.id).status == RunStatus.succeeded and store.get(job.id).error is None


def test_a_run_claimed_by_a_dashboard_that_ended_before_starting_it_is_queued_again(workspace, count_kind):
    """A dashboard killed between taking a run from the queue and starting it (seen in test_postgres' two
    dashboards) left the run 'starting' with nothing running: after the grace the next reconcile failed it as
    'died without reporting'. Nothing was started (no attempt header in its log), so it goes back to the queue
    under the same attempt, and the next dispatch runs it. One whose backend began (its header is there) is judged
    as before."""
    from datetime import timedelta

    from core.runs import scheduler
    from storage.tables import utcnow

    job = runs.submit("count", {"steps": 1, "sleep_s": 0}, start=False)
    began = runs.submit("count", {"steps": 1, "sleep_s": 0}, start=False)
    claimed = [store.claim_next(5), store.claim_next(5)]  # as a dispatcher does; then it "dies"
    assert [c.id for c in claimed] == [job.id, began.id] and all(c.attempt == 1 for c in claimed)
    paths.log_path(began.id).write_text(paths.attempt_header(1))  # a backend began it
    with db_session() as s:  # the claim is older than the grace
        s.exec(update(Run).values(heartbeat_at=utcnow() - timedelta(seconds=scheduler.STARTING_GRACE_S + 5)))
    assert scheduler.reconcile() == [job.id, began.id]
    queued, failed = store.get(job.id), store.get(began.id)
    assert queued.status == RunStatus.queued and queued.attempt == 0 and "queued again" in queued.error
    assert failed.status == RunStatus.failed and "died without reporting" in failed.error
    done = runs.wait_for(runs.dispatch()[0], timeout_s=60)
    assert done.id == job.id and done.status == RunStatus.succeeded and done.attempt == 1 and done.error is None


def test_status_is_the_enum_end_to_end(workspace):
    job = store.submit("train", {"dataset": "x"})
    assert store.get(job.id).status is RunStatus.queued
    assert f"{RunStatus.running}" == "running" and RunStatus.running == "running"  # prints and compares as its value
    with db_session() as s:
        raw = s.connection().exec_driver_sql("SELECT status FROM runs WHERE id = ?", (job.id,)).scalar()
    assert raw == "queued"  # stored as its plain value


_CLAIMER = """
import json, sys
from core.runs import store
got = []
while True:
    job = store.claim_next(int(sys.argv[1]))
    if job is None:
        break
    got.append(job.id)
print(json.dumps(got))
"""


@pytest.mark.parametrize("limit,expected", [(100, 12), (3, 3)])
def test_claims_are_atomic_across_processes(db_workspace, limit, expected):
    ids = [store.submit("train", {"dataset": "x"}).id for _ in range(12)]
    procs = [subprocess.Popen([sys.executable, "-c", _CLAIMER, str(limit)], cwd=REPO_ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=dict(os.environ)) for _ in range(4)]
    claimed = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        claimed += json.loads(out)
    assert len(claimed) == len(set(claimed)) == expected  # nobody claimed a job twice; the limit held
    assert sorted(claimed) == ids[:expected]  # oldest first
    assert {store.get(i).attempt for i in claimed} == {1}


@pytest.mark.slow
def test_a_second_kind_shares_queue_stop_and_reconcile(db_workspace, count_kind):
    a = runs.submit("count", {"steps": 40, "sleep_s": 0.1}, name="a")
    b = runs.submit("count", {"steps": 3, "sleep_s": 0.05}, name="b")
    assert a.status == RunStatus.running and b.status == RunStatus.queued  # one at a time (limit 1)
    wait_until(lambda: runs.get_run(a.id).step >= 2, 30)
    stopped = runs.stop(a.id, timeout_s=30)
    assert stopped.status == RunStatus.stopped and stopped.final_metrics["counted"] >= 2
    done = runs.wait_for(b.id, timeout_s=60, poll_s=0.1)  # the queue moved on after the stop
    assert done.status == RunStatus.succeeded and done.final_metrics == {"counted": 3}
    assert [m.step for m in runs.run_metrics(b.id)] == [1, 2, 3]
    assert "counted to 3" in runs.log_tail(b.id)

    c = runs.submit("count", {"steps": 400, "sleep_s": 0.05}, name="c")
    wait_until(lambda: runs.get_run(c.id).step >= 1, 30)
    os.kill(c.pid, signal.SIGKILL)  # its supervisor: the whole job dies with it
    failed = wait_until(lambda: (r := runs.get_run(c.id)).status.is_finished and r, 10)
    assert failed.status == RunStatus.failed and f"worker process {c.pid} died" in failed.error

    bad = runs.wait_for(runs.submit("count", {"fail": "row 17: 'output' is empty"}).id, timeout_s=60, poll_s=0.1)
    assert bad.status == RunStatus.failed and bad.error == "ValueError: row 17: 'output' is empty"
    with pytest.raises(runs.JobError, match="count jobs cannot be resumed"):
        runs.resume(bad.id)


def test_a_stop_while_the_job_is_still_loading_ends_stopped_not_failed(workspace, count_kind):
    """A kind raises StopRequested before its first step (the train worker does while loading the model): the worker,
    run as ``python -m core.runs.worker``, must catch that class — not a __main__ copy of it."""
    job = runs.submit("count", {"steps": 3, "sleep_s": 0.05, "start_delay_s": 3})
    wait_until(lambda: "starting (pid" in runs.log_tail(job.id), 30)  # the worker is up and "loading"
    time.sleep(0.3)
    stopped = runs.stop(job.id, timeout_s=30)
    assert stopped.status == RunStatus.stopped, (stopped.status, stopped.error, runs.log_tail(job.id))
    assert "stopped before any work was saved" in runs.log_tail(job.id)


@pytest.mark.slow
def test_killing_the_worker_is_recorded_by_its_supervisor(workspace, count_kind):
    job = runs.submit("count", {"steps": 400, "sleep_s": 0.05})
    wait_until(lambda: runs.get_run(job.id).step >= 2, 30)
    worker_pid = runs.get_run(job.id).worker_pid
    assert worker_pid and worker_pid != job.pid
    os.kill(worker_pid, signal.SIGKILL)
    # the supervisor writes the ending itself: no reader, no monitor needed
    ended = wait_until(lambda: (r := store.get(job.id)).status.is_finished and r, 10)
    assert ended.status == RunStatus.failed and ended.error.startswith("killed by signal 9")
    assert ended.peak_memory_bytes and ended.memory_limit_bytes


def test_an_ending_in_the_outcome_file_is_folded_in_on_read(workspace):
    job = store.submit("train", {"dataset": "x"})
    _force_status(job.id, RunStatus.running)
    with db_session() as s:
        s.exec(update(Run).where(Run.id == job.id).values(attempt=1))
    assert paths.outcome_path(job.id).stat().st_size == store.OUTCOME_RESERVED_BYTES  # reserved at submit
    # what a worker writes when the database cannot take its ending (a full disk)
    assert store.write_outcome(job.id, {"status": "failed", "error": "disk full: 3 MB free", "attempt": 1,
                                        "finished_at": "2026-01-02T03:04:05+00:00", "fields": {"step": 7}})
    assert paths.outcome_path(job.id).stat().st_size == store.OUTCOME_RESERVED_BYTES  # written in place
    run = store.get(job.id)
    assert run.status == RunStatus.failed and run.error == "disk full: 3 MB free" and run.step == 7
    assert store.get(job.id, fold=False).status == RunStatus.failed  # it is in the database now
    # a stale record (an earlier attempt) is not applied to a later one
    store.requeue(job.id, resume_from_checkpoint=None)
    _force_status(job.id, RunStatus.running)
    with db_session() as s:
        s.exec(update(Run).where(Run.id == job.id).values(attempt=2))
    assert store.get(job.id).status == RunStatus.running


def test_monitor_stops_and_joins(workspace):
    mon = runs.Monitor(interval_s=0.05)
    mon.start()
    time.sleep(0.2)
    mon.shutdown(timeout_s=5)  # used to raise TypeError: its event shadowed threading.Thread._stop
    assert not mon.is_alive()
    mon.join()


def test_a_tab_that_fails_to_import_fails_the_app_loudly():
    code = "import sys; sys.modules['ui.estimate'] = None; import app"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "import of ui.estimate halted" in proc.stderr  # ModuleNotFoundError
