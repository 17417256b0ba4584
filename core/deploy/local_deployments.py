"""Local deployments: a ``deployments`` row (what a person sees) served by a ``serve`` job on the runs core
(core.deploy.serve_job), which owns the server's life — queue, start, stop, how it died, reconcile, delete.

The row points at its job (``job_id``) and follows it: ``starting`` while the job waits or loads, ``running`` once
the server answers ``/health`` (the worker writes that), ``stopping`` while a stop is under way, and when the job has
ended ``stopped`` (a stop), ``dead`` (it was serving) or ``failed`` (it never served) with the job's error and log
tail. Every read of an active row (:func:`refresh_local`) reads its job through the runs core, which notices a dead
server first. Status changes are compare-and-set on the status they were decided from, so a stale reader (a page's
tick racing a stop) changes nothing.
"""
from __future__ import annotations

import os
import signal
import time

from core import runs
from core.deploy.deployment_rows import ACTIVE, DeployError, aware, get_row, reserved_ports, save_row, update_row
from core.deploy.serve_targets import resolve_target_model
from core.deploy.server_processes import (
    answers_health,
    free_port,
    is_our_server,
    server_argv,
    server_cmd_matches,
    signal_server,
    url_root,
)
from core.runs import JobError, RunStatus
from core.runs.ports import port_is_free
from storage import Deployment, Run
from storage.tables import utcnow

DEFAULT_HEALTH_TIMEOUT_S = float(os.environ.get("FTS_SERVE_HEALTH_TIMEOUT_S", "300"))
STOP_TIMEOUT_S = 15.0  # SIGTERM, then the runs core kills the server's process group
SUBMIT_GRACE_S = 30.0  # a row saved just before its job is submitted has no job yet
LOG_TAIL = "--- log tail ---"


def start_local(model_ref: str = "default", *, port: int | None = None, created_by: str = "anonymous",
                wait: bool = True, timeout_s: float | None = None) -> Deployment:
    """Start a local OpenAI-compatible server for a model (a ``serve`` job); with ``wait``, until it is healthy (or
    failed)."""
    run_id, model_dir, name, needs_merge = resolve_target_model(model_ref)
    if port is not None:
        if not 1 <= int(port) <= 65535:
            raise DeployError(f"port must be between 1 and 65535 (got {port})")
        if int(port) in reserved_ports() or not port_is_free(int(port)):
            raise DeployError(f"port {port} is in use on 127.0.0.1: pick another port or leave it empty for a free one")
    host = "127.0.0.1"
    port = int(port) if port is not None else free_port(host)
    merge_run = run_id if needs_merge else None
    who = created_by or "anonymous"
    dep = save_row(Deployment(run_id=run_id, target="local", model_ref=model_ref, model_dir=model_dir, served_name=name,
                              host=host, port=port, url=f"http://{host}:{port}/v1", status="starting", created_by=who,
                              args=server_argv(model_dir, name, port, host, merge_run=merge_run),
                              health_timeout_s=DEFAULT_HEALTH_TIMEOUT_S if timeout_s is None else float(timeout_s)))
    config = {"deployment_id": dep.id, "model_dir": model_dir, "served_name": name, "host": host, "port": port,
              "merge_run": merge_run, "health_timeout_s": dep.health_timeout_s}
    # queued, named in the row, then started (another studio's dispatcher may start it first: the worker needs only
    # the row's id, and a reader gives a row with no job yet SUBMIT_GRACE_S)
    try:
        job = runs.submit("serve", config, start=False, name=f"serve {name}"[:80], base_model=model_dir,
                          parent_run_id=run_id, owner="" if who == "anonymous" else who)
    except Exception as exc:  # noqa: BLE001 - the row says why; nothing runs
        return update_row(dep.id, status="failed", error=f"could not queue the server job: {exc}", stopped_at=utcnow())
    update_row(dep.id, job_id=job.id, log_path=job.log_path or "")
    runs.dispatch()
    dep = refresh_local(get_row(dep.id))  # its pid, once it has started
    return wait_healthy(dep.id) if wait else dep


def wait_healthy(dep_id: int) -> Deployment:
    """Poll until the server answers /health (running), its job ends (failed, with the log tail) or its health
    timeout passes (the job stops it and fails; the timeout is the row's, from the start of loading)."""
    while True:
        dep = get_row(dep_id)
        if dep.status == "starting":
            dep = refresh_local(dep)
        if dep.status != "starting":
            return dep
        time.sleep(0.5)


def status_after(row_status: str, job_status: RunStatus | None) -> str:
    """What a local row becomes when its job is ``job_status`` (None: the job is gone). Pure: the lifecycle in one
    table. A row that was serving and lost its job is ``dead``; one that never served, ``failed``."""
    if job_status is None:
        return "failed" if row_status == "starting" else "dead" if row_status == "running" else "stopped"
    if job_status == RunStatus.stopping:
        return "stopping"
    if job_status.is_active or job_status == RunStatus.queued:
        return row_status  # the worker turns it running when /health answers
    if job_status in (RunStatus.stopped, RunStatus.succeeded):
        return "stopped"
    return "failed" if row_status == "starting" else "dead"


