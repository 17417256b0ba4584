"""Where a job's processes run. A backend starts a job's supervisor (``python -m core.runs.supervise --job-id N``),
tells whether it is alive, signals it and reads its log. The scheduler talks to backends through
:class:`Backend` only, so a cluster backend (Ray's job API) is one more class with the same five methods.

``local`` (the default): a process on this machine in its own session and process group — forked from the warm
worker where one answers (core.runs.warm.spawn_supervisor), else started cold — so closing the browser or
restarting the dashboard does not touch it, and a stop reaches the supervisor and its worker together.

``ray`` (``FTS_JOB_BACKEND=ray``, ``RAY_ADDRESS=http://head:8265``): the same supervisor command submitted as a Ray
job through Ray's job submission API, asking for the run's GPUs (``entrypoint_num_gpus``) so Ray places it on a node
that has them. The job's processes need what a local job has — the studio installed at the same path, the shared
database and a workspace every node reads (a shared filesystem path) — see docs/TEAM.md.
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass

from core.config import REPO_ROOT, get_settings
from core.runs import paths, warm
from storage import Run

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Handle:
    pid: int | None
    host: str
    external_id: str | None = None


class BackendUnavailable(RuntimeError):
    """The backend cannot take jobs right now (a cluster that does not answer): the job stays queued."""


class Backend(ABC):
    """The interface. ``is_alive`` answers None when this process cannot tell (the job runs on another host):
    the scheduler then judges by the job's heartbeat."""

    name = "base"

    @abstractmethod
    def start(self, job: Run) -> Handle:
        """Start the job's supervisor; return where it runs."""

    @abstractmethod
    def is_alive(self, job: Run) -> bool | None:
        """Whether the job's processes still run (None: cannot tell from here)."""

    @abstractmethod
    def terminate(self, job: Run) -> None:
        """Ask for a graceful stop (the worker checkpoints, then exits)."""

    @abstractmethod
    def kill(self, job: Run) -> None:
        """Stop it now, with everything it started."""

    def logs(self, job: Run, max_lines: int = 40, max_chars: int = 6000) -> str:
        return paths.log_tail(job.id, max_lines=max_lines, max_chars=max_chars)

    def describe_gone(self, job: Run) -> str:
        """What reconcile says of a job whose processes ended without recording how."""
        return f"worker process {job.pid} died without reporting (killed or crashed)"


def supervisor_command(job_id: int) -> list[str]:
    return [sys.executable, "-m", "core.runs.supervise", "--job-id", str(job_id)]


def job_environment() -> dict[str, str]:
    """What a job's processes need to find the same workspace, database and code."""
    settings = get_settings()
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    # a CPU job's OpenMP threads sleep at a barrier instead of spinning: spinning, a thread waiting for one that
    # shares its core with a busy process burns the time that one needs (a training at nice 10 beside one busy
    # process: 36 s a step instead of 4.2 s, bench/cpu_share.py). Alone it costs ~5 %; torch reads it at import
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    # the checkout first, once: a supervisor that starts the next queued job passes its own environment on, and a
    # PYTHONPATH that grew with every generation made a new warm-worker key each time (every queued job cold)
    rest = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != str(REPO_ROOT)]
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *rest])
    env["FTS_WORKSPACE"] = str(settings.workspace)
    env["FTS_MODELS_DIR"] = str(settings.models_dir)
    env["DATABASE_URL"] = settings.database_url
    # trackio (a run's tracker, core.train.trackers) keeps its data in the workspace unless the admin says where; TRL
    # imports trackio, so the warm worker reads this when it preloads: it is in the environment from the start
    env.setdefault("TRACKIO_DIR", str(settings.workspace / "trackio"))
    return env


def is_supervisor_of(cmdline: list[str], job_id: int) -> bool:
    """The pid still belongs to this job's supervisor (pids get reused): ``-m core.runs.supervise --job-id <id>``."""
    return "core.runs.supervise" in cmdline and any(
        a == "--job-id" and b == str(job_id) for a, b in zip(cmdline, cmdline[1:]))


