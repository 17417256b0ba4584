"""The life of every job (train, evaluate, export, serve …): one owner.

    paths      where a job's files live; which checkpoints are complete
    store      the only writer of a job's status (transitions as one table), progress, metrics, outcome file
    kinds      what a kind of job runs (a worker entry point + how to launch it)
    backends   where it runs (a local subprocess; the interface a cluster backend implements)
    scheduler  queue, limit, claim, start, stop, resume, reconcile; reads that reconcile
    supervise  the process a backend starts: runs the worker, samples its memory, records how it died
    worker     the worker process: calls the kind's entry point with a JobContext, records the ending

Workers report through the store and never import the scheduler.
"""
from core.runs.errors import DiskFullError, JobError, TransitionError
from core.runs.paths import latest_checkpoint
from core.runs.scheduler import (
    Monitor,
    delete,
    dispatch,
    duration_s,
    get_run,
    list_runs,
    log_tail,
    reconcile,
    resume,
    run_metrics,
    run_to_dict,
    start_monitor,
    stop,
    submit,
    wait_for,
)
from storage import RunStatus

__all__ = [
    "DiskFullError", "JobError", "Monitor", "RunStatus", "TransitionError", "delete", "dispatch", "duration_s",
    "get_run", "latest_checkpoint", "list_runs", "log_tail", "reconcile", "resume", "run_metrics", "run_to_dict",
    "start_monitor", "stop", "submit", "wait_for",
]
