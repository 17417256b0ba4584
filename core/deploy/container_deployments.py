"""Deployments in containers — TGI / vLLM (sized for the GPU) and ``container`` (the studio's own image serving the
merged model with its local server, on the CPU): the exact ``docker run`` list; launched through the docker SDK where
a Docker engine answers (the image pulled first, with progress in the row's log), else a ``planned`` row holding the
command to run on a GPU host; a container row's state read back from the engine, its output kept in the row's log
when it stops, the container removed; on the studio's start, containers of this workspace that no active row owns
(orphans, found by their labels) are removed."""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from core.config import get_settings
from core.deploy.deployment_rows import (
    ACTIVE,
    DeployError,
    aware,
    get_row,
    log_tail,
    save_row,
    to_dict,
    update_row,
)
from core.deploy.serve_targets import base_dir_of, resolve_target_model
from core.deploy.server_processes import answers_health, url_root
from storage import Deployment
from storage.tables import utcnow

PULL_STALE_S = float(os.environ.get("FTS_PULL_STALE_S", "600"))


def refresh_container(dep: Deployment) -> Deployment:
    from core.deploy.docker_engine import container_status

    if not dep.container_id:
        if dep.status == "starting" and dep.log_path:  # pulling: its launcher writes progress as it goes
            path = Path(dep.log_path)
            since = time.time() - (path.stat().st_mtime if path.exists() else aware(dep.created_at).timestamp())
            if since > PULL_STALE_S:
                return update_row(dep.id, expect=("starting",), status="failed", url="", stopped_at=utcnow(),
                                  error=f"the image pull stopped: no progress for {since:.0f} s (the dashboard that "
                                        "pulled it stopped?); deploy again")
        return dep
    state = container_status(dep.container_id)
    if state is None:  # no engine to ask: keep what we knew
        return dep
    if dep.status == "stopping":
        return dep
    if state != "running":
        tail = keep_container_logs(dep)  # then the container goes: its output stays in the row's log
        from core.deploy.docker_engine import remove_container
        from core.estimate.serving import LaunchError

        try:
            remove_container(dep.container_id)
        except LaunchError:
            pass
        return update_row(dep.id, expect=(dep.status,), status="dead" if dep.status == "running" else "failed",
                          stopped_at=utcnow(), error=f"container {dep.container_id[:12]} is {state}"
                          + (f"\n{tail}" if tail else ""))
    if dep.status == "starting" and answers_health(url_root(dep)):
        return update_row(dep.id, expect=("starting",), status="running")
    return dep


def keep_container_logs(dep: Deployment) -> str:
    """Append the container's output to the row's log (read later in the deployment's details); returns its last
    lines ('' when the engine has none)."""
    from core.deploy.docker_engine import container_logs

    text = container_logs(dep.container_id or "") if dep.container_id else None
    if text:
        _append_log(dep, text)
    return "\n".join(text.strip().splitlines()[-15:]) if text else ""


def keep_log_of(dep: Deployment):
    """What :func:`core.deploy.docker_engine.stop_container` gives a stopping container's output to."""
    return lambda text: _append_log(dep, text)


def _append_log(dep: Deployment, text: str) -> None:
    if not dep.log_path:
        return
    from core.secrets import redact

    try:
        with open(dep.log_path, "a", encoding="utf-8") as f:
            f.write(f"---- container {dep.container_id[:12]} output ----\n{redact(text)}\n")
    except OSError:
        pass


def container_log(dep: Deployment, lines: int = 40) -> str:
    """A container row's log for its details: the launch's lines (pull, start) and the container's output — live
    from the engine while the container exists, else what was kept when it stopped."""
    from core.deploy.docker_engine import container_logs
    from core.secrets import redact

    live = container_logs(dep.container_id, tail=lines) if dep.container_id and dep.status in ACTIVE else None
    if not live:
        return redact(log_tail(dep, lines=lines))
    own = log_tail(dep, lines=5)  # the launch's last lines, then the live output
    return redact(f"{own.strip()}\n---- container {dep.container_id[:12]} output (live) ----\n{live.strip()}")