class LocalBackend(Backend):
    name = "local"

    def __init__(self) -> None:
        self._children: dict[int, subprocess.Popen] = {}  # started here: reaped when they end
        self._lock = threading.Lock()

    def start(self, job: Run) -> Handle:
        rd = paths.job_dir(job.id)
        rd.mkdir(parents=True, exist_ok=True)
        env = job_environment()
        try:  # the next workers fork from a warm worker with the libraries imported (this one, if it is ready)
            warm.ensure(env)
        except OSError as exc:
            log.warning("could not start the warm worker: %s", exc)
        with open(paths.log_path(job.id), "ab") as logf:
            logf.write(paths.attempt_header(job.attempt).encode())
            logf.flush()
            # the supervisor forks from the warm worker too where one answers (in its own session, reaped by the
            # server, its command line as a cold one's: is_alive below tells it the same way), else starts cold
            pid = warm.spawn_supervisor(supervisor_command(job.id), env, str(REPO_ROOT), logf.fileno())
            if pid:
                return Handle(pid, socket.gethostname())
            proc = subprocess.Popen(  # noqa: S603 - sys.executable -m core.runs.supervise <id>, no shell
                supervisor_command(job.id),
                cwd=str(REPO_ROOT),
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: survives the dashboard, stopped as a tree
                close_fds=True,
            )
        with self._lock:
            self._children[proc.pid] = proc
        return Handle(proc.pid, socket.gethostname())

    def is_alive(self, job: Run) -> bool | None:
        if job.worker_host and job.worker_host != socket.gethostname():
            return None
        pid = job.pid
        if not pid:
            return False
        with self._lock:
            proc = self._children.get(pid)
        if proc is not None:
            if proc.poll() is None:
                return True
            with self._lock:
                self._children.pop(pid, None)
            return False
        import psutil

        try:
            p = psutil.Process(pid)
            if p.status() == psutil.STATUS_ZOMBIE:
                return False
            return is_supervisor_of(p.cmdline(), job.id)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return False

    def worker_gone(self, job: Run) -> bool:
        """The job's worker process (started by its supervisor) has ended — the supervisor is recording why."""
        if not job.worker_pid or (job.worker_host and job.worker_host != socket.gethostname()):
            return False
        import psutil

        try:
            return psutil.Process(job.worker_pid).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True
        except psutil.AccessDenied:
            return False

    def _signal(self, job: Run, sig: int) -> None:
        if not job.pid or self.is_alive(job) is False:
            return
        try:
            os.killpg(os.getpgid(job.pid), sig)
        except (ProcessLookupError, PermissionError):
            try:
                os.kill(job.pid, sig)
            except (ProcessLookupError, PermissionError):
                pass

    def terminate(self, job: Run) -> None:
        self._signal(job, signal.SIGTERM)

    def kill(self, job: Run) -> None:
        self._signal(job, signal.SIGKILL)

    def reap(self) -> list[int]:
        """Collect the exit status of every supervisor started here that has ended — once its job has recorded its
        ending nothing asks about it again, and until collected it stays a ``<defunct>`` child of this process.
        Returns the pids reaped."""
        with self._lock:
            ended = [pid for pid, proc in self._children.items() if proc.poll() is not None]
            for pid in ended:
                del self._children[pid]
        return ended


_BACKENDS: dict[str, Backend] = {}


def reap_children() -> list[int]:
    """Reap the ended job processes this process started (every backend that starts local children)."""
    out: list[int] = []
    for backend in list(_BACKENDS.values()):
        reap = getattr(backend, "reap", None)
        if reap is not None:
            out += reap()
    return out


# what a Ray job's processes get through its runtime environment: the studio's settings, never a secret — Ray shows
# a job's runtime environment to whoever reaches its dashboard (tokens: set them on the nodes; see docs/TEAM.md)
RAY_ENV_NAMES = ("DATABASE_URL", "RAY_ADDRESS", "HF_HOME", "HF_HUB_CACHE", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE",
                 "TRANSFORMERS_OFFLINE", "HF_ENDPOINT", "OMP_NUM_THREADS", "TOKENIZERS_PARALLELISM")
_SECRET_NAME = ("TOKEN", "SECRET", "PASSWORD", "PASSWD", "API_KEY", "FTS_AUTH")


def ray_job_environment() -> dict[str, str]:
    env = job_environment()
    out = {k: v for k, v in env.items()
           if (k.startswith("FTS_") or k in RAY_ENV_NAMES) and not any(p in k.upper() for p in _SECRET_NAME)}
    out["PYTHONUNBUFFERED"] = "1"
    out["PYTHONPATH"] = env["PYTHONPATH"]
    out["FTS_JOB_BACKEND"] = "ray"  # the supervisor starts the next queued job through Ray too
    out["RAY_ADDRESS"] = ray_address()
    # Ray's stop sends SIGTERM, waits this long, then SIGKILLs: as long as the studio's own stop timeout, so the
    # worker writes its checkpoint
    out["RAY_JOB_STOP_WAIT_TIME_S"] = str(int(get_settings().stop_timeout_s) + 5)
    return out


