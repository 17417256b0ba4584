"""The ``serve`` job kind: a local deployment's server, run by the runs core like every other job.

A local deployment (core.deploy.local_deployments) is a ``deployments`` row — what a person sees: the URL, the port,
the served name — and a ``serve`` job that runs the server. The runs core starts the job's supervisor and this
worker, stops it (SIGTERM to its process group, a kill after the timeout), records how it died, reconciles it after a
restart and deletes it; serve jobs have their own lane of the queue (``FTS_MAX_SERVERS``), so a server never holds a
training run's slot.

The worker merges the training run first when its merged folder is missing or older than its adapter (a stop during
the merge removes the half-written folder), then loads the model and answers on its port (``transformers serve``
pinned to the folder, core.deploy.local_server), watching its own ``/health``: the row turns ``running`` when it
answers; no answer within the row's health timeout, counted from the start of loading (a merge does not count),
fails the job. It serves until it is stopped (the job ends ``stopped``); a server that ends on its own fails it.
"""
from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

from core.deploy.deployment_rows import update_row
from core.deploy.local_server import patch_transformers_serve
from core.deploy.server_processes import answers_health
from core.runs.errors import JobError, describe_exception

HEALTH_POLL_S = 0.5


def run_job(ctx):
    """Entry point of the serve kind (core.runs.kinds)."""
    from core.runs import store
    from core.runs.worker import JobResult, StopRequested
    from storage import RunStatus

    cfg = ctx.config
    dep_id, port, name = int(cfg["deployment_id"]), int(cfg["port"]), str(cfg["served_name"])
    host = str(cfg.get("host") or "127.0.0.1")
    timeout_s = float(cfg.get("health_timeout_s") or 300)
    model_dir = _merged(ctx, int(cfg["merge_run"])) if cfg.get("merge_run") is not None else cfg["model_dir"]
    model_dir = str(Path(model_dir).resolve())
    if ctx.should_stop():
        raise StopRequested()
    if not (Path(model_dir) / "config.json").is_file():
        raise JobError(f"the server cannot start: {model_dir} is not a model folder (no config.json)")
    ctx.log(f"loading {model_dir} as '{name}' on http://{host}:{port}/v1")
    patch_transformers_serve(model_dir, name)
    server: dict = {}
    lock = threading.Lock()

    def close() -> None:
        """Close the server once, whoever gets here first: the job ending, or a load that finished after it ended
        (its HTTP thread is not a daemon: left running, it would keep the process and the port)."""
        with lock:
            serve = server.get("serve")
            if serve is None or server.get("closed"):
                server["closed"] = True
                return
            server["closed"] = True
        serve.kill_server()  # asks uvicorn to exit and waits 2 s for it
        if serve._thread.is_alive():  # a client holding a stream open: stop waiting for it
            serve.server.force_exit = True
            serve._thread.join(5)

    def load() -> None:  # loads the model, then serves in a thread of its own (uvicorn's)
        try:
            from transformers.cli.serve import Serve

            serve = Serve(force_model=model_dir, host=host, port=port, device=cfg.get("device") or "auto",
                          log_level="info", non_blocking=True)
        except BaseException as exc:  # noqa: BLE001 - the watch below turns it into the job's error
            server["error"] = exc
            return
        with lock:
            server["serve"] = serve
            late = server.get("closed")
        if late:
            server["closed"] = False
            close()

    loading_since = time.monotonic()  # the health timeout runs from here, after any merge
    threading.Thread(target=load, daemon=True, name="fts-serve-load").start()
    healthy = False
    try:
        while not ctx.should_stop():
            serve = server.get("serve")
            if "error" in server or (serve is not None and not serve._thread.is_alive()):
                why = describe_exception(server["error"]) if "error" in server else "its HTTP server ended"
                if healthy:
                    raise JobError(f"the server stopped serving on its own: {why}")
                raise JobError(f"the server exited before it became healthy: {why}")
            if not healthy and answers_health(f"http://{host}:{port}"):
                healthy = True
                store.retrying(lambda: update_row(dep_id, expect=("starting",), status="running"))
                ctx.log(f"serving '{name}' on http://{host}:{port}/v1 (/health answered "
                        f"{time.monotonic() - loading_since:.1f} s after loading began)")
            elif not healthy and time.monotonic() - loading_since > timeout_s:
                raise JobError(f"the server did not answer /health within {timeout_s:g}s of loading the model "
                               "(FTS_SERVE_HEALTH_TIMEOUT_S); it was stopped.")
            ctx.stop_event.wait(HEALTH_POLL_S)
        ctx.log("stop requested: closing the server")
        return JobResult(status=RunStatus.stopped, summary=f"served '{name}' on port {port}")
    finally:
        close()  # frees the port; a model still loading is closed when it is loaded, or dies with the process


def _merged(ctx, run_id: int) -> str:
    """The training run's merged folder, merged now when it is missing or stale. A stop during the merge unwinds it
    (its half-written folder is removed on the way out)."""
    from core.deploy.export import ensure_merged, trained_run
    from core.runs.worker import StopRequested

    def on_term(signum, frame):
        ctx.stop_event.set()
        raise StopRequested()

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        if ctx.should_stop():
            raise StopRequested()
        merged, note = ensure_merged(trained_run(run_id), log=ctx.log)
    except (ValueError, OSError) as exc:
        raise JobError(f"the server cannot start: cannot merge run {run_id}: {str(exc).splitlines()[0]}") from None
    finally:
        signal.signal(signal.SIGTERM, previous)
    ctx.log(note)
    return str(merged)
