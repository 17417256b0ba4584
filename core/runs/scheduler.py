"""Queue, limit, start, stop, resume and reconcile jobs of every kind.

* :func:`dispatch` claims queued jobs in the database (oldest first) while fewer than ``FTS_MAX_CONCURRENT_RUNS``
  are active and starts them through a backend. The claim is atomic in the database, so dashboards, CLIs and
  finishing jobs on any machine that shares it never start one job twice or exceed the limit.
* :func:`reconcile` notices jobs whose processes are gone: a dead supervisor → ``failed`` with its log tail (on the
  studio's start: ``interrupted``); a job on another host with a stale heartbeat → ``interrupted``.
* Every read here (:func:`get_run`, :func:`list_runs`) reconciles what it reports first, so a dead worker is seen
  by the next ``runs show`` with no dashboard open, and the queue moves on.
"""
from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from core.config import get_settings
from core.runs import paths, store
from core.runs.backends import BackendUnavailable, get_backend, reap_children
from core.runs.errors import JobError
from core.runs.kinds import get_kind, run_on_delete
from storage import Run, RunMetric, RunStatus
from storage.tables import as_utc, utcnow

STALE_HEARTBEAT_S = 120.0
STARTING_GRACE_S = 60.0


def _ending_fields(job_id: int) -> dict[str, Any]:
    ckpt = paths.latest_checkpoint(paths.job_dir(job_id))
    return {"resume_from_checkpoint": str(ckpt) if ckpt else None}


def submit(kind: str, config: dict, *, start: bool = True, **row: Any) -> Run:
    """Queue a job of ``kind`` (the kind's own checks happen before this) and start it when there is room."""
    get_kind(kind)  # unknown kinds are refused before anything is stored
    run = store.submit(kind, config, **row)
    if start:
        dispatch()
    return store.get(run.id)


#: after a backend did not answer, dispatch waits this long before it asks again (the monitor runs every second)
UNAVAILABLE_RETRY_S = 10.0
_unavailable_until = 0.0


def dispatch() -> list[int]:
    """Start queued jobs while there is capacity. Returns the ids started.

    A backend that cannot take jobs (a Ray cluster that does not answer) leaves the job queued, with the reason in
    its ``error``, and is asked again after ``UNAVAILABLE_RETRY_S``: nothing is lost, it starts when the cluster
    answers."""
    global _unavailable_until
    if time.monotonic() < _unavailable_until or not _has_queued():
        return []
    started: list[int] = []
    for limit, kinds, backend_name in _lanes():
        _dispatch_lane(limit, kinds, started, backend_name)
        if time.monotonic() < _unavailable_until:
            break
    return started


def _lanes() -> list[tuple[int, list[str], str | None]]:
    """(limit, kinds, backend) per lane of the queue: the device's (FTS_MAX_CONCURRENT_RUNS, the configured backend),
    imports' (FTS_MAX_CONCURRENT_IMPORTS, default 2; on this machine, where the uploaded file is), local servers'
    (FTS_MAX_SERVERS, default 4; on this machine, whose loopback port the deployment's URL names) and sweep drivers'
    (FTS_MAX_SWEEPS, default 4; on this machine: a driver only submits and watches its trials, which take the
    device lane like any run)."""
    from core.config import positive_int_env
    from core.runs.kinds import kinds_in_lane

    return [(get_settings().max_concurrent_runs, kinds_in_lane("device"), None),
            (positive_int_env("FTS_MAX_CONCURRENT_IMPORTS", 2), kinds_in_lane("io"), "local"),
            (positive_int_env("FTS_MAX_SERVERS", 4), kinds_in_lane("serve"), "local"),
            (positive_int_env("FTS_MAX_SWEEPS", 4), kinds_in_lane("control"), "local")]


def _dispatch_lane(limit: int, kinds: list[str], started: list[int], backend_name: str | None) -> None:
    global _unavailable_until
    if not kinds:
        return
    while True:
        job = store.claim_next(limit, kinds)
        if job is None:
            break
        backend = get_backend(backend_name)
        try:
            handle = backend.start(job)
        except BackendUnavailable as exc:
            store.unclaim(job.id, attempt=job.attempt,
                          note=f"waiting to start: {exc} The run stays queued; the studio tries again every "
                               f"{UNAVAILABLE_RETRY_S:.0f} s.")
            _unavailable_until = time.monotonic() + UNAVAILABLE_RETRY_S
            break
        except Exception as exc:  # noqa: BLE001 - the job fails, the dispatcher goes on
            store.finish(job.id, RunStatus.failed, error=f"could not start the worker process: {exc}",
                         attempt=job.attempt)
            continue
        store.mark_started(job.id, pid=handle.pid, host=handle.host, backend=backend.name,
                           external_id=handle.external_id)
        started.append(job.id)


