"""One database for a team (issue 12): PostgreSQL 15, for real — a throwaway cluster started by the ``pg_cluster``
fixture (``initdb`` + ``pg_ctl`` on a free loopback port), a database per test.

The runs core's own tests run on both databases too (``db_workspace`` in tests/test_runs_core.py). Here: the schema
and its additive upgrades, two dashboards on one database submitting at the same moment, a database restart in the
middle of a run, and a real training run end to end.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from sqlalchemy import inspect, text

from core import runs
from core.config import REPO_ROOT
from storage import RunStatus, reset_engines
from tests.conftest import wait_until

pytestmark = pytest.mark.slow


@pytest.fixture
def pg_ws(pg_cluster, tmp_path, monkeypatch):
    from tests.conftest import SHARED_MODELS

    ws = tmp_path / "ws"
    ws.mkdir()
    url = pg_cluster.new_database()
    monkeypatch.setenv("FTS_WORKSPACE", str(ws))
    monkeypatch.setenv("FTS_MODELS_DIR", str(SHARED_MODELS))
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("FTS_JOB_KINDS", "tests.job_kinds")
    reset_engines()
    yield ws, url
    reset_engines()



def test_the_schema_is_created_and_upgraded_in_place(pg_ws):
    from storage.db import get_engine

    _ws, url = pg_ws
    engine = get_engine(url)
    assert {"runs", "run_metrics", "datasets", "evaluations", "deployments", "votes"} <= set(
        inspect(engine).get_table_names())
    job = runs.submit("count", {"steps": 1}, start=False, name="old", owner="alice")
    # an older studio's table: no owner (text), no stop_requested (boolean), no config (JSON)
    with engine.begin() as conn:
        for col in ("owner", "stop_requested", "config"):
            conn.execute(text(f'ALTER TABLE runs DROP COLUMN "{col}"'))
    reset_engines()
    engine = get_engine(url)  # the additive upgrade runs on first use
    cols = {c["name"] for c in inspect(engine).get_columns("runs")}
    assert {"owner", "stop_requested", "config"} <= cols
    old = runs.get_run(job.id)
    assert old.name == "old" and old.owner == "" and old.stop_requested is False and old.config == {}


_DASHBOARD = r"""
import json, sys, time
from core import runs
n, barrier, tag = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
mon = runs.start_monitor(interval_s=0.3)          # the dashboard's reconcile + dispatch loop
while time.time() < barrier:
    time.sleep(0.005)
ids = [runs.submit("count", {"steps": 3, "sleep_s": 0.15}, name=f"{tag}-{i}").id for i in range(n)]
print(json.dumps(ids), flush=True)
deadline = time.time() + 240
while time.time() < deadline and not all(runs.get_run(i).status.is_finished for i in ids):
    time.sleep(0.2)
mon.shutdown()
"""


def test_two_dashboards_on_one_database_start_every_run_once_within_the_limit(pg_ws):
    """Two dashboard processes submit 6 runs each at the same moment, limit 2 across both: every run starts exactly
    once, never more than 2 are active, the oldest queued starts first, no metric row is lost — and after one
    dashboard is killed, the other drains the queue and reconciles."""
    from core.config import db_session
    from storage import Run

    env = {**os.environ, "FTS_MAX_CONCURRENT_RUNS": "2"}
    barrier = time.time() + 6
    dashboards = [subprocess.Popen([sys.executable, "-c", _DASHBOARD, "6", str(barrier), tag], cwd=REPO_ROOT, env=env,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for tag in ("a", "b")]
    most_active, killed = 0, False
    deadline = time.time() + 300
    while time.time() < deadline:
        with db_session() as s:
            rows = s.query(Run).all()
        active = sum(1 for r in rows if r.status.is_active)
        most_active = max(most_active, active)
        if not killed and sum(1 for r in rows if r.status == RunStatus.succeeded) >= 3:
            dashboards[0].send_signal(signal.SIGKILL)  # dashboard a dies with runs queued and running
            killed = True
        if len(rows) == 12 and all(r.status.is_finished for r in rows):
            break
        time.sleep(0.05)
    out_b, err_b = dashboards[1].communicate(timeout=120)
    dashboards[0].wait(timeout=30)
    assert dashboards[1].returncode == 0, err_b
    assert killed
    final = sorted(runs.list_runs(kind="count"), key=lambda r: r.id)
    assert len(final) == 12
    assert all(r.status == RunStatus.succeeded for r in final), [(r.id, r.status, r.error) for r in final]
    assert all(r.attempt == 1 for r in final)  # each started exactly once
    assert most_active <= 2, most_active  # the limit held across both dashboards
    started = [r.started_at.timestamp() for r in final]  # oldest queued first (two claims may finish a few ms apart)
    assert all(later >= earlier - 0.5 for earlier, later in zip(started, started[1:])), started
    for r in final:
        assert [m.step for m in runs.run_metrics(r.id)] == [1, 2, 3], r.id  # no metric row lost
    print(f"\n12 runs from 2 dashboards, at most {most_active} active at once, dashboard a killed midway; "
          f"b's runs: {json.loads(out_b.splitlines()[0])}")


def test_a_run_survives_a_database_restart(pg_ws, pg_cluster):
    """PostgreSQL restarts while a job reports a step every 0.2 s: its writes retry, the run finishes, every step's
    metric row is there."""
    job = runs.submit("count", {"steps": 25, "sleep_s": 0.2}, name="through-a-restart")
    wait_until(lambda: runs.get_run(job.id).step >= 3, 60)
    t0 = time.time()
    pg_cluster.ctl("restart", "-m", "fast")
    print(f"\npostgres restarted in {time.time() - t0:.1f} s")
    reset_engines()  # this process's pooled connections died with the server
    done = runs.wait_for(job.id, timeout_s=180, poll_s=0.2)
    assert done.status == RunStatus.succeeded, (done.error, runs.log_tail(job.id))
    assert [m.step for m in runs.run_metrics(job.id)] == list(range(1, 26))


def test_a_training_run_end_to_end_on_postgres(pg_ws, fixtures_dir):
    from core.train.config import TrainConfig
    from core.train.jobs import submit_training

    run = submit_training(TrainConfig(dataset=str(fixtures_dir / "alpaca_en_demo.json"), max_steps=3, batch_size=2,
                                      max_length=96, lora_r=4, lora_alpha=8, save_steps=2, logging_steps=1))
    done = runs.wait_for(run.id, timeout_s=300)
    assert done.status == RunStatus.succeeded, runs.log_tail(run.id)
    assert [m.step for m in runs.run_metrics(run.id) if m.loss is not None] == [1, 2, 3]
    assert done.adapter_path and done.final_metrics.get("global_step") == 3
