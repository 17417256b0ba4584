"""The Ray job backend against a real Ray head (``ray start --head`` on loopback, CPU only): the same supervisor and
worker processes as the local backend, submitted through Ray's job submission API. A short LoRA run succeeds with its
metrics, a stop checkpoints, a resume continues; a worker killed mid-run is recorded with its log tail; a supervisor
whose Ray job dies (a lost node) is marked by reconcile; a cluster that does not answer leaves the run queued."""
from __future__ import annotations

import os
import signal

import psutil
import pytest

from core import runs
from core.runs import scheduler
from core.runs.backends import RayBackend, get_backend, ray_job_environment
from core.train.jobs import submit_training
from storage import RunStatus
from tests.conftest import free_port, stop_with_checkpoint, wait_until
from tests.test_jobs import small_config

pytestmark = pytest.mark.slow


@pytest.fixture
def count_kind(monkeypatch):
    monkeypatch.setenv("FTS_JOB_KINDS", "tests.job_kinds")


def ray_status(run) -> str:
    backend = get_backend("ray")
    assert isinstance(backend, RayBackend)
    return backend.status(run)


STEPS = 400  # tiny-model steps take ~20 ms on an idle machine: 60 were over before a stop could land


def test_a_lora_run_on_ray_succeeds_stops_with_a_checkpoint_and_resumes(workspace, on_ray, fixtures_dir,
                                                                        tiny_model_dir):
    """The Ray job machinery (submit, stop with a checkpoint, a resume as a new Ray job, the log tee), on the tiny
    random model: what it learns is not the point, and its steps take milliseconds instead of ~0.7 s."""
    alpaca = str(fixtures_dir / "alpaca_en_demo.json")
    run = submit_training(small_config(alpaca, base_model=tiny_model_dir, max_steps=STEPS, save_steps=1000,
                                       name="on-ray"))
    assert run.backend == "ray" and run.external_id.endswith(f"-{run.id}-1") and run.pid is None
    wait_until(lambda: runs.get_run(run.id).step >= 2, 300, poll_s=0.2)
    assert ray_status(runs.get_run(run.id)) == "RUNNING"
    stopped, ckpt_step = stop_with_checkpoint(run.id)
    assert 2 <= ckpt_step < STEPS
    assert wait_until(lambda: ray_status(stopped) in ("STOPPED", "SUCCEEDED"), 30)

    resumed = runs.resume(run.id)
    assert resumed.external_id == run.external_id[:-1] + "2"  # a resume is a new Ray job
    final = runs.wait_for(run.id, timeout_s=300, poll_s=0.5)
    assert final.status == RunStatus.succeeded, runs.log_tail(run.id)
    assert final.step == STEPS and final.worker_host  # the supervisor wrote where it ran
    steps = [m.step for m in runs.run_metrics(run.id) if m.loss is not None]
    assert steps == list(range(1, STEPS + 1))  # the curve continues across the two Ray jobs, one row per step
    # the worker's output reached both the job's log file and Ray's own job log (the tee)
    log = (workspace / "runs" / str(run.id) / "worker.log").read_text()
    assert f"resuming from {stopped.resume_from_checkpoint}" in log
    assert f"training: {STEPS} steps (starting at {ckpt_step})" in log
    ray_log = get_backend("ray").client().get_job_logs(final.external_id)
    assert f"training: {STEPS} steps (starting at {ckpt_step})" in ray_log
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


@pytest.fixture
def second_node(ray_head):
    """A second Ray node on this machine (its own raylet and 1 CPU, its own temp dir) joined to the session's head:
    with the head's 2 CPUs (1 for the supervisor's job, 1 for a rank) a 2-node cluster for one rank on each."""
    import shutil
    import subprocess
    import sys
    import tempfile
    import urllib.request
    from pathlib import Path

    tmp = Path(tempfile.mkdtemp(prefix="fts-ray2-", dir="/tmp"))
    with open(tmp / "node.log", "wb") as log:
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "ray"), "start", "--block", "--address", f"127.0.0.1:{ray_head.port}",
             "--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--num-gpus", "0", "--disable-usage-stats",
             "--temp-dir", str(tmp)], env=dict(os.environ, RAY_USAGE_STATS_ENABLED="0"), stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True)

    def alive_nodes() -> int:
        import json

        with urllib.request.urlopen(ray_head.address + "/nodes?view=summary", timeout=5) as r:
            summary = json.loads(r.read())["data"]["summary"]
        return sum(1 for n in summary if (n.get("raylet") or {}).get("state") == "ALIVE")

    try:
        wait_until(lambda: proc.poll() is not None or alive_nodes() >= 2, 90, poll_s=1)
        assert proc.poll() is None, (tmp / "node.log").read_text(errors="replace")[-2000:]
        yield proc
    finally:
        try:  # `ray start --block` leaves the cluster on SIGINT; a slow leave (seen over 20 s) is cut short: the
            # head sees the node gone either way (within seconds, by the head's health checks)
            os.killpg(proc.pid, signal.SIGINT)
            proc.wait(5)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(proc.pid, signal.SIGKILL)
        wait_until(lambda: alive_nodes() == 1, 60, poll_s=1)
        shutil.rmtree(tmp, ignore_errors=True)


