"""Deployments: serving endpoints the studio starts, watches, smoke-tests and stops — each one a ``deployments`` row.

* ``local``: ``transformers serve`` pinned to the merged model (core.deploy.local_server) as a process in its own
  process group on a free loopback port. A training run that has no merged folder yet is merged by that process
  first (never by the dashboard). Status: ``starting`` until ``/health`` answers, then ``running``.
* ``tgi`` / ``vllm``: the exact ``docker run`` argument list (core.deploy.containers). Where a Docker engine answers,
  the container is started with the docker SDK and watched; where none does, the row is ``planned`` and holds the
  command to run on a GPU host.

Every read (:func:`list_deployments`, :func:`get`) checks the processes behind active rows first, so a server that
died is ``dead`` (was running) or ``failed`` (never became healthy) with its log tail, with or without a dashboard.
:func:`reconcile_on_start` also stops orphans: server processes of this workspace whose row is no longer active.
Stopping frees the port.
"""
from __future__ import annotations

import http.client
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from sqlalchemy import update
from sqlmodel import select

from core.config import db_session, get_settings
from core.runs.errors import JobError
from storage import Deployment
from storage.tables import utcnow

ACTIVE = ("starting", "running", "stopping")
STATUSES = ("starting", "running", "stopping", "stopped", "failed", "dead", "planned")
SERVER_MODULE = "core.deploy.local_server"
DEFAULT_HEALTH_TIMEOUT_S = float(os.environ.get("FTS_SERVE_HEALTH_TIMEOUT_S", "300"))
STOP_TIMEOUT_S = 15.0
SPAWN_GRACE_S = 30.0  # a row saved just before its process is spawned has no pid yet


class DeployError(JobError):
    """A deployment that cannot be made as asked; the message says why and what to do."""


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


# ---- rows ------------------------------------------------------------------------------------------------------------

def _save(dep: Deployment) -> Deployment:
    dep.updated_at = utcnow()
    if dep.error:
        from core.secrets import redact

        dep.error = redact(dep.error)
    with db_session() as s:
        s.add(dep)
        s.flush()
        s.refresh(dep)
        return dep


def _update(dep_id: int, *, expect: tuple[str, ...] | None = None, **fields) -> Deployment:
    """Change a row; with ``expect``, only while its status is one of those (compare-and-set: a reader that decided
    from a stale status — a tick racing a stop, two dashboards — changes nothing). Returns the row as stored."""
    fields["updated_at"] = utcnow()
    if fields.get("error"):
        from core.secrets import redact

        fields["error"] = redact(fields["error"])
    with db_session() as s:
        q = update(Deployment).where(Deployment.id == dep_id)
        if expect is not None:
            q = q.where(Deployment.status.in_(list(expect)))
        s.exec(q.values(**fields))
    return _get_row(dep_id)


def _get_row(dep_id: int) -> Deployment:
    with db_session() as s:
        dep = s.get(Deployment, int(dep_id))
    if dep is None:
        raise DeployError(f"deployment {dep_id} not found")
    return dep


def peek(dep_id: int) -> Deployment:
    """The row as stored, without checking its process (to see what a check then changes)."""
    return _get_row(dep_id)


def get(dep_id: int) -> Deployment:
    """The deployment, its processes checked first."""
    dep = _get_row(dep_id)
    return refresh(dep) if dep.status in ACTIVE else dep


def list_deployments(active_only: bool = False) -> list[Deployment]:
    with db_session() as s:
        rows = list(s.exec(select(Deployment).order_by(Deployment.id.desc())).all())
    rows = [refresh(d) if d.status in ACTIVE else d for d in rows]
    return [d for d in rows if d.status in ACTIVE] if active_only else rows


def to_dict(dep: Deployment) -> dict:
    return {"id": dep.id, "run_id": dep.run_id, "target": dep.target, "model": dep.model_ref,
            "model_dir": dep.model_dir, "served_name": dep.served_name, "url": dep.url, "port": dep.port,
            "status": dep.status, "pid": dep.pid, "container_id": dep.container_id, "error": dep.error,
            "args": dep.args, "created_by": dep.created_by, "log_path": dep.log_path,
            "created_at": dep.created_at.strftime("%Y-%m-%dT%H:%M:%SZ") if dep.created_at else None}


# ---- what to serve ---------------------------------------------------------------------------------------------------

