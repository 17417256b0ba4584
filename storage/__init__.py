"""SQLModel tables, engine/session helpers and schema upgrades. Nothing else lives here."""
from storage.db import get_engine, init_db, reset_engines, session_scope
from storage.tables import Dataset, Run, RunMetric, RunStatus

__all__ = ["Dataset", "Run", "RunMetric", "RunStatus", "get_engine", "init_db", "session_scope", "reset_engines"]
