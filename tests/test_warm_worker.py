"""The warm worker (core/runs/warm.py, its server core/runs/warm_server.py): workers forked from a server that
imported the heavy libraries once, with the supervisor contract unchanged — the job's own environment and log, its
exit status, stop, and death with its supervisor; only this user may ask it for anything."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from core import runs
from core.runs import warm
from core.runs.backends import job_environment
from storage import RunStatus
from tests.conftest import wait_until


@pytest.fixture
def warm_server(workspace, monkeypatch):
    """The count kind (tests/job_kinds.py) and a warm worker for this environment, ready."""
    monkeypatch.setenv("FTS_JOB_KINDS", "tests.job_kinds")
    monkeypatch.setenv("FTS_WARM_WORKER", "1")
    env = job_environment()
    warm.ensure(env)
    assert warm.wait_ready(env, 180), "the warm worker did not answer"
    return env


def _server_pid(env) -> int:
    import json
    import socket

    sock = warm._paths(env)[0]
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(str(sock))
        warm._send(s, {"op": "ping"})
        return json.loads(s.recv(4096))["pid"]


def test_a_job_forks_from_the_warm_worker_with_its_own_workspace_and_log(warm_server, workspace):
    job = runs.submit("count", {"steps": 3, "sleep_s": 0.05})
    done = runs.wait_for(job.id, timeout_s=120)
    assert done.status == RunStatus.succeeded, runs.log_tail(job.id)
    log = runs.log_tail(job.id, max_lines=200)
    assert "started from the warm worker" in log and "step 3/3" in log
    # the worker read this test's workspace (FTS_WORKSPACE is the job's, not the server's): its result is here
    assert done.final_metrics == {"counted": 3}
    # and the torch the server imported was not imported again: a second job takes well under a cold import
    started = time.monotonic()
    again = runs.wait_for(runs.submit("count", {"steps": 1, "sleep_s": 0}).id, timeout_s=120)
    assert again.status == RunStatus.succeeded
    assert "started from the warm worker" in runs.log_tail(again.id, max_lines=200)
    print(f"a one-step job from submit to its end: {time.monotonic() - started:.2f} s")


def test_a_variable_gradio_sets_in_the_dashboard_forks_from_the_same_server_and_reaches_the_worker(
        warm_server, workspace, monkeypatch):
    """Gradio sets HF_HUB_DISABLE_TELEMETRY in the dashboard when it starts; huggingface_hub reads it at import. The
    dashboard's jobs fork from the CLI's server (it used to start a server of its own), and the worker still has
    telemetry off."""
    assert warm.key({**warm_server, "HF_HUB_DISABLE_TELEMETRY": "True", "KMP_INIT_AT_FORK": "FALSE"}) == \
        warm.key(warm_server)
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "True")
    done = runs.wait_for(runs.submit("count", {"steps": 1, "sleep_s": 0, "report_hub_telemetry": True}).id,
                         timeout_s=120)
    assert "started from the warm worker" in runs.log_tail(done.id, max_lines=200)
    assert done.final_metrics["hub_telemetry_disabled"] is True
    monkeypatch.delenv("HF_HUB_DISABLE_TELEMETRY")
    done = runs.wait_for(runs.submit("count", {"steps": 1, "sleep_s": 0, "report_hub_telemetry": True}).id,
                         timeout_s=120)
    assert done.final_metrics["hub_telemetry_disabled"] is False


def test_the_worker_is_the_servers_child_and_dies_with_its_supervisor(warm_server, workspace):
    job = runs.submit("count", {"steps": 400, "sleep_s": 0.05})
    running = wait_until(lambda: (r := runs.get_run(job.id)).step >= 2 and r.worker_pid and r, 60)
    worker = psutil.Process(running.worker_pid)
    assert worker.ppid() == _server_pid(warm_server)  # forked by the server, not started by the supervisor
    os.killpg(os.getpgid(running.pid), signal.SIGKILL)  # the supervisor's group, as the backend's kill does
    wait_until(lambda: not psutil.pid_exists(worker.pid) or worker.status() == psutil.STATUS_ZOMBIE, 15)
    ended = wait_until(lambda: (r := runs.get_run(job.id)).status.is_finished and r, 30, poll_s=0.2)
    assert ended.status == RunStatus.failed and "died without reporting" in ended.error


def test_the_supervisor_forks_too_shows_its_command_and_outlives_the_process_that_queued_it(warm_server, workspace):
    """The local backend asks the server for the job's supervisor as well (it spent ~0.4 s of CPU importing
    SQLAlchemy and SQLModel for every job; bench/job_overhead.py): detached, so the process that queued the job (a
    CLI call here; a dashboard that restarts) can end while it runs. A forked process shows the command a cold one
    would, before its pid is given out: the backend's check of which pid is the job's holds at once."""
    queue = ("import json; from core import runs; "
             "print(json.dumps(runs.submit('count', {'steps': 40, 'sleep_s': 0.05}).id))")
    proc = subprocess.run([sys.executable, "-c", queue], env=dict(os.environ), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr  # it has ended: the job it queued runs on
    job_id = int(proc.stdout.strip().splitlines()[-1])
    running = wait_until(lambda: (r := runs.get_run(job_id)).step >= 2 and r.worker_pid and r, 60)
    server = _server_pid(warm_server)
    supervisor, worker = psutil.Process(running.pid), psutil.Process(running.worker_pid)
    assert supervisor.ppid() == server and worker.ppid() == server
    assert supervisor.cmdline()[:5] == [sys.executable, "-m", "core.runs.supervise", "--job-id", str(job_id)]
    assert worker.cmdline()[:5] == [sys.executable, "-m", "core.runs.worker", "--job-id", str(job_id)]
    assert os.getsid(supervisor.pid) == supervisor.pid  # its own session: the backend stops it as a group
    assert "started from the warm worker" in runs.log_tail(job_id, max_lines=200)
    done = runs.wait_for(job_id, timeout_s=120)
    assert done.status == RunStatus.succeeded and done.final_metrics == {"counted": 40}, runs.log_tail(job_id)
    # the server reaps it: gone, not left a <defunct> child of anyone's
    wait_until(lambda: not psutil.pid_exists(supervisor.pid), 15)
    # a command longer than the server's own cannot be shown over it: such a supervisor starts cold instead
    longer = [sys.executable, "-m", "core.runs.supervise", "--job-id", "1", "--tee-log" + " " * 4096]
    assert warm.spawn_supervisor(longer, warm_server, os.getcwd(), 1) is None


def test_a_stop_reaches_the_warm_worker_and_a_signal_death_is_named(warm_server, workspace):
    job = runs.submit("count", {"steps": 400, "sleep_s": 0.05})
    wait_until(lambda: runs.get_run(job.id).step >= 2, 60)
    runs.stop(job.id)
    stopped = runs.wait_for(job.id, timeout_s=60)
    assert stopped.status == RunStatus.stopped and 2 <= stopped.final_metrics["counted"] < 400

    job = runs.submit("count", {"steps": 400, "sleep_s": 0.05})
    running = wait_until(lambda: (r := runs.get_run(job.id)).step >= 2 and r.worker_pid and r, 60)
    os.kill(running.worker_pid, signal.SIGSEGV)  # a crash in native code: the server reports the signal
    ended = runs.wait_for(job.id, timeout_s=60)
    assert ended.status == RunStatus.failed and "SIGSEGV" in ended.error, ended.error


def test_a_failing_job_and_a_missing_module_end_as_they_would_cold(warm_server, workspace):
    failed = runs.wait_for(runs.submit("count", {"fail": "no such column 'x'"}).id, timeout_s=120)
    assert failed.status == RunStatus.failed and "no such column 'x'" in failed.error
    with open(os.devnull, "rb") as null:  # a module that does not exist: exit 1 with the interpreter's traceback
        child = warm.spawn([sys.executable, "-m", "core.no_such_module"], env=warm_server, cwd=os.getcwd())
        assert child is not None and null
        assert child.wait(timeout=30) == 1
    assert warm.spawn([sys.executable, "-c", "print(1)"], env=warm_server, cwd=os.getcwd()) is None  # -m core.* only


def test_only_this_user_reaches_the_warm_worker(warm_server):
    if os.getuid() != 0:
        pytest.skip("needs root to act as another user")
    sock = str(warm._paths(warm_server)[0])
    probe = ("import socket, os\nos.setgid(65534); os.setuid(65534)\n"
             "s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n"
             f"try:\n    s.connect({sock!r}); print('connected')\nexcept OSError as e:\n    print('refused', e.errno)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=30)
    assert out.stdout.startswith("refused"), out.stdout + out.stderr
    d = warm.socket_dir()
    assert d is not None and os.stat(d).st_mode & 0o777 == 0o700


def test_without_a_warm_worker_jobs_start_cold(workspace, monkeypatch):
    monkeypatch.setenv("FTS_JOB_KINDS", "tests.job_kinds")
    monkeypatch.setenv("FTS_WARM_WORKER", "0")
    done = runs.wait_for(runs.submit("count", {"steps": 2, "sleep_s": 0}).id, timeout_s=120)
    assert done.status == RunStatus.succeeded
    assert "warm worker" not in runs.log_tail(done.id, max_lines=200)


def test_the_server_keeps_no_secret_and_an_installation_gets_at_most_two_servers(warm_server, monkeypatch):
    job_env = {**warm_server, "HF_TOKEN": "hf_not_for_the_server", "AWS_SECRET_ACCESS_KEY": "nope"}
    kept = warm.server_environment(job_env)
    assert "HF_TOKEN" not in kept and "AWS_SECRET_ACCESS_KEY" not in kept and kept["PATH"] == job_env["PATH"]
    assert warm.key(job_env) == warm.key(warm_server)  # a token does not make a server of its own
    assert warm.servers() >= 1
    other = {**warm_server, "TRANSFORMERS_NO_ADVISORY_WARNINGS": "a value no other test uses",
             "FTS_WARM_MAX_SERVERS": "1"}
    assert warm.key(other) != warm.key(warm_server)
    try:  # at the cap, the least recently wanted server stops answering (its workers go on) and the new one starts
        assert warm.ensure(other) is True
        assert not warm.running(warm_server)
        assert wait_until(lambda: warm.running(other), 30) and warm.servers() == 1
    finally:
        warm.stop(other)
        warm.ensure(warm_server)
    assert warm.wait_ready(warm_server, 120)


def test_the_files_of_servers_ended_a_day_ago_are_pruned_and_a_running_ones_are_kept(warm_server):
    d = warm.socket_dir()
    old = time.time() - warm.STALE_S - 60
    stale = d / "0000dead-000000000000.lock"
    for f in (stale, stale.with_suffix(".log"), stale.with_suffix(".sock")):
        f.write_text("")
        os.utime(f, (old, old))
    running = warm._paths(warm_server)[1]
    os.utime(running, (old, old))  # long-lived, but held: kept
    warm._prune(d)
    assert not any(f.exists() for f in (stale, stale.with_suffix(".log"), stale.with_suffix(".sock")))
    assert running.exists() and warm.running(warm_server)


def test_a_job_a_supervisor_starts_has_the_same_server_as_one_the_dashboard_starts(workspace, monkeypatch):
    """A finishing supervisor starts the next queued job with its own environment (the dashboard's job environment):
    that must give the same server, not a new one per generation (PYTHONPATH grew by the checkout each time)."""
    from core.config import REPO_ROOT

    first = job_environment()
    for name in ("PYTHONPATH", "PYTHONUNBUFFERED", "TOKENIZERS_PARALLELISM"):
        monkeypatch.setenv(name, first[name])
    second = job_environment()
    assert second["PYTHONPATH"].split(os.pathsep).count(str(REPO_ROOT)) == 1
    assert warm.key(second) == warm.key(first)
    # the dashboard (app.py reads PORT) and the CLI (no PORT): one server for both, whatever port the dashboard has
    assert warm.key({**first, "PORT": "7861"}) == warm.key({**first, "PORT": "50989"}) == warm.key(first)
