"""Train tab, right column: the runs table, the selected run's progress, curves, log, config and outcome (read from
the DB on a timer, only the metric rows not seen yet), and the actions on a run: stop, resume, continue, rename, tag,
delete. Closing the browser changes nothing; reloading the page re-attaches to whatever is running.
"""
from __future__ import annotations

import html

import gradio as gr
import pandas as pd

from core import runs
from core.deletion import delete_run
from core.runs import JobError, RunStatus
from core.train import jobs as train_jobs
from core.train.config import ConfigError, TrainConfig
from core.train.rewards import REWARDS
from ui.common import fmt_duration, fmt_num, is_mine, md_text, mine_box, now_hms, owner_filter, progress_html, user_of
from ui.train_form import objective_choices

REFRESH_S = 1.0
LOG_LINES = 14  # the box shows exactly the newest lines, no scrolling needed
# "job": training runs, evaluations and exports share one numbering, so a list of runs can skip numbers
RUN_COLUMNS = ["job", "name", "owner", "status", "method", "steps", "loss", "tok/s", "time", "evaluation"]
# every column wide enough for its header on one line, the table as wide as its column (nothing cut at the right)
# (percent of the table; sized at ~7.3 px a character in the runs column of a 1280-1500 px window)
RUN_WIDTHS = {"job": 6, "name": 12, "owner": 11.5, "status": 13.5, "method": 8.5, "steps": 8.5, "loss": 8.5,
              "tok/s": 7.5, "time": 7.5, "evaluation": 16.5}
WITHOUT_OWNER = {"name": 4.5, "evaluation": 7}  # where the owner column's width goes when it is not shown


def run_columns() -> list[str]:
    """The runs table's columns: 'owner' only where several people share the studio (locally it is always empty)."""
    from ui.common import several_users

    return RUN_COLUMNS if several_users() else [c for c in RUN_COLUMNS if c != "owner"]


def run_column_widths() -> list[str]:
    cols = run_columns()
    widths = {c: RUN_WIDTHS[c] + (WITHOUT_OWNER.get(c, 0) if "owner" not in cols else 0) for c in cols}
    total = sum(widths.values())
    return [f"{100 * widths[c] / total:.1f}%" for c in cols]


LOSS_DTYPES = {"step": "int64", "value": "float64", "series": "str"}
LR_DTYPES = {"step": "int64", "lr": "float64"}
# preference tuning's curves (stored in each metric row's extra): the reward margin and accuracy people watch
PREFERENCE_SERIES = {"rewards/margins": "reward margin", "rewards/accuracies": "accuracy",
                     "rewards/chosen": "chosen reward", "rewards/rejected": "rejected reward"}
# GRPO's: the mean reward of the sampled answers, its spread, each reward's mean, the KL to the start (beta > 0)
GRPO_SERIES = {"reward": "mean reward", "reward_std": "reward spread", "kl": "KL to start"}


LIVE = {RunStatus.running, RunStatus.stopping, RunStatus.starting, RunStatus.queued}


def train_runs() -> list:
    return runs.list_runs(kind="train")


def runs_frame(rows: list | None = None) -> pd.DataFrame:
    from core.evaluate.results import latest_for_runs

    rows = train_runs() if rows is None else rows
    evals = latest_for_runs([r.id for r in rows])
    out = []
    for r in rows:
        prog = f"{r.step}/{r.max_steps}" if r.max_steps else "-"
        ev = evals.get(r.id)
        headline = (f"{ev.headline} {fmt_num(ev.headline_tuned, '{:.3f}')} (base {fmt_num(ev.headline_base, '{:.3f}')})"
                    if ev and ev.headline else "")
        name = r.name + ("  " + " ".join(f"#{t}" for t in r.tags) if r.tags else "")
        owner = r.owner or ""
        owner = owner[:8] + "…" if owner.startswith("v-") and len(owner) > 9 else owner  # a visitor's long id
        out.append([r.id, name, owner, r.status.value, r.method, prog, fmt_num(r.last_loss),
                    fmt_num(r.tokens_per_s, "{:.0f}"), fmt_duration(runs.duration_s(r)), headline])
    cols = run_columns()
    return pd.DataFrame(out, columns=RUN_COLUMNS)[cols]


