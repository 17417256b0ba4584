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
- Nothing here is required: no server, an old one, a refused request — the supervisor starts the worker cold, as
  before. ``FTS_WARM_WORKER=0`` turns it off. No CUDA is initialised before the fork (imports only), and the server
  is single-threaded in Python when it forks.

This module imports only the standard library: the server runs it as a script (``python core/runs/warm.py``).
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

REPO_ROOT = Path(__file__).resolve().parents[2]
REQUEST_LIMIT = 4 << 20
# variables no preloaded library reads while it is imported (the studio's own, the job's, other tools'): a worker
# whose environment differs only in these forks from the same server (it gets its own values in os.environ)
VOLATILE = ("FTS_", "DATABASE_URL", "PYTEST_", "PWD", "OLDPWD", "_", "SHLVL", "COLUMNS", "LINES", "HF_TOKEN",
            "DOCKER_", "RAY_", "GRADIO_", "SPACE_ID", "SPACE_HOST", "OPENAI_", "ANTHROPIC_", "WANDB_API_KEY")
SECRET_WORDS = ("TOKEN", "SECRET", "PASSWORD", "PASSWD", "API_KEY", "ACCESS_KEY", "CREDENTIAL")
MAX_SERVERS = 2  # per installation: a session that keeps changing its environment does not pile them up
MODULE_PREFIX = "core."
PRELOAD = (  # (module, names): what a training / evaluation / export worker imports first
    ("numpy", ()), ("torch", ()), ("safetensors.torch", ()), ("tokenizers", ()), ("pyarrow", ()), ("pandas", ()),
    ("transformers", ("AutoConfig", "AutoModelForCausalLM", "AutoTokenizer", "Trainer", "TrainingArguments",
                      "TrainerCallback", "PreTrainedTokenizerBase")),
    ("transformers.trainer_callback", ("PrinterCallback",)),
    ("accelerate", ()), ("peft", ("LoraConfig", "PeftModel", "get_peft_model")), ("datasets", ("Dataset",)),
    ("trl", ("SFTConfig", "SFTTrainer", "DPOConfig", "DPOTrainer", "GRPOConfig", "GRPOTrainer")),
    ("sqlalchemy", ()), ("sqlmodel", ()), ("pydantic", ()), ("psutil", ()), ("yaml", ()), ("jinja2", ()),
)


def enabled(env: dict | None = None) -> bool:
    env = os.environ if env is None else env
    return env.get("FTS_WARM_WORKER", "1").strip().lower() not in ("0", "false", "no", "off")


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
    """This interpreter, its installed packages and this checkout's warm.py: the first part of every key."""
    site = [p for p in sys.path if p.endswith("site-packages")]
    stamp = [sys.executable, str(Path(__file__).resolve()), str(Path(__file__).stat().st_mtime_ns)]
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
    cap = max(1, int(env.get("FTS_WARM_MAX_SERVERS") or MAX_SERVERS))
    while servers() >= cap and _retire_oldest():
        pass
    with open(p[2], "ab") as logf:
        proc = subprocess.Popen(  # noqa: S603 - this file, as a script, no shell
            [sys.executable, str(Path(__file__).resolve()), "--serve", str(p[0]), str(p[1])],
            cwd=str(REPO_ROOT), env=server_environment(env), stdin=subprocess.DEVNULL, stdout=logf,
            stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)
    import threading

    threading.Thread(target=proc.wait, daemon=True, name="warm-worker-reaper").start()
    return True


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


def spawn(argv: list[str], env: dict, cwd: str, timeout_s: float = 10.0) -> WarmChild | None:
    """Start ``argv`` (``python -m core.…``) from this environment's server, or None (start it cold)."""
    if not enabled(env) or len(argv) < 3 or argv[0] != sys.executable or argv[1] != "-m" \
            or not argv[2].startswith(MODULE_PREFIX):
        return None
    p = _paths(env)
    if p is None or not p[0].exists():
        return None
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.settimeout(2)
        s.connect(str(p[0]))
        s.settimeout(None)
        with open(os.devnull, "rb") as devnull:
            _send(s, {"op": "run", "argv": argv[1:], "cwd": cwd, "env": dict(env)},
                  [devnull.fileno(), sys.stdout.fileno(), sys.stderr.fileno()])
        answer = _read_line(s, timeout_s)
        pid = int(answer["pid"])
    except (OSError, ValueError, KeyError, TypeError, TimeoutError, ConnectionError):
        s.close()
        return None
    return WarmChild(s, pid)


