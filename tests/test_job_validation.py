"""Submitting a run checks its references before anything is queued."""
import pytest
from sqlmodel import select

from core.config import db_session
from core.data import import_dataset
from core.runs import JobError
from core.runs.backends import is_supervisor_of
from core.train.config import TrainConfig
from core.train.jobs import submit_training
from storage import Run


def test_preference_dataset_is_refused_for_sft(workspace, fixtures_dir, default_model_dir):
    result = import_dataset(str(fixtures_dir / "dpo_en_demo.json"), model=None)
    assert result.kind == "preference"
    with pytest.raises(JobError, match="preference pairs"):
        submit_training(TrainConfig(dataset=str(result.dataset_id)))
    with db_session() as s:
        assert s.exec(select(Run)).all() == []


def test_imported_dataset_id_is_accepted_without_starting(workspace, fixtures_dir, default_model_dir):
    result = import_dataset(str(fixtures_dir / "alpaca_en_demo.json"), model=None)
    run = submit_training(TrainConfig(dataset=str(result.dataset_id)), start=False)
    assert run.status == "queued" and run.dataset_ref == str(result.dataset_id)
    assert (workspace / "runs" / str(run.id) / "config.yaml").is_file()


def test_liveness_check_matches_the_exact_run_id(workspace):
    """A job's process found by pid (spawned by another process) must be this job's supervisor, not job 12's for
    job 1 (pids get reused)."""
    import subprocess
    import sys
    import time

    import psutil

    from core.runs.backends import LocalBackend

    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", "core.runs.supervise", "--job-id",
                             "12"])
    try:
        time.sleep(0.3)
        cmd = psutil.Process(proc.pid).cmdline()
        assert is_supervisor_of(cmd, 12) and not is_supervisor_of(cmd, 1)
        backend = LocalBackend()  # not the one that spawned it: judged by pid and command line
        assert backend.is_alive(Run(id=12, pid=proc.pid))
        assert not backend.is_alive(Run(id=1, pid=proc.pid))
    finally:
        proc.kill()
        proc.wait()
    assert not LocalBackend().is_alive(Run(id=12, pid=proc.pid))