def _ranks_of(run_id: int, workspace) -> list:
    """This test's rank processes of run ``run_id``: its worker module with the run's id, in this workspace (the
    other test process may run a job 1 of its own workspace at the same time)."""
    found = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info["cmdline"] or []
        if "core.runs.worker" not in cmd or str(run_id) not in cmd:
            continue
        try:
            if p.environ().get("FTS_WORKSPACE") == str(workspace):
                found.append(p)
        except psutil.Error:  # ended meanwhile, or not ours to read
            continue
    return found


def test_a_two_process_run_spans_two_ray_nodes_stops_and_resumes(workspace, on_ray, second_node, tiny_model_dir,
                                                                  fixtures_dir, monkeypatch):
    """DDP over 2 processes on a simulated 2-node cluster, one rank per node (FTS_RAY_PLACEMENT=STRICT_SPREAD): the
    row names both nodes while it runs; a stop checkpoints on both ranks and a resume goes on; rank 1 killed on its
    node fails the run saying so, the other rank ends too; a resume finishes it (on any two of the nodes: the
    supervisor holds no CPU of theirs)."""
    monkeypatch.setenv("FTS_RAY_PLACEMENT", "STRICT_SPREAD")
    run = submit_training(small_config(str(fixtures_dir / "alpaca_en_demo.json"), base_model=tiny_model_dir,
                                       num_processes=2, distributed="ddp", batch_size=1, max_length=64, max_steps=STEPS,
                                       save_steps=1000, name="two-nodes"))
    assert run.backend == "ray"
    running = wait_until(lambda: (r := runs.get_run(run.id)).step >= 2 and r, 300, poll_s=0.2)
    nodes = running.worker_host.split(", ")
    assert len(nodes) == 2 and len(set(nodes)) == 2, running.worker_host  # "host (node id)" each, two nodes
    stopped, ckpt_step = stop_with_checkpoint(run.id)
    assert 2 <= ckpt_step < STEPS
    runs.resume(run.id)  # then rank 1 is killed where it runs, as a person or the system would
    wait_until(lambda: runs.get_run(run.id).step >= ckpt_step + 2, 300, poll_s=0.2)
    rank1 = next(p for p in _ranks_of(run.id, workspace) if p.environ().get("RANK") == "1")
    os.kill(rank1.pid, signal.SIGKILL)
    failed = wait_until(lambda: (r := runs.get_run(run.id)).status == RunStatus.failed and r, 60, poll_s=0.2)
    # the resumed attempt places its ranks afresh: rank 1 may now be on either node
    assert any(failed.error.startswith(f"rank 1 of 2 (on {node}) was killed by signal 9 (SIGKILL)")
               for node in nodes), failed.error
    assert "--- rank 1 log tail ---" in failed.error and failed.resume_from_checkpoint
    wait_until(lambda: not rank1.is_running() and not _ranks_of(run.id, workspace), 30)  # no rank outlives the run
    runs.resume(run.id)
    final = runs.wait_for(run.id, timeout_s=300, poll_s=0.5)
    assert final.status == RunStatus.succeeded, runs.log_tail(run.id)
    figures = wait_until(lambda: (fm := runs.get_run(run.id).final_metrics).get("nodes") and fm, 30)  # at the end
    assert set(figures["nodes"]) == set(nodes) and len(figures["peak_rss_bytes_per_rank"]) == 2
    assert sorted(m.step for m in runs.run_metrics(run.id) if m.loss is not None) == list(range(1, STEPS + 1))
    log = (workspace / "runs" / str(run.id) / "worker.log").read_text()
    assert "ranks: 2 processes started on nodes " in log and "STRICT_SPREAD" in log
    assert f"training: {STEPS} steps (starting at {ckpt_step})" in log
