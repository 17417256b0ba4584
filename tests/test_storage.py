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


_FIRST_USE = """
import sys, time
from storage import get_engine
start = float(sys.argv[1])
time.sleep(max(0.0, start - time.time()))
get_engine(sys.argv[2])
"""


def test_processes_meeting_a_new_database_at_once_all_create_its_tables(workspace):
    """Workers of a newer version starting together on a database without its tables: a table another process
    created between our check and our CREATE is no error for anyone."""
    for attempt in range(3):  # three fresh databases, eight processes each, released at the same instant
        url = f"sqlite:///{workspace / f'fresh-{attempt}.db'}"
        start = time.time() + 3.0
        procs = [subprocess.Popen([sys.executable, "-c", _FIRST_USE, str(start), url], cwd=REPO_ROOT,
                                  stderr=subprocess.PIPE, text=True) for _ in range(8)]
        for p in procs:
            _, err = p.communicate(timeout=60)
            assert p.returncode == 0, err[-1500:]
        with get_engine(url).connect() as conn:
            names = {r[0] for r in conn.execute(text("SELECT name FROM sqlite_master WHERE type='table'"))}
        assert {"runs", "run_metrics", "datasets", "evaluations", "votes"} <= names