def resolve_target_model(model_ref: str) -> tuple[int | None, str, str, bool]:
    """(run id, model folder, served name, needs a merge first) for "run:7" / "7" / "default" / a model folder."""
    from core.deploy.export import _fresh, merged_dir, trained_run
    from core.models import ModelNotFoundError, resolve_model

    ref = (model_ref or "").strip() or "default"
    digits = ref.split(":", 1)[-1].lstrip("#") if ref.lower().startswith(("run:", "#")) else ref
    if digits.isdigit():
        run = trained_run(int(digits))
        slug = "".join(c if c.isalnum() or c in "-_." else "-" for c in (run.name or "")).strip("-") or "model"
        name = slug if re.match(rf"run-{run.id}(\D|$)", slug) else f"run-{run.id}-{slug}"
        if run.method == "full":
            return run.id, run.adapter_path, name, False
        target = merged_dir(run.id)
        return run.id, str(target), name, not _fresh(target, Path(run.adapter_path))
    try:
        resolved = resolve_model(ref)
    except ModelNotFoundError as exc:
        raise DeployError(str(exc)) from None
    if not Path(resolved.path).is_dir():
        raise DeployError(f"{ref} is not a local model folder; the local server serves folders (download it first)")
    name = Path(resolved.path).name if resolved.kind != "default" else "smollm2-135m-instruct"
    return None, resolved.path, name, False


# ---- local server processes ------------------------------------------------------------------------------------------

def _reserved_ports() -> set[int]:
    """Ports of active rows: a server still merging or loading has not bound its port yet."""
    with db_session() as s:
        rows = s.exec(select(Deployment.port).where(Deployment.status.in_(list(ACTIVE)))).all()
    return {int(p) for p in rows if p}


def free_port(host: str = "127.0.0.1") -> int:
    reserved = _reserved_ports()
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


def _is_our_server(pid: int | None, dep_id: int | None = None) -> bool:
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
    return _server_cmd_matches(cmd, dep_id)


def _server_cmd_matches(cmd: list[str], dep_id: int | None) -> bool:
    if SERVER_MODULE not in cmd:
        return False
    try:
        ws = cmd[cmd.index("--workspace") + 1]
        dep = cmd[cmd.index("--deployment-id") + 1]
    except (ValueError, IndexError):
        return False
    return ws == str(get_settings().workspace) and (dep_id is None or dep == str(dep_id))


def _health(url_root: str, timeout_s: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url_root + "/health", timeout=timeout_s) as r:  # noqa: S310 - http://127.0.0.1:<port> of a server the studio started
            return r.status == 200
    except (OSError, http.client.HTTPException, ValueError):  # refused, reset, or something not HTTP on the port
        return False


def _root(dep: Deployment) -> str:
    return dep.url.removesuffix("/v1")


def _log_tail(dep: Deployment, lines: int = 20) -> str:
    from core.runs.paths import file_tail

    return file_tail(Path(dep.log_path), max_lines=lines) if dep.log_path else ""


def start_local(model_ref: str = "default", *, port: int | None = None, created_by: str = "anonymous",
                wait: bool = True, timeout_s: float | None = None) -> Deployment:
    """Start a local OpenAI-compatible server for a model; with ``wait``, until it is healthy (or failed)."""
    run_id, model_dir, name, needs_merge = resolve_target_model(model_ref)
    if port is not None:
        if not 1 <= int(port) <= 65535:
            raise DeployError(f"port must be between 1 and 65535 (got {port})")
        if int(port) in _reserved_ports() or not port_is_free(int(port)):
            raise DeployError(f"port {port} is in use on 127.0.0.1: pick another port or leave it empty for a free one")
    host = "127.0.0.1"
    port = int(port) if port is not None else free_port(host)
    dep = _save(Deployment(run_id=run_id, target="local", model_ref=model_ref, model_dir=model_dir, served_name=name,
                           host=host, port=port, url=f"http://{host}:{port}/v1", status="starting",
                           created_by=created_by or "anonymous",
                           health_timeout_s=DEFAULT_HEALTH_TIMEOUT_S if timeout_s is None else float(timeout_s)))
    log_dir = get_settings().workspace / "deployments"
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{dep.id}.log"
    argv = server_argv(model_dir, name, port, host, dep_id=dep.id, merge_run=run_id if needs_merge else None)
    try:
        with open(log_path, "ab") as log:
            # argv is the studio's own list (server_argv: fixed program, checked values), never a shell line
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,  # noqa: S603
                                    stdin=subprocess.DEVNULL, start_new_session=True,
                                    cwd=str(Path(__file__).resolve().parents[2]), env=_server_env())
    except OSError as exc:
        return _update(dep.id, status="failed", error=f"could not start the server process: {exc}",
                       log_path=str(log_path), args=argv, stopped_at=utcnow())
    with _SERVERS_LOCK:
        _SERVERS[proc.pid] = proc
    dep = _update(dep.id, pid=proc.pid, log_path=str(log_path), args=argv)
    if wait:
        dep = wait_healthy(dep.id, proc=proc)
    return dep


