"""Submitting a run checks its references before anything is queued."""
import pytest
from sqlmodel import select

from core import jobs
from core.config import db_session
from core.data import import_dataset
from core.train.config import TrainConfig
from storage import Run


def test_preference_dataset_is_refused_for_sft(workspace, fixtures_dir, default_model_dir):
    result = import_dataset(str(fixtures_dir / "dpo_en_demo.json"), model=None)
    assert result.kind == "preference"
    with pytest.raises(jobs.JobError, match="preference pairs"):
        jobs.submit(TrainConfig(dataset=str(result.dataset_id)))
    with db_session() as s:
        assert s.exec(select(Run)).all() == []


def test_imported_dataset_id_is_accepted_without_starting(workspace, fixtures_dir, default_model_dir):
    result = import_dataset(str(fixtures_dir / "alpaca_en_demo.json"), model=None)
    run = jobs.submit(TrainConfig(dataset=str(result.dataset_id)), start=False)
    assert run.status == "queued" and run.dataset_ref == str(result.dataset_id)
    assert (workspace / "runs" / str(run.id) / "config.yaml").is_file()


def test_liveness_check_matches_the_exact_run_id(workspace):
    """A worker found by pid (spawned by another process) must be this run's worker, not run 12 for run 1."""
    import subprocess
    import sys
    import time

    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", "core.train.worker", "--run-id", "12"])
    try:
        time.sleep(0.3)
        assert jobs._process_alive(proc.pid, 12)
        assert not jobs._process_alive(proc.pid, 1)
    finally:
        proc.kill()
        proc.wait()
    assert not jobs._process_alive(proc.pid, 12)
