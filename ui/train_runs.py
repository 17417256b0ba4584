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
from ui.common import if_changed, is_mine, md_text, mine_box, now_hms, owner_filter, progress_html, user_of
from ui.run_improve import improve_box, wire_improve
from ui.run_links import lineage_html, on_viewer_start, on_viewer_stop, trackers_markdown, viewer_markdown
from ui.run_list import (
    default_selected_run,
    run_choices,
    run_column_widths,
    run_columns,
    runs_frame,
    train_runs,
)
from ui.train_form import objective_choices

REFRESH_S = 1.0
IDLE_REFRESH_S = 4.0  # while none of the listed runs is queued or running (a new one is picked up within this)
LOG_LINES = 14  # the box shows exactly the newest lines, no scrolling needed
LOSS_DTYPES = {"step": "int64", "value": "float64", "series": "str"}
LR_DTYPES = {"step": "int64", "lr": "float64"}
# preference tuning's curves (stored in each metric row's extra): the reward margin and accuracy people watch
PREFERENCE_SERIES = {"rewards/margins": "reward margin", "rewards/accuracies": "accuracy",
                     "rewards/chosen": "chosen reward", "rewards/rejected": "rejected reward"}
# GRPO's: the mean reward of the sampled answers, its spread, each reward's mean, the KL to the start (beta > 0)
GRPO_SERIES = {"reward": "mean reward", "reward_std": "reward spread", "kl": "KL to start"}


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
    if not run_id:
        return _no_run(cache, "<i>No run selected. Start one on the left.</i>")
    try:
        run = runs.get_run(int(run_id))
    except (JobError, ValueError):
        return _no_run(cache, f"<i>Run {html.escape(str(run_id))} not found.</i>")
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
    return (if_changed(cache, "head", head), if_changed(cache, "loss", loss, (*sig, len(cache["loss"]))),
            if_changed(cache, "lr", lr, (*sig, len(cache["lr"]), len(cache["pref"]))),
            if_changed(cache, "log", log_text), if_changed(cache, "config", config_yaml),
            if_changed(cache, "outcome", err), if_changed(cache, "lineage", lineage_html(run.id, cache)), cache)


def _no_run(cache: dict | None, head: str):
    """run_details with no run to show: sent once, then nothing while it stays so (the 1 s refresh used to clear
    the two charts every second, which kept an idle page's browser busy)."""
    if not cache or cache.get("run_id") is not None or cache.get("attempt") != -1:
        cache = new_metrics_cache()
    return (if_changed(cache, "head", head), if_changed(cache, "loss", None, "none"),
            if_changed(cache, "lr", None, "none"), *(if_changed(cache, name, "") for name in
                                                       ("log", "config", "outcome", "lineage")), cache)


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
    timer.tick(tick, [selected, metrics_cache, mine], [runs_table, selected, *detail_outputs, timer],
               show_progress="hidden", concurrency_limit=None)
    wire_improve(selected)
    return selected, timer


def tick(current: str | None, cache: dict | None, mine: bool = False, request: gr.Request = None):
    """The refresh: runs table (all, or only the signed-in user's), selection, the selected run's details (new
    metric rows only), and its own pace: every second while a listed run is queued or running, every
    ``IDLE_REFRESH_S`` otherwise (each event costs a page this size ~0.1 s of browser time)."""
    who = owner_filter(mine, request)
    rows = [r for r in train_runs() if is_mine(r.owner, who)]
    choices = run_choices(rows)
    ids = [c[1] for c in choices]
    value = current if current in ids else default_selected_run(rows)
    head, *details, cache = run_details(value, cache)
    table = runs_frame(rows)
    # a selection the page still has stands: a tick that left before the person (or the Start button) picked another
    # run must not put the old one back when it lands (it only sets the value when that run is gone)
    selection = gr.update(choices=choices) if value == current else gr.update(choices=choices, value=value)
    pace = REFRESH_S if any(not r.status.is_finished for r in rows) else IDLE_REFRESH_S
    return (if_changed(cache, "table", table, table.to_json()),
            if_changed(cache, "choices", selection, (tuple(choices), value)),
            head, *details, cache, if_changed(cache, "pace", gr.Timer(value=pace), pace))


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