def _server_env() -> dict[str, str]:
    from core.runs.backends import job_environment

    return job_environment()


def wait_healthy(dep_id: int, *, proc: subprocess.Popen | None = None) -> Deployment:
    """Poll until the server answers /health (running), dies (failed, log tail) or its health timeout passes
    (stopped and failed); the timeout is the row's and runs from the start of loading (see :func:`refresh`)."""
    while True:
        dep = _get_row(dep_id)
        if dep.status != "starting":
            return dep
        dep = refresh(dep, proc=proc)
        if dep.status != "starting":
            return dep
        time.sleep(0.5)


def refresh(dep: Deployment, proc: subprocess.Popen | None = None) -> Deployment:
    """Check an active deployment's process (or container) and its health; record what changed, compare-and-set on
    the status this was decided from."""
    if dep.target != "local":
        return _refresh_container(dep)
    if proc is not None:
        proc.poll()  # reap our own child so a dead server is not a zombie that looks alive
    now = utcnow()
    if dep.pid is None and dep.status == "starting":
        if (now - _aware(dep.created_at)).total_seconds() < SPAWN_GRACE_S:
            return dep  # being spawned right now
    if not _is_our_server(dep.pid, dep.id):
        if dep.status == "stopping":  # a stop that did not get to write its ending
            return _update(dep.id, expect=("stopping",), status="stopped", stopped_at=now)
        was = dep.status
        status = "dead" if was == "running" else "failed"
        why = ("the server process is gone (killed or crashed)" if was == "running"
               else "the server process exited before it became healthy")
        return _update(dep.id, expect=(was,), status=status, stopped_at=now,
                       error=f"{why}.\n--- log tail ---\n{_log_tail(dep)}")
    if dep.status == "starting":
        if _health(_root(dep)):
            return _update(dep.id, expect=("starting",), status="running")
        marker = loading_marker(dep.id)
        timeout_s = dep.health_timeout_s if dep.health_timeout_s is not None else DEFAULT_HEALTH_TIMEOUT_S
        if marker.exists() and time.time() - marker.stat().st_mtime > timeout_s:
            moved = _update(dep.id, expect=("starting",), status="stopping")
            if moved.status != "stopping":
                return moved
            _terminate(moved)
            return _update(dep.id, expect=("stopping",), status="failed", stopped_at=utcnow(),
                           error=f"the server did not answer /health within {timeout_s:.0f}s of loading the model "
                                 "(FTS_SERVE_HEALTH_TIMEOUT_S); it was stopped.\n--- log tail ---\n"
                                 f"{_log_tail(dep)}")
    return dep


