"""The Ray job backend against a real Ray head (``ray start --head`` on loopback, CPU only): the same supervisor and
worker processes as the local backend, submitted through Ray's job submission API. A short LoRA run succeeds with its
metrics, a stop checkpoints, a resume continues; a worker killed mid-run is recorded with its log tail; a supervisor
whose Ray job dies (a lost node) is marked by reconcile; a cluster that does not answer leaves the run queued."""
from __future__ import annotations

import os
import signal

import pytest

from core import runs
from core.runs import scheduler
from core.runs.backends import RayBackend, get_backend, ray_job_environment
from core.train.jobs import submit_training
from storage import RunStatus
from tests.conftest import free_port, wait_until
from tests.test_jobs import small_config

pytestmark = pytest.mark.slow


@pytest.fixture
def count_kind(monkeypatch):
    monkeypatch.setenv("FTS_JOB_KINDS", "tests.job_kinds")


def ray_status(run) -> str:
    backend = get_backend("ray")
    assert isinstance(backend, RayBackend)
    return backend.status(run)


def test_a_lora_run_on_ray_succeeds_stops_with_a_checkpoint_and_resumes(workspace, on_ray, fixtures_dir,
                                                                        default_model_dir):
    alpaca = str(fixtures_dir / "alpaca_en_demo.json")
    run = submit_training(small_config(alpaca, max_steps=8, name="on-ray"))
    assert run.backend == "ray" and run.external_id.endswith(f"-{run.id}-1") and run.pid is None
    wait_until(lambda: runs.get_run(run.id).step >= 2, 300, poll_s=0.2)
    assert ray_status(runs.get_run(run.id)) == "RUNNING"
    stopped = runs.stop(run.id, timeout_s=120)
    assert stopped.status == RunStatus.stopped, runs.log_tail(run.id)
    ckpt_step = int(stopped.resume_from_checkpoint.rsplit("-", 1)[-1])
    assert 2 <= ckpt_step < 8
    assert wait_until(lambda: ray_status(stopped) in ("STOPPED", "SUCCEEDED"), 30)

    resumed = runs.resume(run.id)
    assert resumed.external_id == run.external_id[:-1] + "2"  # a resume is a new Ray job
    final = runs.wait_for(run.id, timeout_s=300, poll_s=0.5)
    assert final.status == RunStatus.succeeded, runs.log_tail(run.id)
    assert final.step == 8 and final.worker_host  # the supervisor wrote where it ran
    steps = [m.step for m in runs.run_metrics(run.id) if m.loss is not None]
    assert steps == list(range(1, 9))  # the curve continues across the two Ray jobs, one row per step
    # the worker's output reached both the job's log file and Ray's own job log (the tee)
    log = (workspace / "runs" / str(run.id) / "worker.log").read_text()
    assert f"resuming from {stopped.resume_from_checkpoint}" in log
    assert f"training: 8 steps (starting at {ckpt_step})" in log
    ray_log = get_backend("ray").client().get_job_logs(final.external_id)
    assert f"training: 8 steps (starting at {ckpt_step})" in ray_log
    assert wait_until(lambda: ray_status(final) == "SUCCEEDED", 30)


def test_a_worker_killed_on_ray_is_failed_with_its_log_tail(workspace, on_ray, count_kind):
    job = runs.submit("count", {"steps": 400, "sleep_s": 0.05})
    running = wait_until(lambda: (r := runs.get_run(job.id)).step >= 3 and r.worker_pid and r, 60)
    os.kill(running.worker_pid, signal.SIGKILL)
    ended = wait_until(lambda: (r := runs.get_run(job.id)).status.is_finished and r, 15)
    assert ended.status == RunStatus.failed and ended.error.startswith("killed by signal 9")
    assert "--- log tail ---" in ended.error and "step 3/400" in ended.error


def test_a_lost_ray_job_is_marked_by_reconcile(workspace, on_ray, count_kind):
    """The supervisor and worker die together (as on a node that went away): Ray reports the job failed, and the
    next read marks the run failed with its log tail."""
    import psutil

    job = runs.submit("count", {"steps": 400, "sleep_s": 0.05})
    running = wait_until(lambda: (r := runs.get_run(job.id)).step >= 2 and r.worker_pid and r, 60)
    supervisor = psutil.Process(running.worker_pid).parent()
    assert "core.runs.supervise" in " ".join(supervisor.cmdline())
    os.killpg(os.getpgid(supervisor.pid), signal.SIGKILL)
    ended = wait_until(lambda: (r := runs.get_run(job.id)).status.is_finished and r, 30, poll_s=0.2)
    assert ended.status == RunStatus.failed
    assert f"Ray job {ended.external_id}" in ended.error and "died without reporting" in ended.error
    assert "step 2/400" in ended.error


def test_ray_unreachable_at_submit_keeps_the_run_queued_until_it_answers(workspace, on_ray, count_kind,
                                                                         monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    job = runs.submit("count", {"steps": 2, "sleep_s": 0.05})
    assert job.status == RunStatus.queued and job.attempt == 0
    assert "cannot reach the Ray cluster at http://127.0.0.1:" in job.error
    assert "stays queued" in job.error and "ray start --head" in job.error
    assert runs.dispatch() == []  # backing off: not asked again at once

    monkeypatch.setenv("RAY_ADDRESS", on_ray.address)  # the cluster answers again
    monkeypatch.setattr(scheduler, "_unavailable_until", 0.0)
    assert runs.dispatch() == [job.id]
    done = runs.wait_for(job.id, timeout_s=60, poll_s=0.2)
    assert done.status == RunStatus.succeeded and done.error is None and done.attempt == 1
    assert done.external_id == RayBackend.submission_id(done) and done.external_id.endswith(f"-{job.id}-1")


def test_the_ray_runtime_env_carries_settings_never_secrets(workspace, on_ray, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_abcdefghijklmnopqrstuvwxyz012345")
    monkeypatch.setenv("FTS_AUTH", "admin:secret-password")
    monkeypatch.setenv("FTS_MAX_CONCURRENT_RUNS", "3")
    env = ray_job_environment()
    assert env["FTS_WORKSPACE"] == str(workspace) and env["DATABASE_URL"].startswith("sqlite:")
    assert env["FTS_JOB_BACKEND"] == "ray" and env["RAY_ADDRESS"] == on_ray.address
    assert env["FTS_MAX_CONCURRENT_RUNS"] == "3" and int(env["RAY_JOB_STOP_WAIT_TIME_S"]) >= 60
    assert "HF_TOKEN" not in env and "FTS_AUTH" not in env
    assert not any("secret-password" in v or "hf_abcdefghij" in v for v in env.values())