# ---------------------------------------------------------------------------------------------------- server side

def _preload() -> None:
    import importlib

    for module, names in PRELOAD:
        try:
            m = importlib.import_module(module)
            for name in names:
                getattr(m, name)
        except Exception as exc:  # noqa: BLE001 - what does not import here imports in the worker
            print(f"warm worker: could not preload {module}: {type(exc).__name__}: {exc}", flush=True)


def _peer_uid(conn: socket.socket) -> int:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]


def _receive(conn: socket.socket) -> tuple[dict, list[int]]:
    conn.settimeout(5)
    data, fds, _flags, _addr = socket.recv_fds(conn, 65536, 3)
    if len(data) < 4:
        raise ValueError("short request")
    (size,) = struct.unpack("!I", data[:4])
    if size > REQUEST_LIMIT:
        raise ValueError("request too large")
    data = data[4:]
    while len(data) < size:
        chunk = conn.recv(min(65536, size - len(data)))
        if not chunk:
            raise ValueError("short request")
        data += chunk
    return json.loads(data[:size]), list(fds)


def _valid_run(req: dict) -> bool:
    argv, env, cwd = req.get("argv"), req.get("env"), req.get("cwd")
    return (isinstance(argv, list) and len(argv) >= 2 and all(isinstance(a, str) for a in argv) and argv[0] == "-m"
            and argv[1].startswith(MODULE_PREFIX) and all(part.isidentifier() for part in argv[1].split("."))
            and isinstance(cwd, str) and isinstance(env, dict)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()))