def _signal(pid: int, sig: int) -> None:
    """The server's process group (it leads one: started with start_new_session), else the process alone."""
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _terminate(dep: Deployment) -> bool:
    """SIGTERM, then SIGKILL after STOP_TIMEOUT_S. Returns whether the process is gone."""
    if not _is_our_server(dep.pid, dep.id):
        return True
    try:
        _signal(dep.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while time.monotonic() < deadline and _is_our_server(dep.pid, dep.id):
            time.sleep(0.1)
        if _is_our_server(dep.pid, dep.id):
            _signal(dep.pid, signal.SIGKILL)
            for _ in range(50):
                if not _is_our_server(dep.pid, dep.id):
                    break
                time.sleep(0.1)
    except PermissionError:
        return False
    return not _is_our_server(dep.pid, dep.id)


def stop(dep_id: int) -> Deployment:
    """Stop a deployment's server (or container). Returns when it is gone and its port is free; if it cannot be
    stopped, the row keeps its status and DeployError says why."""
    dep = _get_row(dep_id)
    if dep.status not in (*ACTIVE, "planned"):
        return dep
    was = dep.status
    dep = _update(dep.id, expect=(was,), status="stopping")
    if dep.status != "stopping":  # something else decided first (it died, another stop): report that
        return dep
    if dep.target == "local":
        if not _terminate(dep):
            _update(dep.id, expect=("stopping",), status=was)
            raise DeployError(f"deployment {dep.id}: process {dep.pid} could not be stopped (permission denied)")
        if dep.port:
            for _ in range(50):
                if port_is_free(dep.port, dep.host or "127.0.0.1"):
                    break
                time.sleep(0.1)
            else:
                _update(dep.id, expect=("stopping",), status="stopped", stopped_at=utcnow(),
                        error=f"the server stopped, but port {dep.port} is still taken by another process")
                raise DeployError(f"deployment {dep.id} stopped, but port {dep.port} is still in use by another "
                                  "process")
    elif dep.container_id:
        from core.deploy.docker_engine import stop_container
        from core.estimate.serving import LaunchError

        try:
            stop_container(dep.container_id)
        except LaunchError as exc:
            _update(dep.id, expect=("stopping",), status=was, error=str(exc))
            raise DeployError(str(exc)) from None
    return _update(dep.id, expect=("stopping",), status="stopped", stopped_at=utcnow())


def reconcile_on_start() -> dict[str, list[int]]:
    """On the studio's start: active rows whose process is gone are marked; server processes of this workspace whose
    row is not active (or missing) are stopped — no orphans hold ports."""
    import psutil

    with db_session() as s:
        before = {d.id: d.status for d in s.exec(select(Deployment).where(Deployment.status.in_(list(ACTIVE))))}
    after = {d.id: d.status for d in list_deployments()}
    marked = [i for i, st in before.items() if after.get(i) != st]
    active = {i for i, st in after.items() if st in ACTIVE}
    orphans = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmd = proc.info.get("cmdline") or []
        if not _server_cmd_matches(cmd, None):
            continue
        try:
            dep_id = int(cmd[cmd.index("--deployment-id") + 1])
        except ValueError:
            continue
        if dep_id in active:
            continue
        try:
            _signal(proc.pid, signal.SIGTERM)
            orphans.append(dep_id)
        except PermissionError:
            pass
    return {"marked": marked, "orphans_stopped": orphans}


def _aware(dt):
    from storage.tables import as_utc

    return as_utc(dt)


# ---- containers (TGI / vLLM) -----------------------------------------------------------------------------------------

def _refresh_container(dep: Deployment) -> Deployment:
    from core.deploy.docker_engine import container_status

    if not dep.container_id:
        if dep.status == "starting" and dep.log_path:  # pulling: its launcher writes progress as it goes
            path = Path(dep.log_path)
            since = time.time() - (path.stat().st_mtime if path.exists() else _aware(dep.created_at).timestamp())
            if since > PULL_STALE_S:
                return _update(dep.id, expect=("starting",), status="failed", url="", stopped_at=utcnow(),
                               error=f"the image pull stopped: no progress for {since:.0f} s (the dashboard that "
                                     "pulled it stopped?); deploy again")
        return dep
    state = container_status(dep.container_id)
    if state is None:  # no engine to ask: keep what we knew
        return dep
    if dep.status == "stopping":
        return dep
    if state != "running":
        return _update(dep.id, expect=(dep.status,), status="dead" if dep.status == "running" else "failed",
                       stopped_at=utcnow(), error=f"container {dep.container_id[:12]} is {state}")
    if dep.status == "starting" and _health(_root(dep)):
        return _update(dep.id, expect=("starting",), status="running")
    return dep


def deploy_container(model_ref: str, target: str, *, gpu: str | None = None, port: int | None = None,
                     num_gpus: int = 1, quantize_4bit: bool = False, keep_adapter: bool = False,
                     created_by: str = "anonymous", dry_run: bool = False, wait: bool = True) -> dict:
    """TGI or vLLM for a run or a model folder: the exact argument list, sized for the GPU; launched where a Docker
    engine answers, else a ``planned`` row with the command to run on a GPU host. Returns
    ``{"deployment": row dict or None, "args": [...], "command": str, "sizing": {...}, "engine": reason or ""}``.

    Launching pulls the image first when the engine lacks it (TGI is ~10 GB): the row is ``starting`` with no URL
    meanwhile and the pull's progress goes to its log (:func:`pull_line`). ``wait``: return when the container is
    started (or the launch failed); else at once, the pull and the start going on in a thread of this process."""
    from core.deploy.containers import ServeSpec, docker_command_text, tgi_docker_args, vllm_docker_args
    from core.deploy.docker_engine import docker_engine
    from core.estimate.serving import LaunchError, size_for_gpu

    if target not in ("tgi", "vllm"):
        raise DeployError(f"target must be local, tgi or vllm (got '{target}')")
    run_id, model_dir, name, needs_merge = resolve_target_model(model_ref)
    adapters: tuple[tuple[str, str], ...] = ()
    serve_dir = model_dir
    if keep_adapter and run_id is not None:
        from core.deploy.export import trained_run
        from core.models import resolve_model

        run = trained_run(run_id)
        if run.method == "full":
            raise DeployError(f"run {run_id} is a full fine-tune: there is no adapter to serve separately")
        serve_dir = resolve_model(run.base_model or "default").path
        adapters = ((name, run.adapter_path),)
        needs_merge = False
    port = int(port or 8080)
    try:
        sizing = size_for_gpu(serve_dir if not needs_merge else _base_dir_of(run_id), gpu, num_gpus, quantize_4bit)
        spec = ServeSpec(model_dir=serve_dir, served_name=name, port=port, gpu=gpu, num_gpus=num_gpus,
                         max_input_tokens=sizing.get("max_input_tokens"),
                         max_total_tokens=sizing.get("max_total_tokens"), quantize_4bit=quantize_4bit,
                         lora_adapters=adapters)
        args = tgi_docker_args(spec) if target == "tgi" else vllm_docker_args(spec)
    except LaunchError as exc:
        raise DeployError(str(exc)) from None
    out = {"args": args, "command": docker_command_text(args), "sizing": sizing, "deployment": None, "engine": "",
           "needs_merge": needs_merge, "model_dir": serve_dir}
    if needs_merge:
        out["engine"] = (f"run {run_id} has no merged model yet: export it (safetensors) first, then start "
                         f"the container; the command above mounts {serve_dir}")
    if dry_run:
        return out
    from core.space import in_space

    if in_space():
        client, reason = None, ("this Space serves through the local server only: run the command above on a GPU "
                                "host with Docker")
    else:
        client, reason = (None, out["engine"]) if needs_merge else docker_engine()
    row = Deployment(run_id=run_id, target=target, model_ref=model_ref, model_dir=serve_dir, served_name=name,
                     host="127.0.0.1", port=port, url=f"http://127.0.0.1:{port}/v1", args=args,
                     created_by=created_by or "anonymous")
    if client is None:  # a plan: the URL is where the command will answer
        row.status, row.error = "planned", reason
        out["engine"] = reason
        out["deployment"] = to_dict(_save(row))
        return out
    row.status, row.url = "starting", ""  # no URL until a container answers on it
    dep = _save(row)
    log_path = get_settings().workspace / "deployments" / f"{dep.id}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    dep = _update(dep.id, log_path=str(log_path))
    if wait:
        dep = _launch(dep.id, spec, target)
    else:
        threading.Thread(target=_launch, args=(dep.id, spec, target), daemon=True,
                         name=f"fts-launch-{dep.id}").start()
    out["deployment"] = to_dict(dep)
    return out


PULL_STALE_S = float(os.environ.get("FTS_PULL_STALE_S", "600"))


def _launch(dep_id: int, spec, target: str) -> Deployment:
    """Pull (with progress in the row's log) and start a container for a ``starting`` row; the row becomes the
    container's (with its URL) or ``failed`` with one line of why — and no URL, since nothing answers there."""
    from core.deploy.docker_engine import launch_container, stop_container
    from core.estimate.serving import LaunchError

    dep = _get_row(dep_id)
    path = Path(dep.log_path)

    def note(line: str) -> None:
        try:
            with open(path, "a", encoding="utf-8") as f:
                f.write(f"[{time.strftime('%H:%M:%S')}] {line}\n")
        except OSError:
            pass

    def still_wanted() -> bool:
        return _get_row(dep_id).status == "starting"

    try:
        launched = launch_container(spec, target, on_progress=note, proceed=still_wanted)
    except LaunchError as exc:
        note(f"failed: {str(exc).splitlines()[0]}")
        if not still_wanted():  # stopped meanwhile: that is its ending
            return _get_row(dep_id)
        return _update(dep_id, expect=("starting",), status="failed", error=str(exc), url="", stopped_at=utcnow())
    except Exception as exc:  # noqa: BLE001 - a launch thread never dies silently: the row says why
        return _update(dep_id, expect=("starting",), status="failed", url="", stopped_at=utcnow(),
                       error=f"the launch failed: {type(exc).__name__}: {str(exc)[:300]}")
    note(f"container {launched['container_id'][:12]} started; waiting for /health at {launched['url']}")
    dep = _update(dep_id, expect=("starting",), container_id=launched["container_id"], url=launched.get("url") or "")
    if dep.container_id != launched["container_id"]:  # stopped while it was starting: stop what was started
        try:
            stop_container(launched["container_id"])
        except LaunchError:
            pass
    return dep


def pull_line(dep: Deployment) -> str:
    """The last thing a container row's launch wrote (the pull's progress), '' when none."""
    if dep.target == "local" or not dep.log_path:
        return ""
    lines = [ln for ln in _log_tail(dep, lines=3).splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def _base_dir_of(run_id: int | None) -> str:
    from core.deploy.export import trained_run
    from core.models import resolve_model

    return resolve_model(trained_run(run_id).base_model or "default").path


# ---- smoke test and hand-off -----------------------------------------------------------------------------------------

def smoke_test(dep_id: int, prompt: str = "Say hello in one short sentence.", max_tokens: int = 32,
               timeout_s: float = 120.0) -> dict:
    """One chat request through huggingface_hub.InferenceClient, plain and streaming: replies and latencies."""
    from huggingface_hub import InferenceClient

    dep = get(dep_id)
    if dep.status != "running":
        raise DeployError(f"deployment {dep_id} is {dep.status}, not running" +
                          (f": {dep.error.splitlines()[0]}" if dep.error else ""))
    client = InferenceClient(base_url=dep.url, timeout=timeout_s)
    messages = [{"role": "user", "content": prompt}]
    t0 = time.perf_counter()
    try:
        out = client.chat_completion(messages=messages, model=dep.served_name, max_tokens=max_tokens)
        reply = out.choices[0].message.content or ""
        plain_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        first, parts, stream_models = None, [], set()
        for chunk in client.chat_completion(messages=messages, model=dep.served_name, max_tokens=max_tokens,
                                            stream=True):
            stream_models.add(getattr(chunk, "model", None))
            delta = chunk.choices[0].delta.content if chunk.choices else None
            if delta:
                first = first if first is not None else time.perf_counter() - t1
                parts.append(delta)
        stream_s = time.perf_counter() - t1
    except Exception as exc:  # noqa: BLE001 - any client failure is the smoke test's answer, worded
        raise DeployError(f"the smoke request to {dep.url} failed: {type(exc).__name__}: {str(exc)[:300]}") from None
    # the model the endpoint says answered: clients match it with the name they sent and /v1/models lists
    return {"reply": reply, "latency_s": round(plain_s, 3), "model": getattr(out, "model", None),
            "stream_models": sorted(m for m in stream_models if m),
            "stream_reply": "".join(parts), "stream_chunks": len(parts),
            "stream_first_token_s": None if first is None else round(first, 3), "stream_s": round(stream_s, 3),
            "completion_tokens": getattr(out.usage, "completion_tokens", None) if out.usage else None}


def snippets(dep: Deployment) -> dict[str, str]:
    """Copy-paste clients for the endpoint: curl, huggingface_hub's InferenceClient, the openai SDK."""
    url, name = dep.url, dep.served_name
    return {
        "curl": (f"curl {url}/chat/completions -H 'Content-Type: application/json' \\\n"
                 f"  -d '{{\"model\": \"{name}\", \"messages\": [{{\"role\": \"user\", \"content\": \"Hello!\"}}], "
                 "\"max_tokens\": 64}'"),
        "python": ("from huggingface_hub import InferenceClient\n\n"
                   f"client = InferenceClient(base_url=\"{url}\")\n"
                   f"out = client.chat_completion(model=\"{name}\", messages=[{{\"role\": \"user\", "
                   "\"content\": \"Hello!\"}], max_tokens=64)\n"
                   "print(out.choices[0].message.content)"),
        "openai": ("from openai import OpenAI\n\n"
                   f"client = OpenAI(base_url=\"{url}\", api_key=\"not-needed\")\n"
                   f"out = client.chat.completions.create(model=\"{name}\", messages=[{{\"role\": \"user\", "
                   "\"content\": \"Hello!\"}], max_tokens=64)\n"
                   "print(out.choices[0].message.content)"),
    }
