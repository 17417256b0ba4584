"""Spawn, queue, stop, resume and reconcile training workers. Runs never depend on a browser session.

* ``submit`` stores a queued run and calls ``dispatch``, which starts queued runs while fewer than
  ``FTS_MAX_CONCURRENT_RUNS`` (default 1) are active, so a second run waits instead of fighting for the GPU.
  A finishing worker calls ``dispatch`` itself, so the queue advances even with no dashboard open.
* Workers are their own process group (``start_new_session``): closing the browser, or restarting the
  dashboard, does not touch them; stopping kills the whole tree.
* ``reconcile`` notices dead workers: during monitoring a vanished process becomes ``failed`` (with the tail of
  its log, which holds its stderr); on app start a leftover ``running`` row becomes ``interrupted``.
"""
from __future__ import annotations

import fcntl
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable

from sqlmodel import select

from core.config import REPO_ROOT, db_session, get_settings
from core.train.config import ConfigError, TrainConfig
from storage import Run, RunMetric, RunStatus
from storage.tables import as_utc, utcnow

STALE_HEARTBEAT_S = 120.0
STARTING_GRACE_S = 60.0
_children: dict[int, subprocess.Popen] = {}  # processes this process spawned (reaped by reconcile)
_children_lock = threading.Lock()


class JobError(ValueError):
    """An action on a run that cannot be done as asked; the message says why."""


# ---- helpers -------------------------------------------------------------------------------------------------------

def run_dir(run_id: int) -> Path:
    return get_settings().runs_dir / str(run_id)


def log_path(run_id: int) -> Path:
    return run_dir(run_id) / "worker.log"