def _has_queued() -> bool:
    from sqlmodel import select

    from core.config import db_session

    def _once() -> bool:
        with db_session() as s:
            return s.exec(select(Run.id).where(Run.status == RunStatus.queued).limit(1)).first() is not None

    return store.retrying(_once)


def reconcile(on_start: bool = False, ids: Iterable[int] | None = None) -> list[int]:
    """Mark jobs whose processes are gone. Returns the ids changed."""
    wanted = None if ids is None else set(ids)
    changed: list[int] = []
    now = utcnow()
    for r in store.active_runs():
        if wanted is not None and r.id not in wanted:
            continue
        backend = get_backend(r.backend)
        alive = backend.is_alive(r)
        if alive is None:  # another machine's job (shared database): judge by its heartbeat
            beat = as_utc(r.heartbeat_at or r.created_at)
            if (now - beat).total_seconds() > STALE_HEARTBEAT_S:
                if store.finish(r.id, RunStatus.interrupted, attempt=r.attempt,
                                error=f"no heartbeat from {r.worker_host} for {STALE_HEARTBEAT_S:.0f}s",
                                **_ending_fields(r.id)):
                    changed.append(r.id)
            continue
        if r.status in (RunStatus.starting, RunStatus.stopping) and not r.pid:
            age = (now - as_utc(r.heartbeat_at or r.created_at)).total_seconds()
            if age < STARTING_GRACE_S and not on_start:
                continue  # being started by a dispatcher right now
            if age >= STARTING_GRACE_S and r.status == RunStatus.starting and not r.external_id \
                    and not paths.attempt_began(r.id, r.attempt):
                # claimed by a dispatcher that ended before it started anything (a dashboard killed right then):
                # nothing ran, so nothing is lost — it goes back to the queue under the same attempt
                if store.unclaim(r.id, attempt=r.attempt, note="waiting to start: the dashboard that took it from "
                                 "the queue ended before starting it; it is queued again"):
                    changed.append(r.id)
                continue
        if alive:
            continue
        fresh = store.get(r.id)  # did it record its ending (in the DB or outcome.json) meanwhile?
        if not fresh.status.is_active:
            changed.append(r.id)
            continue
        tail = backend.logs(fresh, max_lines=25)
        if fresh.status == RunStatus.stopping:
            status, error = RunStatus.stopped, None
        elif on_start:
            status, error = RunStatus.interrupted, ("worker process was gone when the studio started (machine "
                                                    f"restart or crash){_what_next(fresh)}.\n--- log tail ---\n"
                                                    + tail)
        else:
            status, error = RunStatus.failed, (f"{backend.describe_gone(fresh)}.\n--- log tail ---\n" + tail)
        store.finish(r.id, status, error=error, attempt=fresh.attempt, **_ending_fields(r.id))
        changed.append(r.id)
        if status == RunStatus.interrupted and _resumes_on_start(fresh):
            store.requeue(r.id, resume_from_checkpoint=None)  # a sweep's driver: it reattaches to its trials
    return changed


def _resumes_on_start(job: Run) -> bool:
    try:
        return get_kind(job.kind).resume_on_start
    except KeyError:
        return False


def _what_next(job: Run) -> str:
    try:
        return "; resume it from its last checkpoint" if get_kind(job.kind).resumable else ""
    except KeyError:
        return ""


