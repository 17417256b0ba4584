"""The warm worker: a fork server that has imported torch, transformers, peft, trl and datasets once, from which job
workers start in a fraction of a second instead of spending 10-30 s importing them on every run.

How it fits the runs core (the supervisor contract is unchanged):

- The supervisor asks the server for its worker (:func:`spawn`) instead of starting ``python -m core.runs.worker``.
  The request carries the same argv, working directory and environment, and the supervisor's stdin/stdout/stderr as
  file descriptors (SCM_RIGHTS), so the worker's output lands in the job's log as before.
- The server forks; the child becomes that worker: its own session, the supervisor's environment and stdio, fresh
  random seeds, the module run as ``__main__`` (``runpy``), ``atexit`` handlers run, then it exits. The studio's own
  code (``core.*``) is never imported by the server, so every worker reads its settings and code fresh.
- The supervisor sees a Popen-like :class:`WarmChild`: a pid to sample and signal, ``poll``/``wait`` and the
  exit status (negative for a signal) reported by the server, which reaps it. The worker dies with its supervisor:
  it watches the supervisor's end of the connection and kills itself when that closes (as ``PR_SET_PDEATHSIG`` does
  for a worker the supervisor started itself).
- One server per environment that the libraries read at import time (``HF_HOME``, ``HF_HUB_OFFLINE``, ``OMP_*`` …:
  everything except the studio's own ``FTS_*``/``DATABASE_URL``, which only the workers read), per interpreter and
  per installed packages; it listens on a socket in a 0700 folder of this user's and answers only this user
  (``SO_PEERCRED``). It exits after ``FTS_WARM_IDLE_MIN`` minutes (default 30) with nothing running or asked.
- The supervisor itself forks from the server too where one answers (:func:`spawn_supervisor`, asked by the local
  backend): detached — its own session, no watch on whoever asked, so a dashboard that restarts leaves its runs
  going — and reaped by the server. Every forked process shows its own command line (``python -m core.runs.supervise
  --job-id N``, ``python -m core.runs.worker …``) in ``ps`` and ``/proc``, as a cold one does, before its pid is
  given out: the backends' checks of which process is a job's hold for both.
- Nothing here is required: no server, an old one, a refused request — the supervisor starts the worker cold, as
  before. ``FTS_WARM_WORKER=0`` turns it off. No CUDA is initialised before the fork (imports only), and the server
  is single-threaded in Python when it forks.

This module is the client side (the supervisor's); the server is ``core/runs/warm_server.py``, which imports only the
standard library and runs as a script.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

from core.config import switched_on
from core.runs.warm_server import MODULE_PREFIX, REQUEST_LIMIT

REPO_ROOT = Path(__file__).resolve().parents[2]
SERVER = Path(__file__).resolve().with_name("warm_server.py")
STALE_S = 24 * 3600  # the lock and log of a server that has not run for a day go (one pair per environment it had)
# variables no preloaded library reads while it is imported (the studio's own, the job's, other tools'): a worker
# whose environment differs only in these forks from the same server (it gets its own values in os.environ)
VOLATILE = ("FTS_", "DATABASE_URL", "PYTEST_", "PWD", "OLDPWD", "_", "SHLVL", "COLUMNS", "LINES", "HF_TOKEN",
            "DOCKER_", "RAY_", "GRADIO_", "SPACE_ID", "SPACE_HOST", "OPENAI_", "ANTHROPIC_", "WANDB_API_KEY",
            # the experiment trackers' (core.train.trackers): TRL's import brings MLflow and W&B in, but they read
            # their variables when called, in the worker (not TRACKIO_DIR: trackio reads it when it is imported)
            "MLFLOW_", "WANDB_",
            # torch sets this one itself (to its default) the first time its compile cache is asked for, and reads
            # it then, not at import: a process that has compiled once must not get a server of its own for it
            "TORCHINDUCTOR_CACHE_DIR",
            # the dashboard's own port (app.py): a job queued from the dashboard and one from the CLI fork from the
            # same server (with it keyed, every dashboard started on another port started a server of its own)
            "PORT",
            # torch.distributed's rendezvous (core.runs.ranks): read when a process group starts, not at import, so
            # the ranks of a multi-process run fork from the job's server like a one-process worker does
            "RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT",
            # set by libraries in the process that queues the job, not by a person: Gradio sets this one when the
            # dashboard starts (huggingface_hub reads it at import: the forked worker reads it again,
            # warm_server._reread_at_import), scikit-learn and joblib set Intel OpenMP's (torch here uses GNU
            # OpenMP). Keyed, the dashboard's jobs and the CLI's had a server each
            "HF_HUB_DISABLE_TELEMETRY", "KMP_DUPLICATE_LIB_OK", "KMP_INIT_AT_FORK")
SECRET_WORDS = ("TOKEN", "SECRET", "PASSWORD", "PASSWD", "API_KEY", "ACCESS_KEY", "CREDENTIAL")
WAIT_FOR_IMPORTING_S = 60.0  # how long a job waits for its environment's server to finish importing
MAX_SERVERS = 2  # per installation: a session that keeps changing its environment does not pile them up


def enabled(env: dict | None = None) -> bool:
    env = os.environ if env is None else env
    return switched_on(env.get("FTS_WARM_WORKER"))


def _volatile(name: str) -> bool:
    """Not part of a server's key: read by the worker only, or a secret (which the server never holds)."""
    return any(name == v or (v.endswith("_") and name.startswith(v)) for v in VOLATILE) \
        or any(word in name.upper() for word in SECRET_WORDS)