def run_choices(rows: list | None = None) -> list[tuple[str, str]]:
    return [(f"#{r.id} {r.name} — {r.status.value}", str(r.id)) for r in (train_runs() if rows is None else rows)]


def default_selected_run(rows: list | None = None) -> str | None:
    rows = train_runs() if rows is None else rows
    for r in rows:
        if r.status in LIVE:
            return str(r.id)
    return str(rows[0].id) if rows else None


def new_metrics_cache(run_id: int | None = None, attempt: int = -1) -> dict:
    return {"run_id": run_id, "attempt": attempt, "last_id": 0, "loss": [], "lr": [], "pref": [], "rows_read": 0,
            "samples": None}


def update_metrics_cache(cache: dict | None, run) -> dict:
    """Fetch only the metric rows this page has not seen (ids above the last one read). A new attempt of the run
    (a resume replaces the rows after its checkpoint) or another run starts the cache afresh."""
    if not cache or cache.get("run_id") != run.id or cache.get("attempt") != run.attempt:
        cache = new_metrics_cache(run.id, run.attempt)
    else:
        cache = {**cache, "loss": list(cache["loss"]), "lr": list(cache["lr"]),
                 "pref": list(cache.get("pref", [])), "samples": cache.get("samples")}
    rows = runs.run_metrics(run.id, since_id=cache["last_id"])
    for m in rows:
        if m.loss is not None:
            cache["loss"].append({"step": m.step, "value": m.loss, "series": "train loss"})
        if m.eval_loss is not None:
            cache["loss"].append({"step": m.step, "value": m.eval_loss, "series": "eval loss"})
        if m.lr is not None:
            cache["lr"].append({"step": m.step, "lr": m.lr})
        extra = m.extra or {}
        for key, series in PREFERENCE_SERIES.items():
            if extra.get(key) is not None:
                cache["pref"].append({"step": m.step, "value": extra[key], "series": series})
        if "reward" in extra:  # a GRPO step
            for key, series in GRPO_SERIES.items():
                if extra.get(key) is not None:
                    cache["pref"].append({"step": m.step, "value": extra[key], "series": series})
            per_reward = [k for k in extra if k.startswith("rewards/") and k.endswith("/mean")]
            if len(per_reward) > 1:  # one reward is the mean reward itself
                for key in per_reward:
                    cache["pref"].append({"step": m.step, "value": extra[key], "series": key.split("/")[1]})
            errors = (cache["samples"] or {}).get("errors", 0) + int(extra.get("reward_errors") or 0)
            cache["samples"] = {"step": m.step, "samples": extra.get("samples") or [], "errors": errors,
                                "length": extra.get("completions/mean_length"), "generate_s": extra.get(
                                    "time/generate_s"), "step_s": extra.get("time/step_s")}
        cache["last_id"] = max(cache["last_id"], m.id)
    cache["rows_read"] = len(rows)
    return cache


def metrics_frames(cache: dict) -> tuple[pd.DataFrame | None, pd.DataFrame | None]:
    """(loss frame, second plot's frame): the learning rate, or for preference tuning its rewards and accuracy."""
    # explicit dtypes: an empty or object-typed frame makes the plot treat values as categories
    # no empty frames: a colour-encoded plot that first receives an empty frame never draws its lines later
    loss_rows, lr_rows, pref_rows = cache["loss"], cache["lr"], cache.get("pref") or []
    loss = (pd.DataFrame(loss_rows, columns=["step", "value", "series"]).sort_values("step", kind="stable")
            .astype(LOSS_DTYPES) if loss_rows else None)
    if pref_rows:
        return loss, (pd.DataFrame(pref_rows, columns=["step", "value", "series"])
                      .sort_values("step", kind="stable").astype(LOSS_DTYPES))
    lr = pd.DataFrame(lr_rows, columns=["step", "lr"]).sort_values("step").astype(LR_DTYPES) if lr_rows else None
    if lr is not None:  # one plot serves both: the learning rate is a series of its own
        lr = pd.DataFrame({"step": lr["step"], "value": lr["lr"], "series": "learning rate"}).astype(LOSS_DTYPES)
    return loss, lr