def ending_error(job: Run | None, status: str) -> str | None:
    """The row's error for how its job ended: the job's own words (a server that could not start, a timeout), or
    what the runs core recorded of a death, said of the server; with the job's log tail."""
    if status == "stopped":
        return job.error if job is not None else None  # a note, e.g. a budget that stopped it
    if job is None:
        return "its serve job is gone (deleted while it ran)"
    why = (job.error or "").strip()
    if not why.startswith("the server "):
        head = "the server process is gone" if status == "dead" else \
            "the server process exited before it became healthy"
        why = f"{head}: {why or 'terminated from outside the studio (a host shutdown?)'}"
    if LOG_TAIL not in why:
        why += f"\n{LOG_TAIL}\n{runs.log_tail(job.id, max_lines=20)}"
    return why


def refresh_local(dep: Deployment) -> Deployment:
    """An active local row brought in step with its job (read through the runs core, which notices a dead server)."""
    if dep.status not in ACTIVE:
        return dep
    if dep.job_id is None:
        return _refresh_legacy(dep)
    try:
        job = runs.get_run(dep.job_id)
    except JobError:
        job = None
    new = status_after(dep.status, job.status if job is not None else None)
    if new == "starting" and job.status == RunStatus.running and answers_health(url_root(dep)):
        new = "running"  # the worker writes this itself; a reader sees it too should that write not have landed
    if new == dep.status:
        if job is not None and job.pid and job.pid != dep.pid:  # started now: its process group, for the page
            return update_row(dep.id, expect=(dep.status,), pid=job.pid)
        return dep
    fields: dict = {"status": new}
    if new not in ACTIVE:
        fields.update(stopped_at=utcnow(), error=ending_error(job, new))
    return update_row(dep.id, expect=(dep.status,), **fields)


def stop_local(dep: Deployment) -> Deployment:
    """Stop through the runs core (SIGTERM to the job's process group, a kill after STOP_TIMEOUT_S); returns when
    the job has ended and the port is free."""
    was = dep.status
    dep = update_row(dep.id, expect=(was,), status="stopping")
    if dep.status != "stopping":  # something else decided first (it died, another stop): report that
        return dep
    if dep.job_id is not None:
        try:
            runs.stop(dep.job_id, timeout_s=STOP_TIMEOUT_S)
        except JobError:  # it ended meanwhile (or is gone): its ending is what the row takes
            pass
    elif not _stop_legacy(dep):
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
            raise DeployError(f"deployment {dep.id} stopped, but port {dep.port} is still in use by another process")
    if dep.job_id is not None:
        return refresh_local(dep)
    return update_row(dep.id, expect=("stopping",), status="stopped", stopped_at=utcnow())


def stop_orphans(active_rows: list[Deployment]) -> list[int]:
    """Serve jobs still running whose row is gone or no longer active are stopped (no orphan holds a port); servers
    of an earlier studio version (run outside the runs core) are stopped too. Returns their deployment ids."""
    import psutil

    served = {d.job_id for d in active_rows if d.job_id is not None}
    legacy = {d.id for d in active_rows if d.job_id is None}
    stopped = []
    for job in runs.list_runs(kind="serve"):
        if (job.status.is_active or job.status == RunStatus.queued) and job.id not in served:
            try:
                runs.stop(job.id, wait=False)
            except JobError:  # it ended meanwhile
                continue
            stopped.append(int((job.config or {}).get("deployment_id") or 0))
    for proc in psutil.process_iter(["pid", "cmdline"]):  # an earlier version's `python -m core.deploy.local_server`
        cmd = proc.info.get("cmdline") or []
        if not server_cmd_matches(cmd, None):
            continue
        dep_id = int(cmd[cmd.index("--deployment-id") + 1])
        if dep_id not in legacy:
            try:
                signal_server(proc.pid, signal.SIGTERM)
                stopped.append(dep_id)
            except PermissionError:
                pass
    return stopped


# ---- rows started by an earlier version (a server process of their own, no job) -------------------------------------

def _refresh_legacy(dep: Deployment) -> Deployment:
    if (utcnow() - aware(dep.created_at)).total_seconds() < SUBMIT_GRACE_S and dep.pid is None:
        return dep  # being submitted right now
    if is_our_server(dep.pid, dep.id):
        return dep
    new = "stopped" if dep.status == "stopping" else status_after(dep.status, None)
    return update_row(dep.id, expect=(dep.status,), status=new, stopped_at=utcnow(),
                      error=None if new == "stopped" else "the server process is gone (killed or crashed)")


def _stop_legacy(dep: Deployment) -> bool:
    if not is_our_server(dep.pid, dep.id):
        return True
    try:
        signal_server(dep.pid, signal.SIGTERM)
        for _ in range(150):
            if not is_our_server(dep.pid, dep.id):
                return True
            time.sleep(0.1)
        signal_server(dep.pid, signal.SIGKILL)
    except PermissionError:
        return False
    time.sleep(0.5)
    return not is_our_server(dep.pid, dep.id)
