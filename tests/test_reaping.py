"""Issue 31: the dashboard kept a <defunct> child for every finished job's supervisor and every stopped or failed local
server until it exited. The monitor's round collects them (core.runs reaps job processes; a local server is a serve
job, so it is one of them)."""
from __future__ import annotations

from pathlib import Path

import psutil

from tests.conftest import wait_until


def _zombie(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _our_child(pid: int) -> bool:
    return any(c.pid == pid for c in psutil.Process().children())


def test_ended_job_supervisors_and_servers_are_reaped_by_the_monitor(workspace, monkeypatch, tmp_path,
                                                                      default_model_dir):
    from core import runs
    from core.deploy import deployments as D

    monkeypatch.setenv("FTS_JOB_KINDS", "tests.job_kinds")
    # supervisors started cold, as the dashboard's children: one forked from the warm worker is the server's child,
    # reaped by it (tests/test_warm_worker.py)
    monkeypatch.setenv("FTS_WARM_WORKER", "0")
    monitor = runs.Monitor()  # as app.py builds it (not started: one round at a time here)
    job = runs.wait_for(runs.submit("count", {"steps": 1, "sleep_s": 0}).id, timeout_s=120)
    assert job.status == "succeeded"
    wait_until(lambda: _zombie(job.pid), 60)  # its supervisor has ended, and nothing has collected it yet
    monitor.tick()
    assert not _our_child(job.pid)

    # a local server that dies at start (garbage weights): its row fails, its job's supervisor is collected
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (broken / name).write_bytes((Path(default_model_dir) / name).read_bytes())
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    dep = D.start_local(str(broken), wait=False)
    wait_until(lambda: _zombie(dep.pid), 180, poll_s=0.5)
    monitor.tick()
    assert not _our_child(dep.pid)
    assert D.get(dep.id).status == "failed"  # and a read still tells what happened