def run_details(run_id: str | None, cache: dict | None = None):
    """(progress html, loss df or None, lr df or None, log tail, config yaml, outcome markdown, lineage markdown,
    metrics cache)."""
    empty = (None, None)
    if not run_id:
        return ("<i>No run selected. Start one on the left.</i>", *empty, "", "", "", "", new_metrics_cache())
    try:
        run = runs.get_run(int(run_id))
    except (JobError, ValueError):
        return (f"<i>Run {html.escape(str(run_id))} not found.</i>", *empty, "", "", "", "", new_metrics_cache())
    cache = update_metrics_cache(cache, run)
    loss, lr = metrics_frames(cache)
    config_yaml = TrainConfig.model_validate(run.config).to_yaml()
    err = ""
    if run.error and run.status == RunStatus.queued:  # e.g. a Ray cluster that does not answer yet
        err = f"**Why it has not started:**\n\n<pre class=\"fts-error\">{html.escape(run.error[-3000:])}</pre>"
    elif run.error:  # its first line says how it ended; the log tail after it is cut from the top
        text = run.error if len(run.error) <= 3000 else f"{run.error.splitlines()[0][:500]}\n…\n{run.error[-2500:]}"
        err = f"**Why it ended:**\n\n<pre class=\"fts-error\">{html.escape(text)}</pre>"
    elif run.status == RunStatus.succeeded:
        err = f"Adapter saved to `{run.adapter_path}`" + _step_report(run.id) + _what_changed(run.id, cache)
    if cache.get("samples"):
        err = (err + "\n\n" if err else "") + samples_markdown(cache["samples"])
    trackers = trackers_markdown(run)
    if trackers:
        err = (err + "\n\n" if err else "") + trackers
    head = progress_html(run.step, run.max_steps, run.status.value, run.eta_s, run.tokens_per_s) + parallel_note(run)
    log_text = runs.log_tail(run.id, max_lines=LOG_LINES)
    # what this page already shows is not sent again: a finished run's refresh sends nothing but the table check
    sig = (run.id, run.attempt)
    return (_if_changed(cache, "head", head), _if_changed(cache, "loss", loss, (*sig, len(cache["loss"]))),
            _if_changed(cache, "lr", lr, (*sig, len(cache["lr"]), len(cache["pref"]))),
            _if_changed(cache, "log", log_text), _if_changed(cache, "config", config_yaml),
            _if_changed(cache, "outcome", err), _if_changed(cache, "lineage", lineage_html(run.id, cache)), cache)


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


def parallel_note(run) -> str:
    """A multi-process run's processes and strategy under its status line ("" for one process)."""
    config = run.config or {}
    n = int(config.get("num_processes") or config.get("num_gpus") or 1)
    if n <= 1:
        return ""
    how = html.escape(str(config.get("distributed") or "ddp"))
    nodes = run.worker_host if run.backend != "local" and "," in (run.worker_host or "") else ""
    where = f" · on nodes {html.escape(nodes)}" if nodes else ""  # a run placed over a cluster's nodes (Ray)
    return f'<div class="fts-parallel">{n} processes · {how}{where}</div>'


