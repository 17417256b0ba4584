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

import os
import signal
import subprocess
import time
from pathlib import Path

from sqlmodel import select

from core.config import db_session, get_settings
from core.deploy.container_deployments import deploy_container, pull_line, refresh_container
from core.deploy.deployment_rows import (
    ACTIVE,
    STATUSES,
    DeployError,
    aware,
    get_row,
    log_tail,
    peek,
    reserved_ports,
    save_row,
    to_dict,
    update_row,
)
from core.deploy.serve_targets import resolve_target_model
from core.deploy.server_processes import (
    answers_health,
    free_port,
    is_our_server,
    loading_marker,
    port_is_free,
    reap_servers,
    server_argv,
    server_cmd_matches,
    server_env,
    signal_server,
    terminate,
    track,
    url_root,
)
from storage import Deployment
from storage.tables import utcnow

# the deployments API in one place: what the tabs, the CLI and the dashboard's start call (the rows, the targets, the
# local server processes and the containers live in their own modules)
__all__ = [
    "ACTIVE", "STATUSES", "DeployError", "deploy_container", "get", "list_deployments", "peek", "port_is_free",
    "pull_line", "reap_servers", "reconcile_on_start", "refresh", "resolve_target_model", "server_argv",
    "smoke_test", "snippets", "start_local", "stop", "to_dict", "wait_healthy",
]

DEFAULT_HEALTH_TIMEOUT_S = float(os.environ.get("FTS_SERVE_HEALTH_TIMEOUT_S", "300"))

SPAWN_GRACE_S = 30.0  # a row saved just before its process is spawned has no pid yet


def get(dep_id: int) -> Deployment:
    """The deployment, its processes checked first."""
    dep = get_row(dep_id)
    return refresh(dep) if dep.status in ACTIVE else dep


def list_deployments(active_only: bool = False) -> list[Deployment]:
    with db_session() as s:
        rows = list(s.exec(select(Deployment).order_by(Deployment.id.desc())).all())
    rows = [refresh(d) if d.status in ACTIVE else d for d in rows]
    return [d for d in rows if d.status in ACTIVE] if active_only else rows


def start_local(model_ref: str = "default", *, port: int | None = None, created_by: str = "anonymous",
                wait: bool = True, timeout_s: float | None = None) -> Deployment:
    """Start a local OpenAI-compatible server for a model; with ``wait``, until it is healthy (or failed)."""
    run_id, model_dir, name, needs_merge = resolve_target_model(model_ref)
    if port is not None:
        if not 1 <= int(port) <= 65535:
            raise DeployError(f"port must be between 1 and 65535 (got {port})")
        if int(port) in reserved_ports() or not port_is_free(int(port)):
            raise DeployError(f"port {port} is in use on 127.0.0.1: pick another port or leave it empty for a free one")
    host = "127.0.0.1"
    port = int(port) if port is not None else free_port(host)
    dep = save_row(Deployment(run_id=run_id, target="local", model_ref=model_ref, model_dir=model_dir, served_name=name,
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
                                    cwd=str(Path(__file__).resolve().parents[2]), env=server_env())
    except OSError as exc:
        return update_row(dep.id, status="failed", error=f"could not start the server process: {exc}",
                          log_path=str(log_path), args=argv, stopped_at=utcnow())
    track(proc)
    dep = update_row(dep.id, pid=proc.pid, log_path=str(log_path), args=argv)
    if wait:
        dep = wait_healthy(dep.id, proc=proc)
    return dep


def wait_healthy(dep_id: int, *, proc: subprocess.Popen | None = None) -> Deployment:
    """Poll until the server answers /health (running), dies (failed, log tail) or its health timeout passes
    (stopped and failed); the timeout is the row's and runs from the start of loading (see :func:`refresh`)."""
    while True:
        dep = get_row(dep_id)
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
        return refresh_container(dep)
    if proc is not None:
        proc.poll()  # reap our own child so a dead server is not a zombie that looks alive
    now = utcnow()
    if dep.pid is None and dep.status == "starting":
        if (now - aware(dep.created_at)).total_seconds() < SPAWN_GRACE_S:
            return dep  # being spawned right now
    if not is_our_server(dep.pid, dep.id):
        if dep.status == "stopping":  # a stop that did not get to write its ending
            return update_row(dep.id, expect=("stopping",), status="stopped", stopped_at=now)
        was = dep.status
        status = "dead" if was == "running" else "failed"
        why = ("the server process is gone (killed or crashed)" if was == "running"
               else "the server process exited before it became healthy")
        return update_row(dep.id, expect=(was,), status=status, stopped_at=now,
                          error=f"{why}.\n--- log tail ---\n{log_tail(dep)}")
    if dep.status == "starting":
        if answers_health(url_root(dep)):
            return update_row(dep.id, expect=("starting",), status="running")
        marker = loading_marker(dep.id)
        timeout_s = dep.health_timeout_s if dep.health_timeout_s is not None else DEFAULT_HEALTH_TIMEOUT_S
        if marker.exists() and time.time() - marker.stat().st_mtime > timeout_s:
            moved = update_row(dep.id, expect=("starting",), status="stopping")
            if moved.status != "stopping":
                return moved
            terminate(moved)
            return update_row(dep.id, expect=("stopping",), status="failed", stopped_at=utcnow(),
                              error=f"the server did not answer /health within {timeout_s:.0f}s of loading the model "
                                    "(FTS_SERVE_HEALTH_TIMEOUT_S); it was stopped.\n--- log tail ---\n"
                                    f"{log_tail(dep)}")
    return dep


def stop(dep_id: int) -> Deployment:
    """Stop a deployment's server (or container). Returns when it is gone and its port is free; if it cannot be
    stopped, the row keeps its status and DeployError says why."""
    dep = get_row(dep_id)
    if dep.status not in (*ACTIVE, "planned"):
        return dep
    was = dep.status
    dep = update_row(dep.id, expect=(was,), status="stopping")
    if dep.status != "stopping":  # something else decided first (it died, another stop): report that
        return dep
    if dep.target == "local":
        if not terminate(dep):
            update_row(dep.id, expect=("stopping",), status=was)
            raise DeployError(f"deployment {dep.id}: process {dep.pid} could not be stopped (permission denied)")
        if dep.port:
            for _ in range(50):
                if port_is_free(dep.port, dep.host or "127.0.0.1"):
                    break
                time.sleep(0.1)
            else:
                update_row(dep.id, expect=("stopping",), status="stopped", stopped_at=utcnow(),
                           error=f"the server stopped, but port {dep.port} is still taken by another process")
                raise DeployError(f"deployment {dep.id} stopped, but port {dep.port} is still in use by another "
                                  "process")
    elif dep.container_id:
        from core.deploy.docker_engine import stop_container
        from core.estimate.serving import LaunchError

        try:
            stop_container(dep.container_id)
        except LaunchError as exc:
            update_row(dep.id, expect=("stopping",), status=was, error=str(exc))
            raise DeployError(str(exc)) from None
    return update_row(dep.id, expect=("stopping",), status="stopped", stopped_at=utcnow())


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
        if not server_cmd_matches(cmd, None):
            continue
        try:
            dep_id = int(cmd[cmd.index("--deployment-id") + 1])
        except ValueError:
            continue
        if dep_id in active:
            continue
        try:
            signal_server(proc.pid, signal.SIGTERM)
            orphans.append(dep_id)
        except PermissionError:
            pass
    return {"marked": marked, "orphans_stopped": orphans}


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
