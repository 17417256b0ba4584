"""Storage on real SQLite: WAL + busy timeout, additive schema upgrades, concurrent writers and readers."""
import sqlite3
import subprocess
import sys
import threading
import time

from sqlalchemy import text
from sqlmodel import select

from core.config import REPO_ROOT, db_session, get_settings
from storage import Run, RunMetric, get_engine, reset_engines
from storage.db import upgrade_schema


def test_sqlite_runs_in_wal_mode_with_busy_timeout(workspace):
    engine = get_engine(get_settings().database_url)
    with engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA busy_timeout")).scalar() >= 10_000


def test_schema_upgrade_adds_missing_columns_and_keeps_rows(workspace):
    db = workspace / "studio.db"
    con = sqlite3.connect(db)  # an "old version" of the runs table, with a row in it
    con.execute("CREATE TABLE runs (id INTEGER PRIMARY KEY, name VARCHAR NOT NULL, status VARCHAR NOT NULL, "
                "config JSON NOT NULL)")
    con.execute("INSERT INTO runs (id, name, status, config) "
                """VALUES (1, 'old run', 'succeeded', '{"dataset": "x"}')""")
    con.commit()
    con.close()
    reset_engines()
    engine = get_engine(get_settings().database_url)  # upgrades on first use
    with db_session() as s:
        run = s.get(Run, 1)
        assert run.name == "old run" and run.status == "succeeded" and run.config == {"dataset": "x"}
        assert run.step == 0 and run.final_metrics == {} and run.stop_requested is False
    assert upgrade_schema(engine) == []  # idempotent


def test_worker_writes_while_ui_reads_without_locking(workspace):
    with db_session() as s:
        run = Run(name="r", status="running", config={})
        s.add(run)
    writer = f"""
import sys
from core.config import db_session
from storage import RunMetric
for i in range(300):
    with db_session() as s:
        s.add(RunMetric(run_id={run.id}, step=i, loss=1.0 / (i + 1)))
print("done")
"""
    procs = [subprocess.Popen([sys.executable, "-c", writer], cwd=REPO_ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    errors: list[Exception] = []

    def reader():
        try:
            while any(p.poll() is None for p in procs):
                with db_session() as s:
                    s.exec(select(RunMetric).where(RunMetric.run_id == run.id)).all()
                time.sleep(0.005)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    t = threading.Thread(target=reader)
    t.start()
    outs = [p.communicate(timeout=120) for p in procs]
    t.join()
    assert not errors, errors
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0 and "done" in out, err
    with db_session() as s:
        assert len(s.exec(select(RunMetric).where(RunMetric.run_id == run.id)).all()) == 600