def samples_markdown(latest: dict) -> str:
    """A GRPO run's latest step: answer length, time split, reward errors, and the best and worst sampled answers
    with their rewards (model output: shown as text)."""
    e = html.escape
    facts = [f"step {latest['step']}"]
    if latest.get("length") is not None:
        facts.append(f"mean answer {latest['length']:.0f} tokens")
    if latest.get("step_s"):
        facts.append(f"step {latest['step_s']:.1f} s, of which sampling + scoring {latest['generate_s']:.1f} s")
    facts.append(f"reward errors {latest.get('errors', 0)}" + (" (see the log: those answers scored 0)"
                                                               if latest.get("errors") else ""))
    parts = [f"**Sampled answers** · {' · '.join(facts)}"]
    for smp in latest.get("samples") or []:
        per = ", ".join(f"{e(str(k))} {v:.2f}" for k, v in (smp.get("rewards") or {}).items())
        prompt = " ".join(str(smp.get("prompt", "")).split())
        prompt = prompt if len(prompt) <= 160 else prompt[:160] + "…"
        parts.append(f"reward **{smp.get('reward', 0):.2f}** ({per}) · prompt: <i>{e(prompt)}</i>"
                     f"\n<pre class=\"fts-sample\">{e(str(smp.get('answer', '')))}</pre>")
    return "\n\n".join(parts)


def _if_changed(cache: dict, name: str, value, signature=None):
    """``value`` when the page has not been sent it yet (by its signature, or the value itself), else a no-op
    update. The signatures live in the page's metrics cache, which starts afresh for another run or attempt."""
    sent = cache.setdefault("sent", {})
    key = value if signature is None else signature
    if name in sent and sent[name] == key:
        return gr.update()
    sent[name] = key
    return value


def _what_changed(run_id: int, cache: dict) -> str:
    """The run page's closing report once the run is evaluated (recomputed only when a newer evaluation lands)."""
    from core.evaluate.results import latest_for_runs

    try:
        ev = latest_for_runs([run_id]).get(run_id)
    except Exception:  # noqa: BLE001 - the page keeps refreshing without it
        return ""
    if ev is None:
        return "\n\nNot evaluated yet: the **Evaluate** tab compares it with its base on held-out rows."
    if cache.get("report_eval") != ev.id:
        from ui.quickstart import report_markdown

        cache["report_eval"], cache["report"] = ev.id, report_markdown(ev)
    return "\n\n" + cache["report"]


def _step_report(run_id: int) -> str:
    """A continued run (improve from feedback, continue-as): what the step changed (core.train.compare)."""
    from core.train.compare import step_report, step_report_markdown

    try:
        rep = step_report(run_id)
    except Exception:  # noqa: BLE001 - the page keeps refreshing without it
        return ""
    return "\n\n" + step_report_markdown(rep, md_text) if rep else ""


def run_action(action, run_id, steps, request=None, objective=None):
    """Stop, resume or continue the selected run (its owner or an admin). (message, selection update)"""
    if not run_id:
        return "Select a run first.", gr.update()
    from core.users import NotAllowed, check_can_manage

    try:
        rid = int(run_id)
        user = user_of(request)
        check_can_manage(runs.get_run(rid), user, action)  # anyone may look; the owner (or an admin) acts
        if action == "stop":
            run = runs.stop(rid)
            return f"Run #{rid} {run.status} at {now_hms()}.", gr.update(choices=run_choices())
        if action == "resume":
            run = runs.resume(rid)
            ck = f" from {run.resume_from_checkpoint.rsplit('/', 1)[-1]}" if run.resume_from_checkpoint else \
                " from the start (no checkpoint yet)"
            return f"Run #{rid} resumed{ck} at {now_hms()}.", gr.update(choices=run_choices())
        run = train_jobs.continue_training(rid, int(steps or 0), owner=user, objective=objective or None)
        how = f" with {objective.upper()}" if objective else ""
        return (f"Run #{run.id} continues #{rid}{how} for {int(steps)} steps.",
                gr.update(choices=run_choices(), value=str(run.id)))
    except NotAllowed as exc:
        return f"**Not allowed:** {md_text(exc)}", gr.update()
    except (JobError, ConfigError, ValueError) as exc:
        return f"**Error:** {md_text(exc)}", gr.update()

def on_stop(run_id, steps, request: gr.Request):
    return run_action("stop", run_id, steps, request)

def on_resume(run_id, steps, request: gr.Request):
    return run_action("resume", run_id, steps, request)

def on_continue(run_id, steps, objective, request: gr.Request):
    return run_action("continue", run_id, steps, request, objective)

