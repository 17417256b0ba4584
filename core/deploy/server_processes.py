"""Local servers' plumbing: a free port, the argument list of a server started by hand, the ``/health`` probe every
endpoint answers — and recognising a server process started by an earlier version of the studio (before servers
were ``serve`` jobs on the runs core), so one left running is still tracked and stopped."""
from __future__ import annotations

import http.client
import os
import sys
import urllib.request

from core.config import get_settings
from core.deploy.deployment_rows import DeployError, reserved_ports
from core.runs.ports import free_port as any_free_port
from storage import Deployment

SERVER_MODULE = "core.deploy.local_server"


def free_port(host: str = "127.0.0.1") -> int:
    """A free port that no deployment row has reserved either."""
    reserved = reserved_ports()
    for _ in range(50):
        port = any_free_port(host)
        if port not in reserved:
            return port
    raise DeployError("no free port found on 127.0.0.1")


def server_argv(model_dir: str, name: str, port: int | str, host: str = "127.0.0.1", *,
                merge_run: int | None = None) -> list[str]:
    """The command that serves a model as a local deployment does, by hand (``--merge-run``: merge that run into
    ``model_dir`` first); the studio runs the same server as a ``serve`` job (core.deploy.serve_job)."""
    argv = [sys.executable, "-m", SERVER_MODULE, "--model", model_dir, "--name", name, "--port", str(port),
            "--host", host]
    if merge_run is not None:
        argv += ["--merge-run", str(merge_run)]
    return argv


def answers_health(url_root: str, timeout_s: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url_root + "/health", timeout=timeout_s) as r:  # noqa: S310 - http://127.0.0.1:<port> of a server the studio started
            return r.status == 200
    except (OSError, http.client.HTTPException, ValueError):  # refused, reset, or something not HTTP on the port
        return False


def url_root(dep: Deployment) -> str:
    return dep.url.removesuffix("/v1")


# ---- servers of an earlier version: ``python -m core.deploy.local_server --deployment-id N --workspace W`` ---------

def server_cmd_matches(cmd: list[str], dep_id: int | None) -> bool:
    """The command line is an earlier version's server of this workspace (of that deployment, when given)."""
    if SERVER_MODULE not in cmd:
        return False
    try:
        ws = cmd[cmd.index("--workspace") + 1]
        dep = cmd[cmd.index("--deployment-id") + 1]
    except (ValueError, IndexError):
        return False
    return ws == str(get_settings().workspace) and dep.isdigit() and (dep_id is None or dep == str(dep_id))


def is_our_server(pid: int | None, dep_id: int | None = None) -> bool:
    """The pid is alive and is an earlier version's server process of this workspace (of that deployment)."""
    if not pid:
        return False
    import psutil

    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        cmd = proc.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False
    return server_cmd_matches(cmd, dep_id)


def signal_server(pid: int, sig: int) -> None:
    """The server's process group (it leads one: started with start_new_session), else the process alone."""
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass
