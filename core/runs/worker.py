"""The worker process of every kind of job: ``python -m core.runs.worker --job-id N`` (started by its supervisor).

It loads the job, calls the kind's entry point with a :class:`JobContext`, and records how the job ended through the
store. The kind's code only does its work: it reports progress and metrics through the context, checks
``ctx.should_stop()`` between steps, and returns a :class:`JobResult` (or raises). SIGTERM sets the stop flag; a job
that stops because of it ends ``stopped`` when a person asked (the row says ``stopping``) and ``interrupted``
otherwise (a host shutdown), and can be resumed either way.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.runs import paths, store
from core.runs.errors import describe_exception, is_disk_full
from core.runs.kinds import get_kind, load_entry, oom_advice
from storage import Run, RunStatus

PEER_GRACE_S = 2.0


class StopRequested(Exception):
    """Raised by a kind that noticed ``ctx.should_stop()`` before it had anything worth saving."""


@dataclass
class JobResult:
    status: RunStatus = RunStatus.succeeded  # succeeded, or stopped/interrupted when it ended on a stop
    final_metrics: dict[str, Any] = field(default_factory=dict)
    fields: dict[str, Any] = field(default_factory=dict)  # e.g. adapter_path
    summary: str = ""


def log(msg: str) -> None:
    """One timestamped line in the job's log. Never raises: a full disk must not turn a message into a crash."""
    try:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)
    except (OSError, ValueError):
        pass


class JobContext:
    """What a kind's entry point gets: its job, its folder, a stop flag, and the store calls it may make."""

    def __init__(self, job: Run, stop_event: threading.Event | None = None):
        self.job = job
        self.job_id = int(job.id)
        self.config: dict = dict(job.config or {})
        self.dir: Path = paths.job_dir(self.job_id)
        self.stop_event = stop_event or threading.Event()
        self.is_main = int(os.environ.get("RANK", "0")) == 0  # multi-process (accelerate): rank 0 writes

    def should_stop(self) -> bool:
        return self.stop_event.is_set()

    def stop_status(self) -> RunStatus:
        """How a job that stopped on SIGTERM ends: stopped if a person asked for it, interrupted otherwise."""
        try:
            current = store.get(self.job_id, fold=False).status
        except Exception:  # noqa: BLE001 - a database we cannot read: the safe word is interrupted
            return RunStatus.interrupted
        return RunStatus.stopped if current == RunStatus.stopping else RunStatus.interrupted

    def progress(self, **fields: Any) -> None:
        if self.is_main:
            store.report_progress(self.job_id, **fields)

    def metric(self, **fields: Any) -> None:
        if self.is_main:
            store.add_metric(self.job_id, **fields)

    def log(self, msg: str) -> None:
        log(msg)


def run_job(job_id: int) -> int:
    stop_event = threading.Event()

    def on_term(signum, frame):
        # a stop reaches the worker twice (the group's signal and the supervisor's own): one line in the log
        if not stop_event.is_set():
            log("SIGTERM received: will checkpoint and stop after the current step")
        stop_event.set()

    signal.signal(signal.SIGTERM, on_term)
    try:
        job = store.get(job_id, fold=False)
    except Exception as exc:  # noqa: BLE001
        log(f"run {job_id} cannot be read from the database: {exc}")
        return 2
    ctx = JobContext(job, stop_event)
    kind = get_kind(job.kind)
    if job.status == RunStatus.stopping:
        stop_event.set()
    log(f"{job.kind} job {job_id} '{job.name}' starting (pid {os.getpid()}, attempt {job.attempt})")
    status, error = RunStatus.failed, None
    result = JobResult()
    try:
        if stop_event.is_set():
            raise StopRequested()
        entry = load_entry(kind)
        result = entry(ctx) or JobResult()
        status = result.status
        if status in (RunStatus.stopped, RunStatus.interrupted):
            status = ctx.stop_status()
        log(f"run {job_id} {status}" + (f": {result.summary}" if result.summary else ""))
    except StopRequested:
        status = ctx.stop_status()
        log(f"{status} before any work was saved")
    except BaseException as exc:  # noqa: BLE001 - every way out is recorded
        advice = oom_advice(kind, ctx.config, None)
        disk_free = paths.free_bytes(ctx.dir) if is_disk_full(exc) else None
        status, error = RunStatus.failed, describe_exception(exc, oom_advice=advice, disk_free=disk_free)
        try:
            traceback.print_exc()
        except (OSError, ValueError):
            pass
        log(f"run {job_id} failed: {error}")
        if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
            # one of several ranks: when another rank died first this one failed in a collective for that reason;
            # core.runs.ranks notices the dead rank within its poll and ends this one, and the run records that
            # rank's death (with its log tail) instead of this consequence
            time.sleep(PEER_GRACE_S)
    if ctx.is_main:
        ckpt = paths.latest_checkpoint(ctx.dir)
        fields = dict(result.fields)
        fields["final_metrics"] = result.final_metrics
        fields["eta_s"] = 0.0 if status == RunStatus.succeeded else None
        fields["resume_from_checkpoint"] = str(ckpt) if ckpt and status != RunStatus.succeeded else None
        if not store.finish(job_id, status, error=error, attempt=job.attempt, **fields):
            log("the database could not record the ending; it was written to outcome.json and is folded in on "
                "the next read")
    return 0 if status in (RunStatus.succeeded, RunStatus.stopped, RunStatus.interrupted) else 1


def quiet_library_noise() -> None:
    """A job's log is for its news: library deprecation chatter, weight-loading progress bars and bitsandbytes'
    notice that its optional CPU kernels package is absent (printed for every run, QLoRA or not) stay out of it."""
    import logging
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:
        pass


def main(argv: list[str] | None = None) -> int:
    from core.secrets import install_redaction

    install_redaction()  # the worker log never holds a token, whatever a library prints
    quiet_library_noise()
    parser = argparse.ArgumentParser(prog="python -m core.runs.worker")
    parser.add_argument("--job-id", type=int, required=True)
    args = parser.parse_args(argv)
    return run_job(args.job_id)


if __name__ == "__main__":
    # run the imported module, not this __main__ copy: a kind raises core.runs.worker.StopRequested, and run_job
    # must catch that class (as __main__ it would be a different one, and a stop while loading became "failed")
    from core.runs.worker import main as _main

    sys.exit(_main())