def on_tag(run_id, tags, request: gr.Request):
    return manage_run("tag", run_id, user_of(request), tags)

def on_rename(run_id, name, request: gr.Request):
    return manage_run("rename", run_id, user_of(request), name)

def on_delete(run_id, request: gr.Request):
    return (*manage_run("delete", run_id, user_of(request)), gr.update(visible=False))


def build_panel():
    """The Runs column (inside the tab's row). Returns the selected-run dropdown (starting a run selects it); wires
    the run actions and the 1 s refresh."""
    with gr.Row():
        gr.Markdown("#### Runs")
        mine = mine_box("Only my runs", "train-mine")
    gr.Markdown("Numbers are job numbers: training runs, evaluations and exports share them, so the runs "
                "listed here can skip some.", elem_id="train-jobs-note")
    runs_table = gr.Dataframe(value=runs_frame, headers=run_columns(), interactive=False, max_height=260,
                              wrap=True, column_widths=run_column_widths(), elem_id="train-runs")
    metrics_cache = gr.State(new_metrics_cache())
    with gr.Row():
        # a custom value: a run deleted (here or elsewhere) between two refreshes is "not found", not an
        # error toast from the dropdown's own check
        selected = gr.Dropdown(choices=run_choices(), value=default_selected_run(), label="Selected run",
                               scale=3, allow_custom_value=True)
        stop_btn = gr.Button("Stop", variant="stop", scale=1)
        resume_btn = gr.Button("Resume", scale=1)
    with gr.Row():
        extra_steps = gr.Number(20, label="More steps", precision=0, minimum=1, scale=1)
        continue_as = gr.Dropdown([("same objective", ""),
                                   *[(lab.split(" — ")[0], v) for lab, v in objective_choices()]], value="",
                                  label="Continue as", scale=1, elem_id="train-continue-as",
                                  info="SFT then GRPO: same data")
        continue_btn = gr.Button("Continue training (new run from this adapter)", scale=2)
    with gr.Accordion("Rename, tag or delete the selected run", open=False):
        with gr.Row():
            new_name = gr.Textbox(label="New name", scale=3, elem_id="train-new-name")
            rename_btn = gr.Button("Rename", scale=1, elem_id="train-rename")
        with gr.Row():
            new_tags = gr.Textbox(label="Tags (space- or comma-separated; they replace the run's tags)",
                                  scale=3, elem_id="train-tags", placeholder="baseline demo")
            tag_btn = gr.Button("Set tags", scale=1, elem_id="train-tag")
            delete_btn = gr.Button("Delete…", variant="stop", scale=1, elem_id="train-delete")
        with gr.Row(visible=False) as confirm_row:
            confirm_md = gr.Markdown(elem_id="train-delete-confirm")
            confirm_btn = gr.Button("Yes, delete it", variant="stop", scale=0, elem_id="train-delete-yes")
            cancel_btn = gr.Button("Cancel", scale=0, elem_id="train-delete-no")
    improve_box()
    action_msg = gr.Markdown()
    progress = gr.HTML()
    with gr.Row():
        # a fixed colour domain: without it the plot keeps the (empty) domain of its first frame
        loss_plot = gr.LinePlot(x="step", y="value", color="series", title="Loss", height=260,
                                x_title="step", y_title="loss",
                                color_map={"train loss": "#6366f1", "eval loss": "#f59e0b"})
        # the learning rate, or for DPO / ORPO the reward margin, accuracy and rewards
        # GRPO: the mean reward, its spread, the KL and each reward's mean (every series needs a colour
        # here: one outside the map is not drawn)
        lr_plot = gr.LinePlot(x="step", y="value", color="series", title="Learning rate · preference · reward",
                              height=260, x_title="step", y_title="value",
                              color_map={"learning rate": "#10b981", "reward margin": "#6366f1",
                                         "accuracy": "#f59e0b", "chosen reward": "#22c55e",
                                         "rejected reward": "#ef4444", "mean reward": "#6366f1",
                                         "reward spread": "#a5b4fc", "KL to start": "#ef4444",
                                         **dict(zip(REWARDS, ("#f59e0b", "#22c55e", "#0ea5e9", "#d946ef",
                                                              "#64748b")))})
    error_md = gr.Markdown(elem_id="train-outcome")
    with gr.Accordion("TensorBoard (runs that report to it)", open=False):
        with gr.Row():
            viewer_start = gr.Button("Start TensorBoard", scale=1, elem_id="train-tb-start")
            viewer_stop = gr.Button("Stop TensorBoard", scale=1, elem_id="train-tb-stop")
        viewer_md = gr.Markdown(viewer_markdown, elem_id="train-tb-status")
    with gr.Accordion("Log tail", open=True):
        log_box = gr.Textbox(lines=LOG_LINES, max_lines=LOG_LINES, show_label=False, autoscroll=True,
                             elem_id="train-log")
    with gr.Accordion("Config (YAML)", open=False):
        config_box = gr.Code(language="yaml", show_label=False)
    with gr.Accordion("Lineage: what it came from, what was made from it", open=False, elem_id="train-lineage"):
        lineage_md = gr.Markdown(elem_id="train-lineage-md")

    detail_outputs = [progress, loss_plot, lr_plot, log_box, config_box, error_md, lineage_md, metrics_cache]

    viewer_start.click(on_viewer_start, None, [viewer_md])
    viewer_stop.click(on_viewer_stop, None, [viewer_md])
    tag_btn.click(on_tag, [selected, new_tags], [action_msg, selected])
    rename_btn.click(on_rename, [selected, new_name], [action_msg, selected])
    delete_btn.click(delete_question, [selected], [confirm_md, confirm_row])
    confirm_btn.click(on_delete, [selected], [action_msg, selected, confirm_row])
    cancel_btn.click(lambda: gr.update(visible=False), None, [confirm_row])
    stop_btn.click(on_stop, [selected, extra_steps], [action_msg, selected], concurrency_limit=None)
    resume_btn.click(on_resume, [selected, extra_steps], [action_msg, selected])
    continue_btn.click(on_continue, [selected, extra_steps, continue_as], [action_msg, selected])
    selected.change(run_details, [selected, metrics_cache], detail_outputs)
    timer = gr.Timer(REFRESH_S)
    timer.tick(tick, [selected, metrics_cache, mine], [runs_table, selected, *detail_outputs],
               show_progress="hidden", concurrency_limit=None)
    wire_improve(selected)
    return selected


