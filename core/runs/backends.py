"""Where a job's processes run. A backend starts a job's supervisor (``python -m core.runs.supervise --job-id N``),
tells whether it is alive, signals it and reads its log. The scheduler talks to backends through
:class:`Backend` only, so a cluster backend (Ray's job API) is one more class with the same five methods.

``local`` (the default): a subprocess on this machine in its own session and process group, so closing the browser
or restarting the dashboard does not touch it, and a stop reaches the supervisor and its worker together.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass

from core.config import REPO_ROOT, get_settings
from core.runs import paths
from storage import Run


@dataclass(frozen=True)
class Handle:
    pid: int | None
    host: str
    external_id: str | None = None


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


def supervisor_command(job_id: int) -> list[str]:
    return [sys.executable, "-m", "core.runs.supervise", "--job-id", str(job_id)]


def job_environment() -> dict[str, str]:
    """What a job's processes need to find the same workspace, database and code."""
    settings = get_settings()
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["FTS_WORKSPACE"] = str(settings.workspace)
    env["FTS_MODELS_DIR"] = str(settings.models_dir)
    env["DATABASE_URL"] = settings.database_url
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
        with open(paths.log_path(job.id), "ab") as logf:
            logf.write(f"\n===== attempt {job.attempt} at {time.strftime('%Y-%m-%d %H:%M:%S')} =====\n".encode())
            logf.flush()
            proc = subprocess.Popen(  # noqa: S603 - sys.executable -m core.runs.supervise <id>, no shell
                supervisor_command(job.id),
                cwd=str(REPO_ROOT),
                env=job_environment(),
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


_BACKENDS: dict[str, Backend] = {}


def get_backend(name: str | None = None) -> Backend:
    """The backend by name (a job's ``backend`` column), or the configured default (``FTS_JOB_BACKEND``)."""
    name = name or os.environ.get("FTS_JOB_BACKEND", "local") or "local"
    if name not in _BACKENDS:
        if name == "local":
            _BACKENDS[name] = LocalBackend()
        else:
            raise ValueError(f"unknown job backend '{name}' (available: local)")
    return _BACKENDS[name]


def this_host() -> str:
    return socket.gethostname()


def python() -> str:
    return sys.executable