def log_tail(run_id: int, max_lines: int = 40, max_chars: int = 6000) -> str:
    p = log_path(run_id)
    if not p.is_file():
        return ""
    with open(p, "rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - 64_000))
        text = f.read().decode("utf-8", errors="replace")
    lines = text.splitlines()[-max_lines:]
    return "\n".join(lines)[-max_chars:]


@contextmanager
def _dispatch_lock():
    """Serialise dispatchers of one workspace (UI monitor, CLI, finishing workers) so capacity is never exceeded."""
    ws = get_settings().workspace
    ws.mkdir(parents=True, exist_ok=True)
    with open(ws / ".dispatch.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def validate_references(config: TrainConfig) -> None:
    """Fail fast, before queueing, on a model or dataset that cannot exist."""
    from core.models import ModelNotFoundError, resolve_model

    from core.models import check_trainable

    try:
        resolved = resolve_model(config.base_model, prepare_default=False)
        if resolved.kind == "local":
            check_trainable(resolved)
    except ModelNotFoundError as exc:
        raise JobError(str(exc)) from None
    ref = config.dataset.strip()
    if ref.isdigit():
        from core.data import DatasetError, get_dataset

        try:
            ds = get_dataset(ref)
        except DatasetError:
            raise JobError(f"dataset {ref} not found: import it in the Data tab or `python -m core data import`") from None
        if ds.kind == "preference":
            raise JobError(f"dataset {ref} holds preference pairs (for DPO); supervised fine-tuning needs "
                           "conversations with assistant answers")
    elif not Path(ref).expanduser().exists():
        raise JobError(f"dataset file not found: {ref}")
    if config.method == "qlora":
        from core.train.device import qlora_support_error

        err = qlora_support_error()
        if err:
            raise JobError(err)


# ---- lifecycle -----------------------------------------------------------------------------------------------------

def submit(config: TrainConfig, *, parent_run_id: int | None = None, start: bool = True) -> Run:
    validate_references(config)
    if not config.dataset.strip().isdigit():  # a file path: store it absolute
        config = config.model_copy(update={"dataset": str(Path(config.dataset).expanduser().resolve())})
    with db_session() as s:
        run = Run(
            name=config.name,
            status=RunStatus.queued.value,
            config=config.model_dump(mode="json"),
            base_model=config.base_model,
            dataset_ref=config.dataset,
            method=config.method,
            parent_run_id=parent_run_id,
        )
        s.add(run)
        s.flush()
        if not run.name:
            run.name = f"run-{run.id}"
            cfg = dict(run.config)
            cfg["name"] = run.name
            run.config = cfg
        rd = run_dir(run.id)
        rd.mkdir(parents=True, exist_ok=True)
        run.output_dir = str(rd)
        run.log_path = str(rd / "worker.log")
        s.add(run)
    (rd / "config.yaml").write_text(TrainConfig.model_validate(run.config).to_yaml(), encoding="utf-8")
    if start:
        dispatch()
    return get_run(run.id)


def dispatch(exclude_run_id: int | None = None) -> list[int]:
    """Start queued runs (oldest first) while there is capacity. Returns the ids started."""
    settings = get_settings()
    started: list[int] = []
    with _dispatch_lock():
        with db_session() as s:
            active = s.exec(select(Run).where(Run.status.in_([x.value for x in RunStatus.active()]))).all()
            n_active = sum(1 for r in active if r.id != exclude_run_id)
            queued = s.exec(select(Run).where(Run.status == RunStatus.queued.value).order_by(Run.id)).all()
            to_start = queued[: max(0, settings.max_concurrent_runs - n_active)]
            for r in to_start:
                r.status = RunStatus.starting.value
                r.heartbeat_at = utcnow()
                s.add(r)
            ids = [r.id for r in to_start]
        for rid in ids:
            try:
                _spawn(rid)
                started.append(rid)
            except Exception as exc:  # noqa: BLE001
                _finish(rid, RunStatus.failed, f"could not start the worker process: {exc}")
    return started


def worker_command(run_id: int, config: TrainConfig) -> list[str]:
    if config.num_gpus > 1:
        # multi-GPU: the same worker under accelerate (DDP); only rank 0 writes to the DB
        return [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(config.num_gpus),
                "-m", "core.train.worker", "--run-id", str(run_id)]
    return [sys.executable, "-m", "core.train.worker", "--run-id", str(run_id)]


def _spawn(run_id: int) -> None:
    run = get_run(run_id)
    config = TrainConfig.model_validate(run.config)
    rd = run_dir(run_id)
    rd.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    settings = get_settings()
    env["FTS_WORKSPACE"] = str(settings.workspace)
    env["FTS_MODELS_DIR"] = str(settings.models_dir)
    env["DATABASE_URL"] = settings.database_url
    logf = open(rd / "worker.log", "ab")
    logf.write(f"\n===== attempt {run.attempt + 1} at {time.strftime('%Y-%m-%d %H:%M:%S')} =====\n".encode())
    logf.flush()
    proc = subprocess.Popen(
        worker_command(run_id, config),
        cwd=str(REPO_ROOT),
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=logf,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: survives the dashboard, killed as a tree on stop
        close_fds=True,
    )
    logf.close()
    with _children_lock:
        _children[proc.pid] = proc
    with db_session() as s:
        r = s.get(Run, run_id)
        if r.status == RunStatus.starting.value:
            r.status = RunStatus.running.value
        r.pid = proc.pid
        r.worker_host = socket.gethostname()
        r.started_at = r.started_at or utcnow()
        r.heartbeat_at = utcnow()
        r.attempt = (r.attempt or 0) + 1
        s.add(r)


def _finish(run_id: int, status: RunStatus, error: str | None = None) -> None:
    with db_session() as s:
        r = s.get(Run, run_id)
        if r is None:
            return
        r.status = status.value
        if error is not None:
            r.error = error
        r.finished_at = utcnow()
        r.stop_requested = False
        if status != RunStatus.succeeded:
            from core.train.worker import latest_checkpoint

            ckpt = latest_checkpoint(run_dir(run_id))
            r.resume_from_checkpoint = str(ckpt) if ckpt else r.resume_from_checkpoint
        s.add(r)


def _process_alive(pid: int | None, run_id: int) -> bool:
    if not pid:
        return False
    with _children_lock:
        proc = _children.get(pid)
    if proc is not None:
        if proc.poll() is None:
            return True
        with _children_lock:
            _children.pop(pid, None)
        return False
    import psutil

    try:
        p = psutil.Process(pid)
        if p.status() == psutil.STATUS_ZOMBIE:
            return False
        cmd = p.cmdline()
        # the pid must still be this run's worker (pids get reused): `-m core.train.worker --run-id <id>`
        return "core.train.worker" in cmd and any(
            a == "--run-id" and b == str(run_id) for a, b in zip(cmd, cmd[1:]))
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def reconcile(on_start: bool = False) -> list[int]:
    """Mark runs whose worker is gone. Returns the ids changed."""
    host = socket.gethostname()
    changed: list[int] = []
    now = utcnow()
    with db_session() as s:
        rows = s.exec(select(Run).where(Run.status.in_([x.value for x in RunStatus.active()]))).all()
    for r in rows:
        if r.worker_host and r.worker_host != host:
            # another machine's worker (shared Postgres): judge by heartbeat only
            if r.heartbeat_at and (now - as_utc(r.heartbeat_at)).total_seconds() > STALE_HEARTBEAT_S:
                _finish(r.id, RunStatus.interrupted, f"no heartbeat from {r.worker_host} for {STALE_HEARTBEAT_S:.0f}s")
                changed.append(r.id)
            continue
        if r.status == RunStatus.starting.value and not r.pid:
            age = (now - as_utc(r.heartbeat_at or r.created_at)).total_seconds()
            if age < STARTING_GRACE_S and not on_start:
                continue
        if _process_alive(r.pid, r.id):
            continue
        # the process is gone; did it record its own ending in the meantime?
        fresh = get_run(r.id)
        if fresh.status not in [x.value for x in RunStatus.active()]:
            continue
        tail = log_tail(r.id, max_lines=25)
        if fresh.status == RunStatus.stopping.value:
            _finish(r.id, RunStatus.stopped, None)
        elif on_start:
            _finish(r.id, RunStatus.interrupted, "worker process was gone when the studio started (machine restart "
                    "or crash); resume it from its last checkpoint.\n--- log tail ---\n" + tail)
        else:
            _finish(r.id, RunStatus.failed, f"worker process {r.pid} died without reporting (killed or crashed)."
                    "\n--- log tail ---\n" + tail)
        changed.append(r.id)
    return changed


def stop(run_id: int, *, wait: bool = True, timeout_s: float | None = None) -> Run:
    """Graceful stop: SIGTERM → the worker checkpoints and exits; SIGKILL to the whole group after the timeout."""
    run = get_run(run_id)
    if run.status == RunStatus.queued.value:
        _finish(run_id, RunStatus.stopped, None)
        return get_run(run_id)
    if run.status not in [x.value for x in RunStatus.active()]:
        raise JobError(f"run {run_id} is {run.status}; only queued or running runs can be stopped")
    with db_session() as s:
        r = s.get(Run, run_id)
        r.stop_requested = True
        r.status = RunStatus.stopping.value
        s.add(r)
    pid = run.pid
    if pid:
        _signal_group(pid, signal.SIGTERM)
    if not wait:
        return get_run(run_id)
    timeout_s = get_settings().stop_timeout_s if timeout_s is None else timeout_s
    deadline = time.time() + timeout_s
    while time.time() < deadline and _process_alive(pid, run_id):
        time.sleep(0.2)
    if _process_alive(pid, run_id):
        _signal_group(pid, signal.SIGKILL)
        for _ in range(50):
            if not _process_alive(pid, run_id):
                break
            time.sleep(0.1)
    run = get_run(run_id)
    if run.status in [x.value for x in RunStatus.active()]:
        _finish(run_id, RunStatus.stopped, None)
    dispatch()
    return get_run(run_id)


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(os.getpgid(pid), sig)
    except (ProcessLookupError, PermissionError):
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def resume(run_id: int) -> Run:
    """Continue a stopped/failed/interrupted run from its latest checkpoint (optimizer state included)."""
    from core.train.worker import latest_checkpoint

    run = get_run(run_id)
    if run.status not in (RunStatus.stopped.value, RunStatus.failed.value, RunStatus.interrupted.value):
        raise JobError(f"run {run_id} is {run.status}; only stopped, failed or interrupted runs can be resumed")
    ckpt = latest_checkpoint(run_dir(run_id))
    with db_session() as s:
        r = s.get(Run, run_id)
        r.status = RunStatus.queued.value
        r.resume_from_checkpoint = str(ckpt) if ckpt else None
        r.error = None
        r.finished_at = None
        r.stop_requested = False
        r.pid = None
        s.add(r)
    dispatch()
    return get_run(run_id)


def continue_training(run_id: int, extra_steps: int) -> Run:
    """A new run that starts from a finished run's adapter and trains ``extra_steps`` more steps."""
    if extra_steps < 1:
        raise JobError("extra steps must be at least 1")
    run = get_run(run_id)
    if not run.adapter_path or not Path(run.adapter_path).is_dir():
        raise JobError(f"run {run_id} has no saved adapter to continue from (status {run.status})")
    config = TrainConfig.model_validate(run.config)
    if config.method == "full":
        raise JobError("continue training is available for LoRA/QLoRA runs; for a full fine-tune start a new run "
                       f"with base_model={run.adapter_path}")
    new = config.model_copy(update={"init_adapter": run.adapter_path, "max_steps": extra_steps,
                                    "name": f"{run.name}-cont"})
    return submit(TrainConfig.model_validate(new.model_dump()), parent_run_id=run_id)


# ---- reading -------------------------------------------------------------------------------------------------------

def get_run(run_id: int) -> Run:
    with db_session() as s:
        run = s.get(Run, run_id)
    if run is None:
        raise JobError(f"run {run_id} not found")
    return run


def list_runs(limit: int = 200) -> list[Run]:
    with db_session() as s:
        return list(s.exec(select(Run).order_by(Run.id.desc()).limit(limit)).all())


def run_metrics(run_id: int, since_id: int = 0) -> list[RunMetric]:
    with db_session() as s:
        q = select(RunMetric).where(RunMetric.run_id == run_id, RunMetric.id > since_id).order_by(RunMetric.step, RunMetric.id)
        return list(s.exec(q).all())


def _iso(dt) -> str | None:
    return as_utc(dt).strftime("%Y-%m-%dT%H:%M:%SZ") if dt else None


def run_to_dict(run: Run, *, with_config: bool = False, metrics: Iterable[RunMetric] | None = None) -> dict[str, Any]:
    """The stable JSON shape of a run (scripts depend on it: add keys, never rename)."""
    d: dict[str, Any] = {
        "id": run.id,
        "name": run.name,
        "status": run.status,
        "method": run.method,
        "base_model": run.base_model,
        "dataset": run.dataset_ref,
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
        "worker_host": run.worker_host,
        "error": run.error,
        "output_dir": run.output_dir,
        "adapter_path": run.adapter_path,
        "log_path": run.log_path,
        "resume_from_checkpoint": run.resume_from_checkpoint,
        "parent_run_id": run.parent_run_id,
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


def duration_s(run: Run) -> float | None:
    if not run.started_at:
        return None
    end = as_utc(run.finished_at) or utcnow()
    return max(0.0, (end - as_utc(run.started_at)).total_seconds())


def wait_for(run_id: int, *, timeout_s: float | None = None, poll_s: float = 1.0, on_progress=None) -> Run:
    """Block until the run finishes, reconciling/dispatching meanwhile (used by `train --wait` and tests)."""
    deadline = None if timeout_s is None else time.time() + timeout_s
    last_step = -1
    while True:
        reconcile()
        dispatch()
        run = get_run(run_id)
        if on_progress and run.step != last_step:
            last_step = run.step
            on_progress(run)
        if run.status in [x.value for x in RunStatus.finished()]:
            return run
        if deadline is not None and time.time() > deadline:
            raise TimeoutError(f"run {run_id} still {run.status} after {timeout_s:.0f}s")
        time.sleep(poll_s)


class Monitor(threading.Thread):
    """Background reconcile + dispatch loop of the dashboard process (noticing dead workers within ~1-2 s)."""

    def __init__(self, interval_s: float = 1.0):
        super().__init__(daemon=True, name="fts-monitor")
        self.interval_s = interval_s
        self._stop = threading.Event()

    def run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                reconcile()
                dispatch()
            except Exception as exc:  # noqa: BLE001 - the dashboard never dies because a job did
                print(f"[monitor] {type(exc).__name__}: {exc}", file=sys.stderr)

    def stop(self) -> None:
        self._stop.set()


def start_monitor() -> Monitor:
    reconcile(on_start=True)
    dispatch()
    mon = Monitor()
    mon.start()
    return mon


def config_from_run(run_id: int) -> TrainConfig:
    return TrainConfig.model_validate(get_run(run_id).config)


__all__ = [
    "ConfigError", "JobError", "Monitor", "continue_training", "dispatch", "get_run", "list_runs", "log_tail",
    "reconcile", "resume", "run_metrics", "run_to_dict", "start_monitor", "stop", "submit", "wait_for",
]