# ---- improve from feedback (issue 28): votes / corrections → preference data → DPO / ORPO from the run -------------
IMPROVE: dict = {}  # its components, for app.py to wire "Open in the Playground" (it needs the tabs)


def improve_box():
    with gr.Accordion("Improve from feedback (votes → DPO / ORPO → evaluate again)", open=False,
                      elem_id="train-improve") as box:
        gr.Markdown("The Playground votes on this run (or its evaluation's \"tuned worse\" rows, corrected to their "
                    "references) become preference pairs; a DPO / ORPO run continues from this run's adapter. When "
                    "it has finished, evaluate it on the same held-out rows as this run's last evaluation and put the "
                    "two side by side in the Playground.")
        available = gr.Markdown(elem_id="train-improve-available")
        with gr.Row():
            source = gr.Radio([("Playground votes", "votes"), ("evaluation corrections", "corrections")],
                              value="votes", label="Feedback", elem_id="train-improve-source", scale=2)
            objective = gr.Dropdown([("DPO", "dpo"), ("ORPO", "orpo")], value="dpo", label="Objective", scale=1,
                                    elem_id="train-improve-objective")
            steps = gr.Number(20, label="Steps", precision=0, minimum=1, scale=1, elem_id="train-improve-steps")
        with gr.Row():
            improve = gr.Button("Improve from feedback", variant="primary", elem_id="train-improve-go")
            evaluate = gr.Button("Evaluate on the same rows as the run it continued", elem_id="train-improve-eval")
            playground = gr.Button("Open both in the Playground", elem_id="train-improve-pg")
        said = gr.Markdown(elem_id="train-improve-msg")
    IMPROVE.update(box=box, available=available, source=source, objective=objective, steps=steps, improve=improve,
                   evaluate=evaluate, playground=playground, said=said)


