"""The ``deployments`` rows: saved, changed (compare-and-set on the status a change was decided from), read; the
statuses a row moves through; the error every deployment step raises."""
from __future__ import annotations

from pathlib import Path

from sqlalchemy import delete, update
from sqlmodel import select

from core.config import db_session
from core.runs.errors import JobError
from storage import Deployment
from storage.tables import utcnow

ACTIVE = ("starting", "running", "stopping")
STATUSES = ("starting", "running", "stopping", "stopped", "failed", "dead", "planned")


class DeployError(JobError):
    """A deployment that cannot be made as asked; the message says why and what to do."""


def save_row(dep: Deployment) -> Deployment:
    dep.updated_at = utcnow()
    if dep.error:
        from core.secrets import redact

        dep.error = redact(dep.error)
    with db_session() as s:
        s.add(dep)
        s.flush()
        s.refresh(dep)
        return dep


def update_row(dep_id: int, *, expect: tuple[str, ...] | None = None, **fields) -> Deployment:
    """Change a row; with ``expect``, only while its status is one of those (compare-and-set: a reader that decided
    from a stale status — a tick racing a stop, two dashboards — changes nothing). Returns the row as stored."""
    fields["updated_at"] = utcnow()
    if fields.get("error"):
        from core.secrets import redact

        fields["error"] = redact(fields["error"])
    with db_session() as s:
        q = update(Deployment).where(Deployment.id == dep_id)
        if expect is not None:
            q = q.where(Deployment.status.in_(list(expect)))
        s.exec(q.values(**fields))
    return get_row(dep_id)


def get_row(dep_id: int) -> Deployment:
    with db_session() as s:
        dep = s.get(Deployment, int(dep_id))
    if dep is None:
        raise DeployError(f"deployment {dep_id} not found")
    return dep


def peek(dep_id: int) -> Deployment:
    """The row as stored, without checking its process (to see what a check then changes)."""
    return get_row(dep_id)


def to_dict(dep: Deployment) -> dict:
    return {"id": dep.id, "run_id": dep.run_id, "target": dep.target, "model": dep.model_ref,
            "model_dir": dep.model_dir, "served_name": dep.served_name, "url": dep.url, "port": dep.port,
            "status": dep.status, "pid": dep.pid, "job_id": dep.job_id, "container_id": dep.container_id,
            "error": dep.error, "args": dep.args, "created_by": dep.created_by, "log_path": dep.log_path,
            "created_at": dep.created_at.strftime("%Y-%m-%dT%H:%M:%SZ") if dep.created_at else None}


def delete_row(dep_id: int) -> int:
    """Remove a row (an ended deployment; core.deploy.deployments.delete checks that). Returns rows removed."""
    with db_session() as s:
        return s.exec(delete(Deployment).where(Deployment.id == int(dep_id))).rowcount


def forget_jobs(job_ids: list[int]) -> int:
    """The serve kind's delete hook (core.runs.kinds): the rows of deleted serve jobs go with them."""
    from core.runs.store import retrying

    def _once() -> int:
        with db_session() as s:
            return s.exec(delete(Deployment).where(Deployment.job_id.in_(list(job_ids)))).rowcount

    return retrying(_once) if job_ids else 0


def reserved_ports() -> set[int]:
    """Ports of active rows: a server still merging or loading has not bound its port yet."""
    with db_session() as s:
        rows = s.exec(select(Deployment.port).where(Deployment.status.in_(list(ACTIVE)))).all()
    return {int(p) for p in rows if p}


def log_tail(dep: Deployment, lines: int = 20) -> str:
    from core.runs.paths import file_tail

    return file_tail(Path(dep.log_path), max_lines=lines) if dep.log_path else ""


def aware(dt):
    from storage.tables import as_utc

    return as_utc(dt)