def _exit_status(status: int) -> int:
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def serve(sock_path: str, lock_path: str) -> int:
    import fcntl
    import gc

    lock_fd = os.open(lock_path, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return 0  # another server for this environment started first
    os.ftruncate(lock_fd, 0)
    os.write(lock_fd, str(os.getpid()).encode())  # whom to ask to stop, even while it is still importing
    started = time.monotonic()
    _preload()
    gc.collect()
    gc.freeze()  # the imported objects stay out of the collector's way: fewer pages copied in each worker
    with contextlib.suppress(FileNotFoundError):
        os.unlink(sock_path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        listener.bind(sock_path)
    finally:
        os.umask(old_umask)
    listener.listen(16)
    sock_ino = os.stat(sock_path).st_ino
    idle_s = float(os.environ.get("FTS_WARM_IDLE_MIN", "30") or 30) * 60
    print(f"warm worker {os.getpid()}: ready in {time.monotonic() - started:.1f} s at {sock_path}", flush=True)
    closing = False
    retired = False

    def retire() -> None:
        """Stop answering at once: the socket and the lock go (a new server may start for this environment now);
        the workers already forked keep running and their endings still reach their supervisors."""
        nonlocal retired
        if retired:
            return
        retired = True
        listener.close()
        with contextlib.suppress(OSError):
            if os.stat(sock_path).st_ino == sock_ino:  # ours, not a newer server's
                os.unlink(sock_path)
        with contextlib.suppress(OSError):
            fcntl.flock(lock_fd, fcntl.LOCK_UN)
            os.close(lock_fd)

    def on_term(signum, frame):
        nonlocal closing
        closing = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    children: dict[int, socket.socket] = {}
    last = time.monotonic()
    try:
        while True:
            while children:  # reap: each ended worker's status goes to its supervisor
                try:
                    pid, status = os.waitpid(-1, os.WNOHANG)
                except ChildProcessError:
                    break
                if pid == 0:
                    break
                conn = children.pop(pid, None)
                if conn is not None:
                    with contextlib.suppress(OSError):
                        conn.sendall(json.dumps({"exit": _exit_status(status)}).encode() + b"\n")
                    conn.close()
                last = time.monotonic()
            if not children and not closing and time.monotonic() - last > idle_s:
                print(f"warm worker {os.getpid()}: idle for {idle_s / 60:g} min, exiting", flush=True)
                closing = True
            if closing:
                retire()
                if not children:
                    return 0
                time.sleep(0.1)
                continue
            try:
                ready = select.select([listener], [], [], 0.1)[0]
            except InterruptedError:
                continue
            if not ready:
                continue
            conn, _ = listener.accept()
            fds: list[int] = []
            try:
                if _peer_uid(conn) != os.getuid():
                    conn.close()
                    continue
                req, fds = _receive(conn)
                last = time.monotonic()
                op = req.get("op")
                if op == "ping":
                    conn.sendall(json.dumps({"ok": True, "pid": os.getpid()}).encode() + b"\n")
                    conn.close()
                elif op == "stop":
                    closing = True
                    conn.close()
                elif op == "run" and len(fds) == 3 and _valid_run(req):
                    sys.stdout.flush()
                    sys.stderr.flush()
                    pid = os.fork()
                    if pid == 0:
                        _become_worker(conn, listener, list(children.values()), fds, req)  # never returns
                    children[pid] = conn
                    conn.sendall(json.dumps({"pid": pid}).encode() + b"\n")
                else:
                    conn.close()
            except (OSError, ValueError, TypeError) as exc:
                print(f"warm worker: a request failed: {type(exc).__name__}: {exc}", flush=True)
                conn.close()
            finally:
                for fd in fds:
                    with contextlib.suppress(OSError):
                        os.close(fd)
    finally:
        retire()


def _become_worker(conn: socket.socket, listener: socket.socket, others: list[socket.socket], fds: list[int],
                   req: dict) -> None:
    """In the forked child: become ``python -m <module> <args>`` as the supervisor would have started it."""
    code = 1
    try:
        listener.close()
        for other in others:
            other.close()
        os.setsid()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for target, fd in zip((0, 1, 2), fds):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(req["cwd"])
        os.environ.clear()
        os.environ.update(req["env"])
        sys.path[0] = req["cwd"]  # as `python -m` puts the working directory first
        _reseed()
        _watch_supervisor(conn)
        module, args = req["argv"][1], req["argv"][2:]
        sys.argv = [module, *args]
        code = _run_module(module)
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _reseed() -> None:
    import random

    random.seed()
    with contextlib.suppress(Exception):
        import numpy

        numpy.random.seed(None)
    with contextlib.suppress(Exception):
        import torch

        torch.seed()


def _watch_supervisor(conn: socket.socket) -> None:
    import threading

    def watch() -> None:  # the supervisor sends nothing more: EOF means it is gone, and its worker goes too
        with contextlib.suppress(OSError):
            conn.settimeout(None)
            while conn.recv(4096):
                pass
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, daemon=True, name="warm-worker-watch").start()


def _run_module(module: str) -> int:
    import atexit
    import runpy
    import threading
    import traceback

    code = 0
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        if exc.code is None:
            code = 0
        elif isinstance(exc.code, int):
            code = exc.code
        else:
            print(exc.code, file=sys.stderr)
            code = 1
    except KeyboardInterrupt:
        traceback.print_exc()
        code = 128 + signal.SIGINT
    except BaseException:  # noqa: BLE001 - as the interpreter would: the traceback, exit status 1
        traceback.print_exc()
        code = 1
    with contextlib.suppress(Exception):
        threading._shutdown()
    with contextlib.suppress(Exception):
        atexit._run_exitfuncs()
    return code


if __name__ == "__main__":
    sys.path[0] = str(REPO_ROOT)  # as a cold worker's path starts (python -m from the repository), not core/runs/
    if len(sys.argv) == 4 and sys.argv[1] == "--serve":
        sys.exit(serve(sys.argv[2], sys.argv[3]))
    print("usage: python core/runs/warm.py --serve SOCKET LOCK (started by the studio)", file=sys.stderr)
    sys.exit(2)
