"""SQLModel tables, engine/session helpers and schema upgrades. Nothing else lives here."""
from storage.db import get_engine, init_db, reset_engines, session_scope
from storage.tables import Dataset, Deployment, Evaluation, Run, RunMetric, RunStatus, Vote

__all__ = ["Dataset", "Deployment", "Evaluation", "Run", "RunMetric", "RunStatus", "Vote", "get_engine", "init_db",
           "reset_engines", "session_scope"]
