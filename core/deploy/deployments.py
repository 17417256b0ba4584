"""Deployments: serving endpoints the studio starts, watches, smoke-tests and stops — each one a ``deployments`` row.

* ``local``: ``transformers serve`` pinned to the merged model, on a free loopback port, run as a ``serve`` job on
  the runs core (core.deploy.local_deployments, core.deploy.serve_job): queued in a lane of its own
  (``FTS_MAX_SERVERS``), started, stopped, watched and reconciled like every other job. A training run that has no
  merged folder yet is merged by that job first (never by the dashboard). Status: ``starting`` until ``/health``
  answers, then ``running``.
* ``tgi`` / ``vllm`` / ``container``: the exact ``docker run`` argument list (core.deploy.containers; ``container``
  is the studio's own image running the local target's server on the CPU). Where a Docker engine answers, the
  container is started with the docker SDK on the host's network (the server on 127.0.0.1:PORT), watched, and on
  stop its output is kept in the row's log and the container removed; where none answers, the row is ``planned``
  and holds the command to run on a GPU host.

Every read (:func:`list_deployments`, :func:`get`) checks what is behind active rows first (a local row's job, a
container), so a server that died is ``dead`` (was running) or ``failed`` (never became healthy) with its log tail,
with or without a dashboard. Stopping frees the port. Deleting a deployment deletes its serve job (and deleting a
training run deletes the serve jobs made from it, and their rows): one path, the runs core's.
"""
from __future__ import annotations

import time

from sqlmodel import select

from core.config import db_session
from core.deploy.container_deployments import (
    container_log,
    deploy_container,
    keep_log_of,
    pull_line,
    reap_orphan_containers,
    refresh_container,
)
from core.deploy.deployment_rows import (
    ACTIVE,
    STATUSES,
    DeployError,
    delete_row,
    get_row,
    peek,
    to_dict,
    update_row,
)
from core.deploy.local_deployments import (
    DEFAULT_HEALTH_TIMEOUT_S,
    refresh_local,
    start_local,
    stop_local,
    stop_orphans,
    wait_healthy,
)
from core.deploy.serve_targets import resolve_target_model
from core.deploy.server_processes import server_argv
from core.runs.ports import port_is_free
from storage import Deployment
from storage.tables import utcnow

# the deployments API in one place: what the tabs, the CLI and the dashboard's start call (the rows, the targets, the
# local servers' jobs and the containers live in their own modules)
__all__ = [
    "ACTIVE", "DEFAULT_HEALTH_TIMEOUT_S", "STATUSES", "DeployError", "container_log", "delete", "deploy_container",
    "get",
    "list_deployments", "peek", "port_is_free", "pull_line", "reap_servers", "reconcile_on_start", "refresh",
    "resolve_target_model", "server_argv", "smoke_test", "snippets", "start_local", "stop", "to_dict",
    "wait_healthy",
]


def get(dep_id: int) -> Deployment:
    """The deployment, what is behind it checked first."""
    dep = get_row(dep_id)
    return refresh(dep) if dep.status in ACTIVE else dep


def list_deployments(active_only: bool = False) -> list[Deployment]:
    with db_session() as s:
        rows = list(s.exec(select(Deployment).order_by(Deployment.id.desc())).all())
    rows = [refresh(d) if d.status in ACTIVE else d for d in rows]
    return [d for d in rows if d.status in ACTIVE] if active_only else rows


def refresh(dep: Deployment) -> Deployment:
    """Bring an active row in step with its serve job (local) or its container; compare-and-set on the status this
    was decided from, so a stale row (a page's tick racing a stop) changes nothing."""
    return refresh_local(dep) if dep.target == "local" else refresh_container(dep)


def stop(dep_id: int) -> Deployment:
    """Stop a deployment's server (or container). Returns when it is gone and its port is free; if it cannot be
    stopped, the row keeps its status and DeployError says why."""
    dep = get_row(dep_id)
    if dep.status not in (*ACTIVE, "planned"):
        return dep
    if dep.target == "local":
        return stop_local(dep)
    was = dep.status
    dep = update_row(dep.id, expect=(was,), status="stopping")
    if dep.status != "stopping":  # something else decided first (it died, another stop): report that
        return dep
    if dep.container_id:
        from core.deploy.docker_engine import stop_container
        from core.estimate.serving import LaunchError

        try:
            stop_container(dep.container_id, keep_logs=keep_log_of(dep))  # its output stays in the row's log
        except LaunchError as exc:
            update_row(dep.id, expect=("stopping",), status=was, error=str(exc))
            raise DeployError(str(exc)) from None
    return update_row(dep.id, expect=("stopping",), status="stopped", stopped_at=utcnow())


def delete(dep_id: int) -> None:
    """Delete an ended (or planned) deployment: a local one through the runs core — its serve job's row, log and
    folder, and, through the kind's delete hook, this row; a container's row and its log. Active: refused."""
    from pathlib import Path

    from core import runs

    dep = get(dep_id)
    if dep.status in ACTIVE:
        raise DeployError(f"deployment {dep_id} is {dep.status}: stop it before deleting")
    if dep.job_id is not None:
        try:
            runs.delete([dep.job_id])  # the serve kind's hook removes this row with the job
        except runs.JobError as exc:
            if "not found" not in str(exc):
                raise DeployError(str(exc)) from None
    elif dep.log_path:
        Path(dep.log_path).unlink(missing_ok=True)
    delete_row(dep_id)


def reap_servers() -> list[int]:
    """Collect the exit status of ended job processes this process started (local servers are serve jobs now: the
    runs core's monitor does this on every round; kept for callers of the deployments API)."""
    from core.runs.backends import reap_children

    return reap_children()


def reconcile_on_start() -> dict[str, list[int]]:
    """On the studio's start (after the runs core reconciled its jobs): active rows whose server is gone are marked;
    serve jobs whose row is not active (or missing) are stopped — no orphans hold ports."""
    with db_session() as s:
        before = {d.id: d.status for d in s.exec(select(Deployment).where(Deployment.status.in_(list(ACTIVE))))}
    rows = list_deployments()
    marked = [d.id for d in rows if d.id in before and d.status != before[d.id]]
    orphans = stop_orphans([d for d in rows if d.status in ACTIVE and d.target == "local"])
    containers = reap_orphan_containers([d for d in rows if d.status in ACTIVE and d.target != "local"])
    return {"marked": marked, "orphans_stopped": orphans, "orphan_containers_removed": containers}


# ---- smoke test and hand-off -----------------------------------------------------------------------------------------

def smoke_test(dep_id: int, prompt: str = "Say hello in one short sentence.", max_tokens: int = 32,
               timeout_s: float = 120.0) -> dict:
    """One chat request through huggingface_hub.InferenceClient, plain and streaming: replies and latencies."""
    from huggingface_hub import InferenceClient

    dep = get(dep_id)
    if dep.status != "running":
        raise DeployError(f"deployment {dep_id} is {dep.status}, not running" +
                          (f": {dep.error.splitlines()[0]}" if dep.error else ""))
    # a key of its own, so the client does not send this machine's Hugging Face token to the studio's server
    client = InferenceClient(base_url=dep.url, timeout=timeout_s, api_key="no-key")
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