def key(env: dict) -> str:
    """Which server serves a worker with this environment: the interpreter, the installed packages, this file and
    every variable a library could have read at import time."""
    variables = json.dumps(sorted((k, v) for k, v in env.items() if not _volatile(k))).encode()
    return f"{_installation()}-{hashlib.sha256(variables).hexdigest()[:12]}"


def _installation() -> str:
    """This interpreter, its installed packages and this checkout's warm worker: the first part of every key."""
    site = [p for p in sys.path if p.endswith("site-packages")]
    stamp = [sys.executable] + [f"{f}:{f.stat().st_mtime_ns}" for f in (Path(__file__).resolve(), SERVER)]
    stamp += [f"{p}:{os.stat(p).st_mtime_ns}" for p in site if os.path.isdir(p)]
    return hashlib.sha256(json.dumps(stamp).encode()).hexdigest()[:8]


def socket_dir() -> Path | None:
    """A folder only this user can enter, or None (then there is no warm worker)."""
    base = os.environ.get("XDG_RUNTIME_DIR") or "/tmp"  # noqa: S108 - a private 0700 subfolder, checked below
    d = Path(base) / f"fts-warm-{os.getuid()}"
    try:
        d.mkdir(mode=0o700, exist_ok=True)
        st = os.lstat(d)
    except OSError:
        return None
    if not os.path.isdir(d) or os.path.islink(d) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        return None
    return d


def _paths(env: dict) -> tuple[Path, Path, Path] | None:
    d = socket_dir()
    if d is None:
        return None
    k = key(env)
    return d / f"{k}.sock", d / f"{k}.lock", d / f"{k}.log"


# ---------------------------------------------------------------------------------------------------- client side

def running(env: dict) -> bool:
    """A server for this environment holds its lock (it may still be importing)."""
    p = _paths(env)
    return p is not None and _held(p[1])