def deploy_container(model_ref: str, target: str, *, gpu: str | None = None, port: int | None = None,
                     num_gpus: int = 1, quantize_4bit: bool = False, keep_adapter: bool = False,
                     created_by: str = "anonymous", dry_run: bool = False, wait: bool = True,
                     memory_gb: float | None = None, cpus: float | None = None, image: str | None = None,
                     health_timeout_s: float | None = None) -> dict:
    """TGI, vLLM or the studio's own image (``container``) for a run or a model folder: the exact argument list
    (TGI / vLLM sized for the GPU); launched where a Docker engine answers, else a ``planned`` row with the command to
    run on a GPU host. Returns ``{"deployment": row dict or None, "args": [...], "command": str, "sizing": {...},
    "engine": reason or ""}``.

    Launching pulls the image first when the engine lacks it (TGI is ~10 GB): the row is ``starting`` with no URL
    meanwhile and the pull's progress goes to its log (:func:`pull_line`). ``wait``: return when the container
    answers ``/health`` (``health_timeout_s``, default FTS_SERVE_HEALTH_TIMEOUT_S or 300 s; the row is ``running``),
    or the launch failed; else at once, the pull and the start going on in a thread of this process."""
    from core.deploy.containers import ServeSpec, docker_command_text, docker_run_args, plan_for
    from core.deploy.docker_engine import docker_engine
    from core.estimate.serving import LaunchError, size_for_gpu

    if target not in ("tgi", "vllm", "container"):
        raise DeployError(f"target must be local, tgi, vllm or container (got '{target}')")
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
    if target == "container":  # a free loopback port here (the container shares this host's network)
        from core.deploy.server_processes import free_port

        port = int(port or free_port())
    port = int(port or 8080)
    try:
        if target == "container":  # the studio's server sizes nothing: it serves the model on the CPU
            sizing = {}
        else:
            sizing = size_for_gpu(serve_dir if not needs_merge else base_dir_of(run_id), gpu, num_gpus,
                                  quantize_4bit)
        spec = ServeSpec(model_dir=serve_dir, served_name=name, port=port, gpu=gpu, num_gpus=num_gpus,
                         max_input_tokens=sizing.get("max_input_tokens"),
                         max_total_tokens=sizing.get("max_total_tokens"), quantize_4bit=quantize_4bit,
                         lora_adapters=adapters, memory_gb=memory_gb, cpus=cpus)
        args = docker_run_args(plan_for(target, spec, image))
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
        out["deployment"] = to_dict(save_row(row))
        return out
    row.status, row.url = "starting", ""  # no URL until a container answers on it
    dep = save_row(row)
    log_path = get_settings().workspace / "deployments" / f"{dep.id}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    dep = update_row(dep.id, log_path=str(log_path))
    if wait:
        dep = _launch(dep.id, spec, target, image)
        if dep.status == "starting" and dep.container_id:
            dep = wait_container_healthy(dep.id, health_timeout_s)
    else:
        threading.Thread(target=_launch, args=(dep.id, spec, target, image), daemon=True,
                         name=f"fts-launch-{dep.id}").start()
    out["deployment"] = to_dict(dep)
    return out


def wait_container_healthy(dep_id: int, timeout_s: float | None = None, poll_s: float = 0.5) -> Deployment:
    """Wait for a starting container row to answer ``/health`` (it turns ``running``), to die (``failed``, its output
    in the error), or for the timeout: then its container is stopped (output kept, container removed) and the row
    is ``failed`` with why."""
    from core.deploy.docker_engine import stop_container
    from core.estimate.serving import LaunchError

    timeout_s = float(timeout_s or os.environ.get("FTS_SERVE_HEALTH_TIMEOUT_S") or 300)
    deadline = time.monotonic() + timeout_s
    dep = get_row(dep_id)
    while dep.status == "starting" and time.monotonic() < deadline:
        time.sleep(poll_s)
        dep = refresh_container(get_row(dep_id))
    if dep.status != "starting":
        return dep
    dep = update_row(dep_id, expect=("starting",), status="stopping")
    if dep.status != "stopping":
        return dep
    try:
        stop_container(dep.container_id, keep_logs=lambda text: _append_log(dep, text))
    except LaunchError:
        pass
    return update_row(dep_id, expect=("stopping",), status="failed", url="", stopped_at=utcnow(),
                      error=f"the container did not answer /health within {timeout_s:g} s (FTS_SERVE_HEALTH_TIMEOUT_S);"
                            f" it was stopped and removed\n{log_tail(dep, lines=15)}")


def reap_orphan_containers(active: list[Deployment]) -> list[str]:
    """Remove this workspace's studio containers (by label) that no active row owns: left by a studio that died
    between starting one and recording it, or by a row deleted meanwhile. Returns their names."""
    from core.deploy.docker_engine import remove_container, studio_containers
    from core.estimate.serving import LaunchError

    owned = {d.container_id for d in active if d.container_id}
    starting = {d.id for d in active if not d.container_id}  # a launch in flight records its container soon
    gone = []
    for c in studio_containers():
        if c["id"] in owned or (c["deployment"] in starting):
            continue
        try:
            remove_container(c["id"])
            gone.append(c["name"])
        except LaunchError:
            pass
    return gone


def _launch(dep_id: int, spec, target: str, image: str | None = None) -> Deployment:
    """Pull (with progress in the row's log) and start a container for a ``starting`` row; the row becomes the
    container's (with its URL) or ``failed`` with one line of why — and no URL, since nothing answers there."""
    from core.deploy.docker_engine import launch_container, stop_container
    from core.estimate.serving import LaunchError

    dep = get_row(dep_id)
    path = Path(dep.log_path)

    def note(line: str) -> None:
        try:
            with open(path, "a", encoding="utf-8") as f:
                f.write(f"[{time.strftime('%H:%M:%S')}] {line}\n")
        except OSError:
            pass

    def still_wanted() -> bool:
        return get_row(dep_id).status == "starting"

    try:
        launched = launch_container(spec, target, image, on_progress=note, proceed=still_wanted,
                                    deployment_id=dep_id)
    except LaunchError as exc:
        note(f"failed: {str(exc).splitlines()[0]}")
        if not still_wanted():  # stopped meanwhile: that is its ending
            return get_row(dep_id)
        return update_row(dep_id, expect=("starting",), status="failed", error=str(exc), url="", stopped_at=utcnow())
    except Exception as exc:  # noqa: BLE001 - a launch thread never dies silently: the row says why
        return update_row(dep_id, expect=("starting",), status="failed", url="", stopped_at=utcnow(),
                          error=f"the launch failed: {type(exc).__name__}: {str(exc)[:300]}")
    note(f"container {launched['container_id'][:12]} started; waiting for /health at {launched['url']}")
    dep = update_row(dep_id, expect=("starting",), container_id=launched["container_id"], url=launched.get("url") or "")
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
    lines = [ln for ln in log_tail(dep, lines=3).splitlines() if ln.strip()]
    return lines[-1] if lines else ""