def feedback_text(run_id: str | None, request: gr.Request = None) -> str:
    """How much usable feedback the selected run has (a person's own votes in a shared studio)."""
    from core.data.feedback import votes_scope
    from core.train.improve import feedback_available

    if not run_id:
        return "Select a run first."
    try:
        return md_text(feedback_available(int(run_id), voter=votes_scope(user_of(request)))["message"])
    except (JobError, ValueError) as exc:
        return f"**Error:** {md_text(exc)}"


def on_improve(run_id, source, objective, steps, request: gr.Request):
    """The button: the preference dataset and the DPO / ORPO run continued from the selected run; selects it."""
    from core.data.errors import DatasetError
    from core.data.feedback import votes_scope
    from core.train.improve import improve_from_feedback
    from core.users import NotAllowed, check_can_manage

    if not run_id:
        return "Select a run first.", gr.update()
    user = user_of(request)
    try:
        rid = int(run_id)
        check_can_manage(runs.get_run(rid), user, "continue")
        got = improve_from_feedback(rid, objective=objective or "dpo", steps=int(steps or 0) or None,
                                    source=source or "votes", voter=votes_scope(user), owner=user)
    except NotAllowed as exc:
        return f"**Not allowed:** {md_text(exc)}", gr.update()
    except (JobError, DatasetError, ConfigError, ValueError) as exc:
        return f"**Error:** {md_text(exc)}", gr.update()
    new, made = got["run"], got["dataset"]
    note = f" Note: {md_text(got['note'])}." if got["note"] else ""
    return (f"{md_text(made.message)} Run **#{new.id}** ({md_text(objective or 'dpo').upper()}, "
            f"{int(steps or 20)} steps) continues #{rid} on dataset {made.dataset_id}: when it has finished, press "
            f"**Evaluate on the same rows** here, then **Open both in the Playground**.{note}",
            gr.update(choices=run_choices(), value=str(new.id)))


def on_evaluate_like_parent(run_id, request: gr.Request):
    from core.evaluate.config import EvalConfigError
    from core.train.improve import evaluate_like_parent, same_rows_config

    if not run_id:
        return "Select a run first."
    try:
        cfg = same_rows_config(int(run_id))
        job = evaluate_like_parent(int(run_id), owner=user_of(request))
    except (JobError, EvalConfigError, ValueError) as exc:
        return f"**Error:** {md_text(exc)}"
    return (f"Evaluation job **#{job.id}** scores run #{int(run_id)} on dataset {md_text(cfg['dataset'])} "
            f"[{md_text(cfg['split'])}] with the same sample and settings as the last evaluation of the run it "
            "continued; its result shows here and in the **Evaluate** tab.")


def playground_pair(run_id: str | None) -> tuple[str | None, str | None, str]:
    """(model A, model B, message): the run it continued (A) and the selected run (B), as Playground model keys."""
    if not run_id:
        return None, None, "Select a run first."
    try:
        run = runs.get_run(int(run_id))
    except (JobError, ValueError) as exc:
        return None, None, f"**Error:** {md_text(exc)}"
    if not run.parent_run_id:
        return None, None, f"Run #{run.id} did not continue another run: pick models in the Playground."
    if run.status != RunStatus.succeeded:
        return None, None, f"Run #{run.id} is {run.status.value}: open the Playground once it has succeeded."
    return (f"run:{run.parent_run_id}", f"run:{run.id}",
            f"The Playground has run #{run.parent_run_id} (A) and run #{run.id} (B): send a prompt to both.")


def wire_improve(selected) -> None:
    c = IMPROVE
    c["box"].expand(feedback_text, [selected], c["available"])
    selected.change(feedback_text, [selected], c["available"])
    c["improve"].click(on_improve, [selected, c["source"], c["objective"], c["steps"]], [c["said"], selected]) \
        .then(feedback_text, [selected], c["available"])
    c["evaluate"].click(on_evaluate_like_parent, [selected], c["said"])
    c["selected"] = selected