def _held(lock: Path) -> bool:
    import fcntl

    try:
        fd = os.open(lock, os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def servers() -> int:
    """How many warm workers of this installation (interpreter, packages, checkout) run now, any environment."""
    d = socket_dir()
    return 0 if d is None else sum(_held(lock) for lock in d.glob(f"{_installation()}-*.lock"))


def _retire_oldest(wait_s: float = 2.0) -> bool:
    """Retire the least recently wanted server of this installation (its running workers go on). True if one was."""
    d = socket_dir()
    held = [lock for lock in d.glob(f"{_installation()}-*.lock") if _held(lock)] if d else []
    return bool(held) and _retire(min(held, key=lambda lock: lock.stat().st_mtime), wait_s)


def _server_argv(p: tuple[Path, Path, Path]) -> list[str]:
    return [sys.executable, str(SERVER), "--serve", str(p[0]), str(p[1])]


def server_environment(env: dict) -> dict:
    """The server's own environment: the job's without its secrets (each worker gets its own from its request)."""
    return {k: v for k, v in env.items() if not any(word in k.upper() for word in SECRET_WORDS)}


def ensure(env: dict) -> bool:
    """Start a server for this environment unless one runs; where this installation already has MAX_SERVERS of
    them (for other environments), the least recently wanted one is retired first. True when one was started now."""
    if not enabled(env) or os.name != "posix":
        return False
    p = _paths(env)
    if p is None:
        return False
    if _held(p[1]):  # a server for this environment runs (it may still be importing)
        with contextlib.suppress(OSError):
            os.utime(p[1])  # recently wanted: the last to be retired for another environment
        return False
    _prune(p[0].parent)
    cap = max(1, int(env.get("FTS_WARM_MAX_SERVERS") or MAX_SERVERS))
    while servers() >= cap and _retire_oldest():
        pass
    with open(p[2], "ab") as logf:
        proc = subprocess.Popen(  # noqa: S603 - this file, as a script, no shell
            _server_argv(p),
            cwd=str(REPO_ROOT), env=server_environment(env), stdin=subprocess.DEVNULL, stdout=logf,
            stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)
    import threading

    threading.Thread(target=proc.wait, daemon=True, name="warm-worker-reaper").start()
    # the server locks its file first thing (before its imports): wait for that, so that a stop() right after this
    # finds it (a stop before the lock was taken would miss it, and it would live until it idles out)
    deadline = time.monotonic() + 10
    while not _held(p[1]) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    return True


def _prune(d: Path) -> None:
    """Remove the lock, log and socket of servers that ended more than STALE_S ago (any installation of this
    user's): each environment a session ever had leaves a pair otherwise. A lock in use is never removed (a server
    that opened one just as it goes checks, after locking it, that its file is still the one at that path)."""
    now = time.time()
    for lock in d.glob("*.lock"):
        with contextlib.suppress(OSError):
            if now - lock.stat().st_mtime > STALE_S and not _held(lock):
                for f in (lock.with_suffix(".log"), lock.with_suffix(".sock"), lock):
                    with contextlib.suppress(FileNotFoundError):
                        f.unlink()


def stop(env: dict, timeout_s: float = 10.0) -> bool:
    """Ask this environment's server to stop answering (it exits once its workers have ended). True when it has."""
    p = _paths(env)
    return p is None or _retire(p[1], timeout_s)


def _retire(lock: Path, wait_s: float) -> bool:
    """SIGTERM to the server holding ``lock`` (its pid is in it): one still importing just ends, a ready one stops
    answering and lets its workers finish. True once the lock is free."""
    if not _held(lock):
        return True
    try:
        pid = int(lock.read_text().strip() or 0)
        if pid > 0 and _held(lock):
            os.kill(pid, signal.SIGTERM)
    except (OSError, ValueError):
        pass
    deadline = time.monotonic() + wait_s
    while _held(lock):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def wait_ready(env: dict, timeout_s: float = 120.0) -> bool:
    """Wait until this environment's server answers (it imports for 10-30 s after it starts)."""
    p = _paths(env)
    deadline = time.monotonic() + timeout_s
    while p is not None and time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(2)
                s.connect(str(p[0]))
                _send(s, {"op": "ping"})
                if _read_line(s, 5).get("ok"):
                    return True
        time.sleep(0.1)
    return False


def _send(s: socket.socket, obj: dict, fds: list[int] | None = None) -> None:
    payload = json.dumps(obj).encode()
    if len(payload) > REQUEST_LIMIT:
        raise ValueError("request too large")
    data = struct.pack("!I", len(payload)) + payload
    sent = socket.send_fds(s, [data], fds) if fds else s.send(data)
    if sent < len(data):
        s.sendall(data[sent:])


def _read_line(s: socket.socket, timeout_s: float) -> dict:
    buf = b""
    deadline = time.monotonic() + timeout_s
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([s], [], [], left)[0]:
            raise TimeoutError("no answer from the warm worker")
        chunk = s.recv(4096)
        if not chunk:
            raise ConnectionError("the warm worker closed the connection")
        buf += chunk
    line, _, rest = buf.partition(b"\n")
    if rest:
        raise ValueError("unexpected data from the warm worker")
    return json.loads(line)


class WarmChild:
    """The supervisor's handle on a worker forked by the server: what it uses of ``subprocess.Popen``."""

    stdout = None

    def __init__(self, conn: socket.socket, pid: int) -> None:
        self._conn = conn
        self.pid = pid
        self.returncode: int | None = None
        self._buf = b""
        self._reading = False  # poll() from a signal handler while wait() reads: answer without reading
        self._server_gone = False  # the server ended while our worker ran: watch the pid instead

    def _read(self, timeout: float | None) -> None:
        if self.returncode is not None or self._reading:
            return
        self._reading = True
        try:
            deadline = None if timeout is None else time.monotonic() + timeout
            while self.returncode is None:
                if self._server_gone:
                    # the connection closed without an exit status: the server is gone (the worker holds its own
                    # copy of the connection, so it has usually ended too). Report 1 ('exited without recording
                    # how', if it recorded nothing) once the pid has ended
                    if not _alive(self.pid):
                        self.returncode = 1
                    elif deadline is None or time.monotonic() < deadline:
                        time.sleep(0.2 if deadline is None else min(0.2, deadline - time.monotonic()))
                        continue
                    return
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                try:
                    ready = select.select([self._conn], [], [], left)[0]
                except InterruptedError:
                    ready = []
                if not ready:
                    return
                try:
                    chunk = self._conn.recv(4096)
                except OSError:
                    chunk = b""
                if not chunk:
                    self._server_gone = True
                    continue
                self._buf += chunk
                while b"\n" in self._buf:
                    line, _, self._buf = self._buf.partition(b"\n")
                    with contextlib.suppress(ValueError):
                        msg = json.loads(line)
                        if "exit" in msg:
                            self.returncode = int(msg["exit"])
                if deadline is not None and time.monotonic() >= deadline:
                    return
        finally:
            self._reading = False

    def poll(self) -> int | None:
        self._read(0)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        self._read(timeout)
        if self.returncode is None:
            raise subprocess.TimeoutExpired(["warm worker", str(self.pid)], timeout or 0)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


# started cold: the launcher of a multi-process run's ranks (core.runs.ranks) needs none of the warm libraries, and a
# forked copy of them would count in the run's memory; its ranks start as processes of their own
COLD_MODULES = frozenset({"core.runs.ranks"})


def spawn(argv: list[str], env: dict, cwd: str, timeout_s: float = 10.0,
          stdout: int | None = None, stderr: int | None = None) -> WarmChild | None:
    """Start ``argv`` (``python -m core.…``) from this environment's server, or None (start it cold). Its stdout and
    stderr are this process's unless ``stdout`` / ``stderr`` (file descriptors) say otherwise."""
    if not _servable(argv, env):
        return None
    p = _paths(env)
    if p is None:
        return None
    if not p[0].exists():
        # a server that is still importing finishes sooner than a cold worker would (it started earlier and imports
        # the same libraries; two importers on a small machine only slow each other): wait for it, bounded
        wait_s = float(env.get("FTS_WARM_WAIT_S") or WAIT_FOR_IMPORTING_S)
        if not (wait_s > 0 and running(env) and wait_ready(env, timeout_s=wait_s)):
            return None
    s, pid = _request(p[0], argv, env, cwd, timeout_s, stdout, stderr, detach=False)
    return None if s is None else WarmChild(s, pid)


def spawn_supervisor(argv: list[str], env: dict, cwd: str, stdout: int, timeout_s: float = 10.0) -> int | None:
    """Start a job's supervisor (``python -m core.runs.supervise …``) from this environment's server: its pid, or None
    (start it cold). Only from a server that answers now: a cold supervisor starts in under a second, so nothing
    waits for one still importing. The supervisor is detached: it outlives the process that asked (a dashboard
    that restarts leaves its runs going), in its own session, its output (and errors) to ``stdout``; the server
    reaps it. It saves every job ~0.4 s of CPU, mostly importing SQLAlchemy and SQLModel (bench/job_overhead.py)."""
    if not _servable(argv, env):
        return None
    p = _paths(env)
    if p is None or not p[0].exists():
        return None
    # the child shows its command over the server's own argument area: where that is shorter, a forked supervisor
    # would keep showing the server's, and the backend's check of which pid is the job's would find it gone
    if len(os.fsencode("\0".join(argv))) > len(os.fsencode("\0".join(_server_argv(p)))):
        return None
    s, pid = _request(p[0], argv, env, cwd, timeout_s, stdout, stdout, detach=True)
    if s is None:
        return None
    s.close()
    return pid


def _servable(argv: list[str], env: dict) -> bool:
    return enabled(env) and len(argv) >= 3 and argv[0] == sys.executable and argv[1] == "-m" \
        and argv[2].startswith(MODULE_PREFIX) and argv[2] not in COLD_MODULES


def _request(sock: Path, argv: list[str], env: dict, cwd: str, timeout_s: float, stdout: int | None,
             stderr: int | None, *, detach: bool) -> tuple[socket.socket | None, int]:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.settimeout(2)
        s.connect(str(sock))
        s.settimeout(None)
        req = {"op": "run", "argv": argv[1:], "cwd": cwd, "env": dict(env)}
        if detach:
            req["detach"] = True
        with open(os.devnull, "rb") as devnull:
            _send(s, req, [devnull.fileno(), sys.stdout.fileno() if stdout is None else stdout,
                           sys.stderr.fileno() if stderr is None else stderr])
        answer = _read_line(s, timeout_s)
        return s, int(answer["pid"])
    except (OSError, ValueError, KeyError, TypeError, TimeoutError, ConnectionError):
        s.close()
        return None, 0