def stop(job_id: int, *, wait: bool = True, timeout_s: float | None = None, reason: str | None = None) -> Run:
    """Graceful stop: SIGTERM → the worker checkpoints and exits; the whole group is killed after the timeout.
    ``reason``: when the studio stops it (a sweep pruning a trial), why — kept as the stopped run's note."""
    run = store.request_stop(job_id, reason=reason)
    if run.status == RunStatus.stopped:
        dispatch()
        return get_run(job_id)
    backend = get_backend(run.backend)
    backend.terminate(run)
    if not wait:
        return store.get(job_id)
    timeout_s = get_settings().stop_timeout_s if timeout_s is None else timeout_s
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        run = store.get(job_id)
        if not run.status.is_active or backend.is_alive(run) is False and run.pid:
            break
        time.sleep(0.2)
    run = store.get(job_id)
    if run.status.is_active and backend.is_alive(run):
        backend.kill(run)
        for _ in range(50):
            if not backend.is_alive(store.get(job_id)):
                break
            time.sleep(0.1)
    # the supervisor records the ending; give it a moment, then record it ourselves
    for _ in range(50):
        run = store.get(job_id)
        if not run.status.is_active:
            break
        time.sleep(0.1)
    if run.status.is_active:
        store.finish(job_id, RunStatus.stopped, attempt=run.attempt, **_ending_fields(job_id))
    dispatch()
    return get_run(job_id)


def delete(job_ids: Iterable[int]) -> int:
    """Delete ended jobs: their rows, metric rows and folders (``runs/<id>/``: checkpoints, adapter, merged model,
    logs), then what their kinds keep elsewhere (a kind's ``on_delete`` hook). An active job refuses the whole call
    (JobError, nothing deleted). The folders are first renamed aside, so a failed database delete puts them back; what
    is renamed aside is removed after the rows are gone."""
    import shutil

    ids = sorted(set(job_ids))
    by_kind: dict[str, list[int]] = {}
    for job_id in ids:
        run = get_run(job_id)  # reconciles: a dead worker's job has ended
        if run.status.is_active:
            raise JobError(f"run {job_id} is {run.status.value}: stop it before deleting")
        by_kind.setdefault(run.kind, []).append(job_id)
    aside: list[tuple] = []
    try:
        for job_id in ids:
            folder = paths.job_dir(job_id)
            if folder.exists():
                trash = folder.with_name(f".deleting-{job_id}-{time.time_ns()}")
                folder.rename(trash)
                aside.append((folder, trash))
        removed = store.delete_rows(ids)
    except BaseException:
        for folder, trash in aside:
            trash.rename(folder)
        raise
    for _, trash in aside:
        shutil.rmtree(trash, ignore_errors=True)
    for kind, kind_ids in by_kind.items():  # what a kind keeps outside the runs table goes too (a deployment row)
        try:
            run_on_delete(get_kind(kind), kind_ids)
        except KeyError:  # a kind no longer registered: nothing of it to clean up
            pass
    return removed


def resume(job_id: int) -> Run:
    """Queue a failed/stopped/interrupted job again; it continues from its newest complete checkpoint."""
    run = store.get(job_id)
    kind = get_kind(run.kind)
    if not kind.resumable:
        raise JobError(f"{run.kind} jobs cannot be resumed; start a new one")
    rd = paths.job_dir(job_id)
    paths.remove_partial_checkpoints(rd)
    ckpt = paths.latest_checkpoint(rd)
    store.requeue(job_id, resume_from_checkpoint=str(ckpt) if ckpt else None)
    dispatch()
    return get_run(job_id)


# ---- reads that reconcile ------------------------------------------------------------------------------------------

SUPERVISOR_RECORD_WAIT_S = 3.0


def get_run(job_id: int) -> Run:
    run = store.get(job_id)
    if run.status.is_active and reconcile(ids=[job_id]):
        dispatch()
        run = store.get(job_id)
    if run.status.is_active:
        # its worker is gone but its supervisor lives: it is writing down why right now — wait for that word
        backend = get_backend(run.backend)
        gone = getattr(backend, "worker_gone", None)
        if gone is not None and gone(run):
            deadline = time.monotonic() + SUPERVISOR_RECORD_WAIT_S
            while run.status.is_active and time.monotonic() < deadline:
                time.sleep(0.05)
                run = store.get(job_id)
            if run.status.is_active and reconcile(ids=[job_id]):
                run = store.get(job_id)
    return run


def list_runs(kind: str | None = None, limit: int = 200) -> list[Run]:
    if reconcile():
        dispatch()
    return store.list_runs(kind, limit)


def run_metrics(job_id: int, since_id: int = 0) -> list[RunMetric]:
    return store.metrics(job_id, since_id)


def log_tail(job_id: int, max_lines: int = 40, max_chars: int = 6000) -> str:
    run = store.get(job_id)
    return get_backend(run.backend).logs(run, max_lines=max_lines, max_chars=max_chars)


