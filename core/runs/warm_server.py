"""The warm worker's server (see core/runs/warm.py for how it fits the runs core): it imports the heavy libraries
once, then forks one job worker per request from the supervisor on its socket and reports each worker's exit status
(and forks a job's supervisor, detached, for the backend that starts the job).

It imports only the standard library and never the studio's own code (``core.*``): it runs as a script
(``python core/runs/warm_server.py --serve SOCKET LOCK``, started by :func:`core.runs.warm.ensure`), so that every
worker reads its settings and code fresh.
"""
from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import struct
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
REQUEST_LIMIT = 4 << 20
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

    while True:
        lock_fd = os.open(lock_path, os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(lock_fd)
            return 0  # another server for this environment started first
        try:
            if os.stat(lock_path).st_ino == os.fstat(lock_fd).st_ino:
                break  # the file at that path is the one locked (a stale one pruned meanwhile is not)
        except FileNotFoundError:
            pass
        os.close(lock_fd)
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
    children: dict[int, socket.socket | None] = {}  # forked pid -> whom to tell its exit status (None: nobody)
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
                    shown_r, shown_w = os.pipe()
                    pid = os.fork()
                    if pid == 0:
                        os.close(shown_r)
                        _become_worker(conn, [listener, *(c for c in children.values() if c)], lock_fd, fds,
                                       req, shown_w)  # never returns
                    os.close(shown_w)
                    # the pid goes out once the child shows its command line (or has ended): whoever asked may check
                    # at once which process it is (core.runs.backends.is_supervisor_of)
                    with contextlib.suppress(OSError):
                        select.select([shown_r], [], [], 5)
                    os.close(shown_r)
                    detach = req.get("detach") is True  # a job's supervisor: it outlives whoever asked for it
                    children[pid] = None if detach else conn  # reaped here even if the reply below fails
                    conn.sendall(json.dumps({"pid": pid}).encode() + b"\n")
                    if detach:
                        conn.close()
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


def _become_worker(conn: socket.socket, others: list[socket.socket], lock_fd: int, fds: list[int],
                   req: dict, shown: int) -> None:
    """In the forked child: become ``python -m <module> <args>`` as the supervisor (or, for a supervisor, the
    backend) would have started it. A detached child (a job's supervisor) outlives whoever asked for it; any other
    dies with it."""
    code = 1
    try:
        for other in others:  # the listener, the other workers' connections
            other.close()
        with contextlib.suppress(OSError):  # the lock stays the server's: this copy would hold it after the server ends
            os.close(lock_fd)
        _show_command([sys.executable, *req["argv"]])
        os.close(shown)  # the server may now tell our pid
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
        _reread_at_import()
        sys.path[0] = req["cwd"]  # as `python -m` puts the working directory first
        _reseed()
        if req.get("detach") is True:
            conn.close()
        else:
            _watch_supervisor(conn)
        module, args = req["argv"][1], req["argv"][2:]
        sys.argv = [module, *args]
        code = _run_module(module)
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _show_command(argv: list[str]) -> None:
    """Show the command this process now runs where ``ps``, ``top`` and ``/proc/<pid>/cmdline`` look (psutil, and
    the studio's own checks of which process is a job's: ``core.runs.backends.is_supervisor_of``), as a process
    started cold shows it: written over this process's own argument area (the kernel's ``arg_start``..``arg_end``,
    /proc/self/stat's fields 48 and 49), the rest of it zeroed. Only when it fits: the server's own command line
    (its interpreter, this script and two socket paths) is longer than a job's."""
    import ctypes

    try:
        with open("/proc/self/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()  # fields[0] is field 3
        start, end = int(fields[48 - 3]), int(fields[49 - 3])
        data = b"\0".join(a.encode() for a in argv) + b"\0"
        if start and end - start >= len(data):
            ctypes.memmove(start, data + b"\0" * (end - start - len(data)), end - start)
    except (OSError, ValueError, IndexError, UnicodeEncodeError):
        pass


def _reread_at_import() -> None:
    """What a preloaded library read from a variable at import that is not part of the server's key
    (core.runs.warm.VOLATILE), read again from the worker's own environment."""
    hub = sys.modules.get("huggingface_hub.constants")
    if hub is not None:
        names = ("HF_HUB_DISABLE_TELEMETRY", "DISABLE_TELEMETRY", "DO_NOT_TRACK")
        hub.HF_HUB_DISABLE_TELEMETRY = any(hub._is_true(os.environ.get(name)) for name in names)


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
    print("usage: python core/runs/warm_server.py --serve SOCKET LOCK (started by the studio)", file=sys.stderr)
    sys.exit(2)
