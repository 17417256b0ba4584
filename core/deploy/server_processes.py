"""The local server processes the studio starts (``python -m core.deploy.local_server``): a free port, their argument
list, whether a pid is one of them (of this workspace, of that deployment), signals to their process group, and
collecting the exit status of the ones this process started. Also the ``/health`` probe every endpoint answers."""
from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from core.config import get_settings
from core.deploy.deployment_rows import DeployError, reserved_ports
from storage import Deployment

SERVER_MODULE = "core.deploy.local_server"

STOP_TIMEOUT_S = 15.0


# server processes this process started, by pid: their exit status is collected once they end (reap_servers), so a
# stopped or dead server does not stay a <defunct> child of the dashboard until it exits
_SERVERS: dict[int, subprocess.Popen] = {}
_SERVERS_LOCK = threading.Lock()


def reap_servers() -> list[int]:
    """Collect the exit status of the local servers started here that have ended. Returns the pids reaped."""
    with _SERVERS_LOCK:
        ended = [pid for pid, proc in _SERVERS.items() if proc.poll() is not None]
        for pid in ended:
            del _SERVERS[pid]
    return ended


def track(proc: subprocess.Popen) -> None:
    """Remember a server process started here, so that :func:`reap_servers` collects its exit status."""
    with _SERVERS_LOCK:
        _SERVERS[proc.pid] = proc


def free_port(host: str = "127.0.0.1") -> int:
    reserved = reserved_ports()
    for _ in range(50):
        with socket.socket() as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        if port not in reserved:
            return port
    raise DeployError("no free port found on 127.0.0.1")


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def server_argv(model_dir: str, name: str, port: int | str, host: str = "127.0.0.1", *, dep_id: int | str | None = None,
                merge_run: int | None = None) -> list[str]:
    """The local server's argument list (``--merge-run``: merge that run into ``model_dir`` first)."""
    argv = [sys.executable, "-m", SERVER_MODULE, "--model", model_dir, "--name", name, "--port", str(port),
            "--host", host]
    if dep_id is not None:
        argv += ["--deployment-id", str(dep_id), "--workspace", str(get_settings().workspace)]
    if merge_run is not None:
        argv += ["--merge-run", str(merge_run)]
    return argv


def loading_marker(dep_id: int) -> Path:
    """Touched by the server process when it starts loading the model (after any merge): the health timeout runs
    from here, so a long merge is not cut short."""
    return get_settings().workspace / "deployments" / f"{dep_id}.loading"


def is_our_server(pid: int | None, dep_id: int | None = None) -> bool:
    """The pid is alive and is a local server process of this workspace (of that deployment, when given)."""
    if not pid:
        return False
    reap_servers()  # an ended server of ours is collected here, not left a zombie
    import psutil

    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        cmd = proc.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False
    return server_cmd_matches(cmd, dep_id)


def server_cmd_matches(cmd: list[str], dep_id: int | None) -> bool:
    if SERVER_MODULE not in cmd:
        return False
    try:
        ws = cmd[cmd.index("--workspace") + 1]
        dep = cmd[cmd.index("--deployment-id") + 1]
    except (ValueError, IndexError):
        return False
    return ws == str(get_settings().workspace) and (dep_id is None or dep == str(dep_id))


def answers_health(url_root: str, timeout_s: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url_root + "/health", timeout=timeout_s) as r:  # noqa: S310 - http://127.0.0.1:<port> of a server the studio started
            return r.status == 200
    except (OSError, http.client.HTTPException, ValueError):  # refused, reset, or something not HTTP on the port
        return False


def url_root(dep: Deployment) -> str:
    return dep.url.removesuffix("/v1")


def server_env() -> dict[str, str]:
    from core.runs.backends import job_environment

    return job_environment()


def signal_server(pid: int, sig: int) -> None:
    """The server's process group (it leads one: started with start_new_session), else the process alone."""
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass


def terminate(dep: Deployment) -> bool:
    """SIGTERM, then SIGKILL after STOP_TIMEOUT_S. Returns whether the process is gone."""
    if not is_our_server(dep.pid, dep.id):
        return True
    try:
        signal_server(dep.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while time.monotonic() < deadline and is_our_server(dep.pid, dep.id):
            time.sleep(0.1)
        if is_our_server(dep.pid, dep.id):
            signal_server(dep.pid, signal.SIGKILL)
            for _ in range(50):
                if not is_our_server(dep.pid, dep.id):
                    break
                time.sleep(0.1)
    except PermissionError:
        return False
    return not is_our_server(dep.pid, dep.id)