def wire_playground(tabs) -> None:
    """app.py, once the tabs exist: "Open both in the Playground" switches to it with the two runs as A and B."""
    from ui import playground

    pg, c = playground.COMPONENTS, IMPROVE
    if not c or "model_a" not in pg:
        return

    def open_both(run_id):
        a, b, message = playground_pair(run_id)
        if a is None:
            return gr.update(), gr.update(), gr.update(), message
        choices = playground.model_choices()
        return (gr.update(selected="Playground"), gr.update(choices=choices, value=a),
                gr.update(choices=choices, value=b), message)

    c["playground"].click(open_both, [c["selected"]], [tabs, pg["model_a"], pg["model_b"], c["said"]])


def tick(current: str | None, cache: dict | None, mine: bool = False, request: gr.Request = None):
    """The 1 s refresh: runs table (all, or only the signed-in user's), selection, and the selected run's details
    (new metric rows only)."""
    who = owner_filter(mine, request)
    rows = [r for r in train_runs() if is_mine(r.owner, who)]
    choices = run_choices(rows)
    ids = [c[1] for c in choices]
    value = current if current in ids else default_selected_run(rows)
    head, *details, cache = run_details(value, cache)
    table = runs_frame(rows)
    return (_if_changed(cache, "table", table, table.to_json()),
            _if_changed(cache, "choices", gr.update(choices=choices, value=value), (tuple(choices), value)),
            head, *details, cache)


def delete_question(run_id: str | None):
    """The Delete… button: what would go, asked before anything is deleted. (question markdown, row update)"""
    if not run_id:
        return "Select a run first.", gr.update(visible=True)
    try:
        run = runs.get_run(int(run_id))
    except (JobError, ValueError) as exc:
        return f"**Error:** {md_text(exc)}", gr.update(visible=True)
    from core.lineage import dependents

    made = dependents("run", run.id)["message"] if run.kind == "train" else ""
    said = f" **{md_text(made[0].upper() + made[1:])}.**" if made else " Nothing was made from it."
    return (f"Delete run **#{run.id} {md_text(run.name)}** ({run.status.value})?{said} Its checkpoints, adapter, "
            "merged model, log, metrics, evaluations and exports go for good (a deployment serving it must be "
            "stopped first); runs continued from it and datasets made from it stay, their lineage keeps its id "
            "and data hash.", gr.update(visible=True))


def manage_run(action: str, run_id: str | None, user: str, name: str = ""):
    """Rename, tag or delete the selected run (its owner or an admin). (message, selection update)"""
    if not run_id:
        return "Select a run first.", gr.update()
    from core.users import NotAllowed, check_can_manage

    try:
        rid = int(run_id)
        check_can_manage(runs.get_run(rid), user, action)
        if action == "rename":
            run = train_jobs.rename_run(rid, name)
            choices = run_choices()
            return f"Run #{rid} is now **{md_text(run.name)}**.", gr.update(choices=choices, value=str(rid))
        if action == "tag":
            run = train_jobs.tag_run(rid, name)
            tags = " ".join(f"#{t}" for t in run.tags or []) or "no tags"
            return f"Run #{rid}: {md_text(tags)}.", gr.update()
        gone = delete_run(rid)
        also = f" with job(s) {', '.join(f'#{i}' for i in gone['runs'][1:])}" if gone["runs"][1:] else ""
        rows = train_runs()
        kept = f" (It had: {md_text(gone['dependents'])}.)" if gone.get("dependents") else ""
        return (f"Run #{rid} deleted{also}; {gone['evaluations']} evaluation(s) went with it.{kept}",
                gr.update(choices=run_choices(rows), value=default_selected_run(rows)))
    except NotAllowed as exc:
        return f"**Not allowed:** {md_text(exc)}", gr.update()
    except (JobError, ValueError) as exc:
        return f"**Error:** {md_text(exc)}", gr.update()

