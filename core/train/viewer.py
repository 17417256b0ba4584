"""The workspace's TensorBoard: a managed process on a loopback port, as a ``tensorboard`` job on the runs core.

Runs that report to TensorBoard (``report_to``, core.train.trackers) write event files under
``runs/<id>/tensorboard``; one TensorBoard reads the whole runs folder, so every such run is there, the new ones
included (it rescans every few seconds). Its job sits in the runs core's ``serve`` lane (``FTS_MAX_SERVERS``): the
runs core starts it, stops it (SIGTERM, a kill after the timeout), records how it died and reconciles it after a
restart, like a local deployment's server. There is at most one: asking again while it runs returns it.

``python -m core tensorboard [--port N]`` and the Train tab's button start it; ``python -m core tensorboard --stop``
and the button stop it.
"""
from __future__ import annotations

import http.client
import os
import time
import urllib.parse
import urllib.request

from core import runs
from core.config import get_settings
from core.runs import JobError, RunStatus
from core.runs.ports import free_port, port_is_free
from storage import Run

KIND = "tensorboard"
HOST = "127.0.0.1"
START_TIMEOUT_S = 120.0  # importing TensorBoard and binding its port, on a busy machine
RELOAD_S = 5  # how often it rescans the runs folder for new event files


def default_port() -> int:
    """The admin's ``FTS_TENSORBOARD_PORT`` when it is free, else any free port (a taken port is said in one line)."""
    raw = os.environ.get("FTS_TENSORBOARD_PORT", "").strip()
    if not raw:
        return free_port()
    if not raw.isdigit() or not 1024 <= int(raw) <= 65535:
        raise JobError(f"FTS_TENSORBOARD_PORT must be a port between 1024 and 65535 (got {raw!r})")
    if not port_is_free(int(raw)):
        raise JobError(f"port {raw} (FTS_TENSORBOARD_PORT) is in use on {HOST}: free it or pick another")
    return int(raw)


def url_of(job: Run) -> str:
    cfg = job.config or {}
    return f"http://{cfg.get('host') or HOST}:{int(cfg.get('port') or 0)}/"


def run_url(viewer_url: str, run_id: int) -> str:
    """The viewer's page with only this run's curves (its run filter: the runs folder's ``<id>/`` entries)."""
    query = urllib.parse.urlencode({"runFilter": f"^{int(run_id)}/"})
    return f"{viewer_url.rstrip('/')}/?{query}#timeseries"


def answers(url: str, timeout_s: float = 2.0) -> bool:
    """TensorBoard answers HTTP at ``url`` (its list of runs)."""
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/data/runs", timeout=timeout_s) as r:  # noqa: S310 - http://127.0.0.1:<port> the studio started
            return r.status == 200
    except (OSError, http.client.HTTPException, ValueError):
        return False


def active_viewer(reconciled: bool = False) -> Run | None:
    """The TensorBoard job that is queued, starting or running (read through the runs core, which notices a dead
    one first; ``reconciled``: the caller's own read just did, so only the rows are read); None when there is
    none."""
    from core.runs import store

    for job in (store.list_runs(KIND, 20) if reconciled else runs.list_runs(kind=KIND)):
        if job.status.is_active or job.status == RunStatus.queued:
            return job
    return None


def running_url(probe: bool = True, reconciled: bool = False) -> str | None:
    """The viewer's URL when its job runs (and, with ``probe``, answers HTTP); None otherwise (a page shows links
    only then). ``reconciled``: as for :func:`active_viewer` (the page's 1 s refresh has read every job already)."""
    job = active_viewer(reconciled=reconciled)
    if job is None or job.status != RunStatus.running:
        return None
    url = url_of(job)
    return url if not probe or answers(url, timeout_s=1.0) else None


def start_viewer(port: int | None = None, *, owner: str = "", wait: bool = True,
                 timeout_s: float = START_TIMEOUT_S) -> Run:
    """Start the workspace's TensorBoard (or return the one that runs) on ``port`` (None: a free one) on 127.0.0.1;
    with ``wait``, until it answers HTTP — a job that ends first raises JobError with its error."""
    job = active_viewer()
    if job is not None:
        want = int((job.config or {}).get("port") or 0)
        if port is not None and int(port) != want:
            raise JobError(f"TensorBoard already runs on port {want} (job {job.id}): stop it first to use port {port}")
    else:
        if port is not None:
            if not 1024 <= int(port) <= 65535:
                raise JobError(f"port must be between 1024 and 65535 (got {port})")
            if not port_is_free(int(port)):
                raise JobError(f"port {port} is in use on {HOST}: pick another, or leave it out for a free one")
        config = {"logdir": str(get_settings().runs_dir), "host": HOST,
                  "port": int(port) if port is not None else default_port()}
        job = runs.submit(KIND, config, name="tensorboard", owner=owner)
    return wait_answering(job.id, timeout_s) if wait else job


def wait_answering(job_id: int, timeout_s: float = START_TIMEOUT_S) -> Run:
    deadline = time.monotonic() + timeout_s
    while True:
        job = runs.get_run(job_id)
        if job.status == RunStatus.running and answers(url_of(job)):
            return job
        if job.status.is_finished:
            raise JobError(f"TensorBoard did not start: {(job.error or job.status.value).splitlines()[0]}")
        if time.monotonic() > deadline:
            runs.stop(job_id, timeout_s=10)
            raise JobError(f"TensorBoard did not answer within {timeout_s:.0f} s; it was stopped (see "
                           f"`python -m core runs logs {job_id}`)")
        time.sleep(0.3)


def stop_viewer(timeout_s: float = 15.0) -> Run | None:
    """Stop the running TensorBoard (None: none was running)."""
    job = active_viewer()
    if job is None:
        return None
    return runs.stop(job.id, timeout_s=timeout_s)


def run_job(ctx):
    """Entry point of the ``tensorboard`` kind (core.runs.kinds): serve until stopped."""
    from core.runs.worker import JobResult

    cfg = ctx.config
    host, port, logdir = str(cfg.get("host") or HOST), int(cfg["port"]), str(cfg["logdir"])
    from tensorboard import program

    tb = program.TensorBoard()
    # the pure-Python reader: one process to stop, no extra data-server binary
    tb.configure(logdir=logdir, host=host, port=port, load_fast="false", reload_interval=RELOAD_S,
                 window_title="Finetune Studio runs")
    try:
        url = tb.launch()  # binds now (a port taken meanwhile fails here), serves from a daemon thread
    except program.TensorBoardServerException as exc:
        raise JobError(f"TensorBoard could not serve on {host}:{port}: {exc.msg}") from None
    ctx.log(f"TensorBoard for {logdir} on {url}")
    while not ctx.stop_event.wait(1.0):
        pass
    ctx.log("stop requested: closing TensorBoard")
    return JobResult(status=RunStatus.stopped, summary=f"TensorBoard served {logdir} on {url}")


__all__ = ["KIND", "active_viewer", "answers", "run_url", "running_url", "start_viewer", "stop_viewer", "url_of"]
