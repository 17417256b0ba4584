"""Engine, sessions and schema upgrades.

SQLite (the default) runs in WAL mode with a busy timeout so a worker writing metrics and the UI reading never see
"database is locked". ``DATABASE_URL`` may point at Postgres or any SQLAlchemy URL for a team install.
Schema upgrades are additive: a column that a newer version of a table has and the database lacks is added with
``ALTER TABLE ... ADD COLUMN``; existing rows are kept.
"""
from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import event, inspect, text
from sqlalchemy.engine import Engine
from sqlmodel import Session, SQLModel, create_engine

from storage import tables  # noqa: F401  (registers the tables on SQLModel.metadata)

_engines: dict[str, Engine] = {}
_lock = threading.Lock()
SQLITE_BUSY_TIMEOUT_MS = 30_000


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    import sqlite3
    import time

    cur = dbapi_conn.cursor()
    cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    # WAL is a property of the database file: set it once. Switching needs an exclusive lock and can answer
    # "database is locked" at once (no busy wait) when several processes open a new database together — retry.
    for attempt in range(100):
        try:
            if cur.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                cur.execute("PRAGMA journal_mode=WAL")
            break
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == 99:
                raise
            time.sleep(0.05)
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def get_engine(url: str) -> Engine:
    """One engine per URL per process; tables are created/upgraded on first use."""
    with _lock:
        engine = _engines.get(url)
        if engine is not None:
            return engine
        if url.startswith("sqlite"):
            db_path = url.split("///", 1)[-1]
            if db_path and db_path != ":memory:":
                Path(db_path).parent.mkdir(parents=True, exist_ok=True)
            engine = create_engine(url, connect_args={"check_same_thread": False,
                                                      "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
            event.listen(engine, "connect", _sqlite_pragmas)
        else:
            engine = create_engine(url, pool_pre_ping=True)
        init_db(engine)
        _engines[url] = engine
        return engine


def reset_engines() -> None:
    """Forget cached engines (tests that switch DATABASE_URL between cases)."""
    with _lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()


def init_db(engine: Engine) -> None:
    """Create missing tables, then add missing columns. Several processes may do this at once on a database that a
    newer version meets for the first time (workers starting together): a table another process created between our
    check and our CREATE is not an error — the next pass sees it."""
    from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

    for attempt in range(5):
        try:
            SQLModel.metadata.create_all(engine)
            upgrade_schema(engine)
            return
        except (OperationalError, ProgrammingError) as exc:
            text_ = str(exc).lower()
            if attempt == 4 or not ("already exists" in text_ or "duplicate column" in text_):
                raise
        except IntegrityError as exc:  # PostgreSQL: two CREATE TABLEs racing collide in its catalog (pg_type)
            if attempt == 4 or "pg_type" not in str(exc):
                raise


def upgrade_schema(engine: Engine) -> list[str]:
    """Add columns the models define but the database lacks. Returns the columns added ("table.column")."""
    added: list[str] = []
    insp = inspect(engine)
    for table in SQLModel.metadata.sorted_tables:
        if not insp.has_table(table.name):
            continue
        existing = {c["name"] for c in insp.get_columns(table.name)}
        for column in table.columns:
            if column.name in existing:
                continue
            col_type = column.type.compile(dialect=engine.dialect)
            default_sql = _default_sql(column)
            ddl = f'ALTER TABLE "{table.name}" ADD COLUMN "{column.name}" {col_type}{default_sql}'
            with engine.begin() as conn:
                conn.execute(text(ddl))
            added.append(f"{table.name}.{column.name}")
    return added


def _default_sql(column) -> str:
    """A constant default for NOT NULL columns so old rows stay valid."""
    default = column.default.arg if column.default is not None and not callable(column.default.arg) else None
    if default is None:
        if column.nullable:
            return ""
        from sqlalchemy import JSON, Boolean, Float, Integer, String

        if isinstance(column.type, JSON):
            return " NOT NULL DEFAULT '{}'"
        if isinstance(column.type, Boolean):  # FALSE, not 0: PostgreSQL has a real boolean (SQLite takes both)
            return " NOT NULL DEFAULT FALSE"
        if isinstance(column.type, (Integer, Float)):
            return " NOT NULL DEFAULT 0"
        if isinstance(column.type, String):
            return " NOT NULL DEFAULT ''"
        return ""
    if isinstance(default, bool):
        return f" DEFAULT {'TRUE' if default else 'FALSE'}"
    if isinstance(default, (int, float)):
        return f" DEFAULT {default}"
    if isinstance(default, str):
        return " DEFAULT '" + default.replace("'", "''") + "'"
    return ""


@contextmanager
def session_scope(url: str) -> Iterator[Session]:
    """A session that commits on success and rolls back on error. Objects stay readable after commit."""
    with Session(get_engine(url), expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