def ray_address() -> str:
    return (os.environ.get("RAY_ADDRESS") or "http://127.0.0.1:8265").rstrip("/")


RAY_TIMEOUT_S = 10.0
_RAY_ACTIVE = ("PENDING", "RUNNING")


class RayBackend(Backend):
    """Jobs on a Ray cluster through its job submission API (``ray.job_submission.JobSubmissionClient``).

    * start: submission id :meth:`submission_id`; entrypoint
      ``cd <studio> && exec <python> -m core.runs.supervise --job-id N --tee-log`` — the supervisor copies the
      worker's output to the job's log file as well as to Ray's job log.
    * is_alive: the Ray job is PENDING or RUNNING; None when the cluster does not answer (the scheduler then judges
      by the heartbeat, so a run on a dead cluster is marked after ``STALE_HEARTBEAT_S``).
    * terminate: the stop is in the database (the supervisor reads it each second and SIGTERMs its worker, so a stop
      works even when the Ray API does not answer) and ``stop_job`` (SIGTERM to the job's processes; Ray SIGKILLs
      after ``RAY_JOB_STOP_WAIT_TIME_S``, which the studio sets to its stop timeout).
    * logs: the job's log file (the tee), else Ray's job log.
    """

    name = "ray"

    def __init__(self, address: str | None = None) -> None:
        self.address = (address or ray_address()).rstrip("/")
        self._client = None
        self._lock = threading.Lock()

    def _call(self, what: str, fn, *args, **kwargs):
        """A call to the cluster that gives up after ``RAY_TIMEOUT_S`` (Ray's client has no timeout of its own: a
        head behind a dropped route would hang the dashboard's monitor)."""
        import concurrent.futures as cf

        pool = cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix="fts-ray")
        try:
            fut = pool.submit(fn, *args, **kwargs)
            try:
                return fut.result(timeout=RAY_TIMEOUT_S)
            except cf.TimeoutError as exc:
                raise BackendUnavailable(f"the Ray cluster at {self.address} did not answer {what} within "
                                         f"{RAY_TIMEOUT_S:.0f} s") from exc
            except (ConnectionError, OSError) as exc:
                raise BackendUnavailable(f"cannot reach the Ray cluster at {self.address} ({what}): {exc}. "
                                         "Is the head running (`ray start --head`) and RAY_ADDRESS its dashboard "
                                         "address (http://host:8265)?") from exc
        finally:
            pool.shutdown(wait=False)

    def client(self):
        with self._lock:
            if self._client is None:
                try:
                    from ray.job_submission import JobSubmissionClient
                except ImportError as exc:
                    raise BackendUnavailable("FTS_JOB_BACKEND=ray needs Ray: pip install 'ray[default]==2.60.0'"
                                             ) from exc
                self._client = self._call("a connection", JobSubmissionClient, self.address)
            return self._client

    @staticmethod
    def submission_id(job: Run) -> str:
        """``fts-<studio>-<job id>-<attempt>``: unique per attempt (a resume is a new Ray job) and per studio — the
        hash of its database and workspace — since several studios (and test sessions) may share one cluster."""
        import hashlib

        settings = get_settings()
        studio = hashlib.sha256(f"{settings.database_url}|{settings.workspace}".encode()).hexdigest()[:8]
        return f"fts-{studio}-{job.id}-{job.attempt}"

    @staticmethod
    def entrypoint(job: Run) -> str:
        import shlex

        cmd = " ".join(shlex.quote(a) for a in supervisor_command(job.id) + ["--tee-log"])
        return f"cd {shlex.quote(str(REPO_ROOT))} && exec {cmd}"

    @staticmethod
    def gpus(job: Run) -> float:
        """GPUs the run's supervisor asks Ray for: ``FTS_RAY_NUM_GPUS`` when set (0 on a CPU cluster), else 1; none
        for a multi-process run, whose ranks each hold a bundle of their own (core.runs.ray_ranks)."""
        config = job.config or {}
        if int(config.get("num_processes") or config.get("num_gpus") or 1) > 1:
            return 0.0
        fixed = os.environ.get("FTS_RAY_NUM_GPUS", "").strip()
        return float(fixed) if fixed else 1.0

    @staticmethod
    def cpus(job: Run) -> float:
        """CPUs the run's supervisor asks Ray for: ``FTS_RAY_NUM_CPUS`` (1); none for a multi-process run, whose ranks
        hold their bundles — a supervisor holding a CPU of a one-CPU node kept a one-rank-per-node placement from
        ever fitting there (a resume waited for it until the placement timeout)."""
        config = job.config or {}
        if int(config.get("num_processes") or config.get("num_gpus") or 1) > 1:
            return 0.0
        return float(os.environ.get("FTS_RAY_NUM_CPUS", "1") or 1)

    def start(self, job: Run) -> Handle:
        client = self.client()
        sid = self.submission_id(job)
        cpus = self.cpus(job)
        with open(paths.log_path(job.id), "ab") as logf:
            logf.write(paths.attempt_header(job.attempt, f"Ray job {sid} on {self.address}").encode())
        try:
            self._call("the job submission", client.submit_job, entrypoint=self.entrypoint(job), submission_id=sid,
                       runtime_env={"env_vars": ray_job_environment()},
                       entrypoint_num_gpus=self.gpus(job) or None, entrypoint_num_cpus=cpus,
                       metadata={"studio_run": str(job.id), "kind": job.kind, "name": (job.name or "")[:100]})
        except RuntimeError as exc:
            if "already exists" not in str(exc):  # a retried submit whose first try got through
                raise
        return Handle(None, "ray", sid)

    def status(self, job: Run) -> str | None:
        if not job.external_id:
            return None
        client = self.client()
        try:
            return str(self._call("a status read", client.get_job_status, job.external_id).value)
        except RuntimeError as exc:
            if "does not exist" in str(exc) or "404" in str(exc):
                return "MISSING"
            raise

    def is_alive(self, job: Run) -> bool | None:
        if not job.external_id:
            return False
        try:
            return self.status(job) in _RAY_ACTIVE
        except BackendUnavailable:
            return None

    def terminate(self, job: Run) -> None:
        if not job.external_id:
            return
        try:
            self._call("the stop", self.client().stop_job, job.external_id)
        except (BackendUnavailable, RuntimeError):
            pass  # the supervisor reads the stop from the database

    def kill(self, job: Run) -> None:
        # Ray has no immediate kill: its stop SIGKILLs after RAY_JOB_STOP_WAIT_TIME_S; ask again in case the first
        # request was lost
        self.terminate(job)

    def describe_gone(self, job: Run) -> str:
        try:
            state = self.status(job) or "unknown"
        except BackendUnavailable:
            state = "unknown"
        where = f" on {job.worker_host}" if job.worker_host else ""
        return (f"Ray job {job.external_id}{where} ended ({state}) and its worker process died without reporting "
                "(killed, or its node was lost)")

    def logs(self, job: Run, max_lines: int = 40, max_chars: int = 6000) -> str:
        """The job's log file (the supervisor tees the worker's output into it), read from its end; Ray's job log
        (fetched whole, so only then) where this host cannot read that file."""
        text = super().logs(job, max_lines=max_lines, max_chars=max_chars)
        if text.strip() or not job.external_id:
            return text
        from core.secrets import redact

        try:
            full = self._call("a log read", self.client().get_job_logs, job.external_id) or ""
        except (BackendUnavailable, RuntimeError):
            return text
        return redact("\n".join(full.splitlines()[-max_lines:])[-max_chars:]) or ""


