"""A run's links to where its data lives and came from, on its page in the Train tab: its lineage both ways, where
its experiment trackers keep its curves, and the workspace's TensorBoard (start, stop, link)."""
from __future__ import annotations

import html

import gradio as gr

from core.runs import JobError, RunStatus
from ui.common import md_text, now_hms, user_of
from ui.run_list import LIVE

LINEAGE_EVERY_S = 5.0  # the chain changes when a job is made from the run: read again every few seconds, not each tick


def lineage_html(run_id: int, cache: dict | None = None) -> str:
    """The run's lineage both ways (core.lineage), as text: where its data and adapter came from (dataset version
    and content hash, the run it continued, the votes or corrections behind a preference dataset) and what was made
    from it (evaluations, exports, deployments, continued runs, datasets). Read from the database: a reload shows
    the same."""
    import time

    from core.lineage import LineageError, lineage, lineage_text

    if cache is not None and cache.get("lineage_at", 0) > time.monotonic() - LINEAGE_EVERY_S \
            and cache.get("lineage_run") == run_id:
        return cache.get("lineage_html", "")
    try:
        text = lineage_text(lineage("run", run_id))
    except LineageError as exc:
        text = str(exc)
    out = f'<pre class="fts-lineage" id="train-lineage-text">{html.escape(text, quote=False)}</pre>'
    if cache is not None:
        cache.update(lineage_at=time.monotonic(), lineage_run=run_id, lineage_html=out)
    return out



TRACKER_LABELS = {"tensorboard": "TensorBoard", "mlflow": "MLflow", "trackio": "trackio", "wandb": "W&B"}


def _code(text) -> str:
    """A path or id the studio wrote, shown as code (escaped: a run name is part of some)."""
    return "<code>" + html.escape(str(text)) + "</code>"


def _link(url: str, label: str) -> str:
    return f'<a href="{html.escape(url, quote=True)}" target="_blank">{html.escape(label)}</a>'


def trackers_markdown(run, viewer_url: str | None = ...) -> str:
    """Where the run's experiment trackers (``report_to``) keep its data — the TensorBoard logdir, the MLflow store,
    experiment and run id, the W&B offline folder, the trackio project — with a link to the tracker's view where
    one runs (the studio's TensorBoard, an MLflow / W&B server). "" for a run that reports to none.
    ``viewer_url``: the studio's running TensorBoard, when the caller looked it up already."""
    from core.train.trackers import read_where

    names = list((run.config or {}).get("report_to") or [])
    if not names:
        return ""
    where = read_where(run.output_dir) if run.output_dir else {}
    if not where:
        waiting = "when it starts" if run.status in LIVE else "— it ended before it opened them"
        return f"**Trackers:** {', '.join(TRACKER_LABELS.get(n, md_text(n)) for n in names)} (written {waiting})"
    lines = ["**Trackers**"]
    for name in names:
        w = where.get(name) or {}
        label = TRACKER_LABELS.get(name, md_text(name))
        if w.get("error") and len(w) == 1:
            lines.append(f"- {label}: not written — {md_text(w['error'], 300)}")
            continue
        if name == "tensorboard":
            if viewer_url is ...:
                from core.train.viewer import running_url

                viewer_url = running_url(probe=False, reconciled=True)  # the tick's list of runs reconciled
            view = (_link(_run_view(viewer_url, run.id), "open in TensorBoard") if viewer_url else
                    "start TensorBoard below to see it")
            text = f"event files in {_code(w.get('logdir'))} — {view}"
        elif name == "mlflow":
            text = (f"run {_code(w.get('run_id'))} of experiment {_code(w.get('experiment'))} "
                    f"(id {_code(w.get('experiment_id'))}) in {_code(w.get('tracking_uri'))}")
            if w.get("url"):
                text += " — " + _link(w["url"], "open in MLflow")
        elif name == "wandb":
            text = f"{md_text(w.get('mode'))} run {_code(w.get('id'))} in {_code(w.get('dir'))}"
            if w.get("url"):
                text += " — " + _link(w["url"], "open in W&B")
            elif w.get("mode") == "offline":
                text += " (upload later with <code>wandb sync</code> on that folder)"
        else:
            text = f"run {_code(w.get('run'))} of project {_code(w.get('project'))} in {_code(w.get('dir'))}"
        if w.get("error"):
            text += f" — stopped writing: {md_text(w['error'], 300)}"
        lines.append(f"- {label}: {text}")
    return "\n".join(lines)


def _run_view(viewer_url: str, run_id: int) -> str:
    from core.train.viewer import run_url

    return run_url(viewer_url, run_id)


def viewer_markdown() -> str:
    """The studio's TensorBoard: its link while it runs, else what the button does."""
    from core.train.viewer import active_viewer, url_of

    try:
        job = active_viewer()
    except Exception:  # noqa: BLE001 - a status line must never break the page
        return ""
    if job is None:
        return ("TensorBoard is not running: *Start TensorBoard* serves every run that reports to it (on this "
                "machine's loopback address).")
    url = url_of(job)
    if job.status != RunStatus.running:
        return f"TensorBoard (job #{job.id}) is {job.status.value}…"
    return f"TensorBoard runs (job #{job.id}): {_link(url, url)}"


def on_viewer_start(request: gr.Request):
    return on_viewer("start", request)


def on_viewer_stop(request: gr.Request):
    return on_viewer("stop", request)


def on_viewer(action: str, request=None) -> str:
    """Start or stop the workspace's TensorBoard (a job on the runs core). Anyone may start it (it reads the runs
    folder, on loopback); its starter or an admin stops it."""
    from core.train import viewer
    from core.users import NotAllowed, check_can_manage

    try:
        if action == "start":
            viewer.start_viewer(owner=user_of(request))
            return viewer_markdown()
        job = viewer.active_viewer()
        if job is None:
            return viewer_markdown()
        check_can_manage(job, user_of(request), "stop")
        job = viewer.stop_viewer()
        return f"TensorBoard (job #{job.id}) {job.status.value} at {now_hms()}."
    except NotAllowed as exc:
        return f"**Not allowed:** {md_text(exc)}"
    except (JobError, ValueError) as exc:
        return f"**Error:** {md_text(exc)}"