def wait_for(job_id: int, *, timeout_s: float | None = None, poll_s: float = 1.0,
             on_progress: Callable[[Run], None] | None = None) -> Run:
    """Block until the job finishes, reconciling and dispatching meanwhile (``train --wait``, tests)."""
    deadline = None if timeout_s is None else time.time() + timeout_s
    last_step = -1
    while True:
        run = get_run(job_id)
        dispatch()
        if on_progress and run.step != last_step:
            last_step = run.step
            on_progress(run)
        if run.status.is_finished:
            return run
        if deadline is not None and time.time() > deadline:
            raise TimeoutError(f"run {job_id} still {run.status} after {timeout_s:.0f}s")
        time.sleep(poll_s)


class Monitor(threading.Thread):
    """The dashboard's background reconcile + dispatch loop (a dead worker is noticed within ~1-2 s); it also reaps
    the job processes this process started once they end, and runs ``also`` (callables of the layers above, e.g.
    reaping their own children) on each round."""

    def __init__(self, interval_s: float = 1.0, also: Iterable = ()):
        super().__init__(daemon=True, name="fts-monitor")
        self.interval_s = interval_s
        self.also = list(also)
        self._halt = threading.Event()  # not `_stop`: that name belongs to threading.Thread

    def run(self) -> None:
        while not self._halt.wait(self.interval_s):
            self.tick()

    def tick(self) -> None:
        try:
            reconcile()
            dispatch()
        except Exception as exc:  # noqa: BLE001 - the dashboard never dies because a job did
            print(f"[monitor] {type(exc).__name__}: {exc}", file=sys.stderr)
        for fn in (reap_children, *self.also):
            try:
                fn()
            except Exception as exc:  # noqa: BLE001
                print(f"[monitor] {type(exc).__name__}: {exc}", file=sys.stderr)

    def stop(self) -> None:
        self._halt.set()

    def shutdown(self, timeout_s: float = 5.0) -> None:
        self.stop()
        if self.is_alive():
            self.join(timeout_s)


def start_monitor(interval_s: float = 1.0, also: Iterable = ()) -> Monitor:
    reconcile(on_start=True)
    dispatch()
    mon = Monitor(interval_s, also)
    mon.start()
    return mon


def duration_s(run: Run) -> float | None:
    if not run.started_at:
        return None
    end = as_utc(run.finished_at) or utcnow()
    return max(0.0, (end - as_utc(run.started_at)).total_seconds())


def _iso(dt) -> str | None:
    return as_utc(dt).strftime("%Y-%m-%dT%H:%M:%SZ") if dt else None


def run_to_dict(run: Run, *, with_config: bool = False, metrics: Iterable[RunMetric] | None = None) -> dict[str, Any]:
    """The stable JSON shape of a run (scripts depend on it: add keys, never rename)."""
    d: dict[str, Any] = {
        "id": run.id,
        "kind": run.kind,
        "name": run.name,
        "tags": list(run.tags or []),
        "objective": (run.config or {}).get("objective", "sft") if run.kind == "train" else None,
        "status": str(run.status),
        "method": run.method,
        "base_model": run.base_model,
        "dataset": run.dataset_ref,
        "dataset_hash": run.dataset_hash,
        "step": run.step,
        "max_steps": run.max_steps,
        "epoch": run.epoch,
        "loss": run.last_loss,
        "tokens_per_s": run.tokens_per_s,
        "eta_s": run.eta_s,
        "created_at": _iso(run.created_at),
        "started_at": _iso(run.started_at),
        "finished_at": _iso(run.finished_at),
        "duration_s": duration_s(run),
        "pid": run.pid,
        "worker_pid": run.worker_pid,
        "worker_host": run.worker_host,
        "backend": run.backend,
        "attempt": run.attempt,
        "error": run.error,
        "output_dir": run.output_dir,
        "adapter_path": run.adapter_path,
        "log_path": run.log_path,
        "resume_from_checkpoint": run.resume_from_checkpoint,
        "parent_run_id": run.parent_run_id,
        "peak_memory_bytes": run.peak_memory_bytes,
        "memory_limit_bytes": run.memory_limit_bytes,
        "final_metrics": run.final_metrics or {},
    }
    if with_config:
        d["config"] = run.config
    if metrics is not None:
        d["metrics"] = [
            {k: getattr(m, k) for k in ("step", "epoch", "loss", "eval_loss", "lr", "grad_norm", "tokens_per_s",
                                        "memory_bytes", "wall_time_s")}
            for m in metrics
        ]
    return d