def get_backend(name: str | None = None) -> Backend:
    """The backend by name (a job's ``backend`` column), or the configured default (``FTS_JOB_BACKEND``)."""
    name = name or os.environ.get("FTS_JOB_BACKEND", "local") or "local"
    key = name if name != "ray" else f"ray:{ray_address()}"
    if key not in _BACKENDS:
        if name == "local":
            _BACKENDS[key] = LocalBackend()
        elif name == "ray":
            _BACKENDS[key] = RayBackend()
        else:
            raise ValueError(f"unknown job backend '{name}' (available: local, ray)")
    return _BACKENDS[key]


def prewarm() -> bool:
    """Start the warm worker for this environment (core/runs/warm.py) when jobs run locally, so that the first run's
    worker forks with the libraries imported. Returns True when one was started now."""
    if (os.environ.get("FTS_JOB_BACKEND") or "local") != "local":
        return False
    try:
        return warm.ensure(job_environment())
    except OSError as exc:
        log.warning("could not start the warm worker: %s", exc)
        return False


def unwarm() -> None:
    """Retire the warm worker of this environment (a dashboard that started it, shutting down): it stops answering
    at once and exits when the workers it forked have ended; running jobs go on."""
    try:
        warm.stop(job_environment(), timeout_s=2)
    except OSError as exc:
        log.warning("could not stop the warm worker: %s", exc)


def this_host() -> str:
    return socket.gethostname()


def python() -> str:
    return sys.executable
