"""What a running job reports that never touches its status: progress fields (step, ETA, throughput, artifacts …),
heartbeats and metric rows (its curves).
"""
from __future__ import annotations

from typing import Any

from sqlalchemy import delete, update

from core.config import db_session
from core.runs.store.retry import retrying
from storage import Run, RunMetric
from storage.tables import utcnow

PROGRESS_FIELDS = frozenset({"step", "max_steps", "epoch", "tokens_per_s", "eta_s", "last_loss", "adapter_path",
                             "output_dir", "final_metrics", "heartbeat_at", "peak_memory_bytes",
                             "memory_limit_bytes", "worker_pid", "worker_host", "resume_from_checkpoint"})
METRIC_FIELDS = ("step", "epoch", "loss", "eval_loss", "lr", "grad_norm", "tokens_per_s", "memory_bytes",
                 "wall_time_s", "extra")


def _update(job_id: int, **fields: Any) -> None:
    bad = set(fields) - PROGRESS_FIELDS - {"pid", "worker_host", "backend", "external_id", "started_at"}
    if bad:
        raise ValueError(f"not a progress field: {sorted(bad)}")

    def _once() -> None:
        with db_session() as s:
            s.exec(update(Run).where(Run.id == job_id).values(**fields))

    retrying(_once)


def report_progress(job_id: int, **fields: Any) -> None:
    """Step, ETA, throughput, artifacts … (never the status)."""
    bad = set(fields) - PROGRESS_FIELDS
    if bad:
        raise ValueError(f"not a progress field: {sorted(bad)}")
    _update(job_id, **fields)


def heartbeat(job_id: int, **fields: Any) -> None:
    report_progress(job_id, heartbeat_at=utcnow(), **fields)


def add_metric(job_id: int, **fields: Any) -> RunMetric:
    """One row of the job's curves (and the run's latest loss)."""
    unknown = set(fields) - set(METRIC_FIELDS)
    if unknown:
        raise ValueError(f"not a metric field: {sorted(unknown)}")

    def _once() -> RunMetric:
        with db_session() as s:
            m = RunMetric(run_id=job_id, **fields)
            s.add(m)
            if fields.get("loss") is not None:
                s.exec(update(Run).where(Run.id == job_id).values(last_loss=fields["loss"]))
            return m

    return retrying(_once)


def drop_metrics_after(job_id: int, step: int) -> None:
    """On resume the steps after the checkpoint run again: their old rows go, so the curve has one row per step."""
    def _once() -> None:
        with db_session() as s:
            s.exec(delete(RunMetric).where(RunMetric.run_id == job_id, RunMetric.step > step))

    retrying(_once)
