"""Sweep (in the Train tab): search hyperparameters with Optuna — every trial an ordinary training run on the queue.

Left: the sweep file (the same YAML as ``python -m core sweep --config``), its base taken from the New run form with
one click, the objective, trials and parallel. Right: the sweeps, the selected one's trials table, the best value so
far, each parameter's importance, the trials in parallel coordinates, stop, and "continue the best trial" (the usual
continue path: a new run from its adapter). Binds core.sweep; reads on a 2 s timer while the section is open.
"""
from __future__ import annotations

import math

import gradio as gr
import pandas as pd
import yaml

from core.runs import JobError
from core.sweep import jobs as sweeps
from core.sweep import study as studies
from core.sweep.spec import METRIC_OBJECTIVES, SweepError, parse_sweep_yaml
from core.train.config import ConfigError
from core.users import NotAllowed, check_can_manage
from ui.common import md_text, now_hms, user_of
from ui.train_form import config_from_inputs

EXAMPLE = """\
name: lr-search
base:
  base_model: default
  dataset: "1"
  method: lora
  max_steps: 60
  eval_split: 0.1
  eval_steps: 10
search:
  learning_rate: {type: log_uniform, low: 1.0e-5, high: 1.0e-3}
  lora_r: {type: choice, values: [8, 16, 32]}
objective: eval_loss
trials: 6
parallel: 1
"""
TRIAL_HEADERS = ["trial", "run", "state", "value", "params", "note"]
REFRESH_S = 2.0


def sweep_choices() -> list[tuple[str, str]]:
    return [(f"#{r.id} {r.name} ({r.status})", str(r.id)) for r in sweeps.list_sweeps()]


def base_from_form(text: str, form_values: dict) -> tuple[str, str]:
    """The sweep file with its ``base`` replaced by the New run form's settings (the fields that differ from the
    defaults, and the data). Eval loss needs held-out rows: a form without them gets eval_split 0.1."""
    try:
        data = yaml.safe_load(text or "") or {}
        if not isinstance(data, dict):
            data = {}
    except yaml.YAMLError:
        return text, "**Error:** the sweep file is not valid YAML; fix it first (or clear it)"
    if form_values.get("upload"):
        return text, "**Error:** an uploaded file is imported when a run starts: import it in the Data tab first"
    try:
        config = config_from_inputs(form_values)
    except (ConfigError, ValueError) as exc:
        return text, f"**Error:** {md_text(exc)}"
    base = config.model_dump(mode="json", exclude_defaults=True)
    base["dataset"] = config.dataset
    base.pop("name", None)
    note = ""
    if data.get("objective", "eval_loss") == "eval_loss" and not config.eval_split:
        base.update(eval_split=0.1, eval_steps=config.eval_steps or max(1, (config.max_steps or 60) // 6))
        note = " (eval_split 0.1 added: eval loss needs held-out rows)"
    data = {"name": data.get("name") or "sweep", "base": base, **{k: v for k, v in data.items()
                                                                    if k not in ("name", "base")}}
    data.setdefault("search", yaml.safe_load(EXAMPLE)["search"])
    return yaml.safe_dump(data, sort_keys=False, width=110), f"Base taken from the New run form at {now_hms()}{note}."


def start_sweep(text: str, objective: str, trials, parallel, owner: str = "") -> tuple[str, str | None]:
    """(message, the new sweep's id or None). The objective, trials and parallel boxes win over the file's."""
    try:
        data = yaml.safe_load(text or "")
    except yaml.YAMLError as exc:
        return f"**Error:** the sweep file is not valid YAML: {md_text(str(exc).splitlines()[0])}", None
    if not isinstance(data, dict):
        return "**Error:** the sweep file is a mapping: name, base, search, objective, trials, parallel", None
    data.update({k: v for k, v in (("objective", objective), ("trials", trials), ("parallel", parallel))
                 if v not in (None, "")})
    for k in ("trials", "parallel"):
        if isinstance(data.get(k), float) and data[k].is_integer():
            data[k] = int(data[k])
    try:
        spec = parse_sweep_yaml(yaml.safe_dump(data))
        run = sweeps.submit_sweep(spec, owner=owner)
    except (SweepError, JobError, ValueError) as exc:
        return f"**Error:** {md_text(exc)}", None
    return (f"Sweep #{run.id} queued at {now_hms()}: {spec['trials']} trials, {spec['parallel']} at a time — its "
            "trials appear in **Runs** above as ordinary runs (tagged sweep-{0}).".format(run.id), str(run.id))


def _fmt_params(params: dict) -> str:
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def trials_frame(d: dict | None) -> pd.DataFrame:
    rows = []
    for t in (d or {}).get("trials", []):
        rows.append([t["number"], t["run_id"] if t["run_id"] is not None else "-", t["state"],
                     f"{t['value']:.4f}" if t["value"] is not None else "-", _fmt_params(t["params"]),
                     t.get("note") or ""])
    return pd.DataFrame(rows, columns=TRIAL_HEADERS)


def _axis_position(p: dict, value) -> float | None:
    """Where a value sits on its parameter's axis, 0 to 1 (log ranges on a log scale, choices evenly)."""
    if p["type"] == "choice":
        vals = p["values"]
        return vals.index(value) / max(1, len(vals) - 1) if value in vals else None
    lo, hi = float(p["low"]), float(p["high"])
    if p["type"] == "log_uniform":
        lo, hi, value = math.log(lo), math.log(hi), math.log(float(value))
    return (float(value) - lo) / (hi - lo) if hi > lo else 0.5


PARALLEL_MAX = 10  # the best trials drawn in parallel coordinates (a fixed set of series: "best", "2nd" …)
RANKS = ["best", *[f"{i}{'nd' if i == 2 else 'rd' if i == 3 else 'th'}" for i in range(2, PARALLEL_MAX + 1)]]
RANK_COLOURS = dict(zip(RANKS, ["#4338ca", "#4f46e5", "#6366f1", "#818cf8", "#93c5fd", "#a5b4fc", "#c7d2fe",
                                "#cbd5e1", "#d1d5db", "#e5e7eb"]))


def parallel_frame(d: dict) -> tuple[pd.DataFrame | None, list[str], str]:
    """Parallel coordinates: one line per finished trial (the best ``PARALLEL_MAX``, ranked) through an axis per
    parameter and one for the value, each scaled 0-1 (bottom = low end / first choice / lowest value). Returns (frame,
    the axes in order, which trial each rank is)."""
    space = d.get("search") or {}
    done = [t for t in d["trials"] if t["value"] is not None and t["state"] in ("complete", "pruned")]
    if not done or not space:
        return None, [], ""
    done.sort(key=lambda t: (t["state"] != "complete", t["value"] if d.get("direction") == "minimize"
                             else -t["value"]))
    done = done[:PARALLEL_MAX]
    names = list(space)
    objective = d.get("objective") or "value"
    # a pruned trial's value is from an earlier step than the complete ones': its line stops at the parameters
    values = [t["value"] for t in done if t["state"] == "complete"] or [0.0]
    vlo, vhi = min(values), max(values)
    rows = []
    for rank, t in zip(RANKS, done):
        for name in names:
            pos = _axis_position(space[name], t["params"].get(name))
            if pos is not None:
                rows.append({"axis": name, "position": pos, "trial": rank})
        if t["state"] == "complete":
            rows.append({"axis": objective, "position": (t["value"] - vlo) / (vhi - vlo) if vhi > vlo else 0.5,
                         "trial": rank})
    who = ", ".join(f"{rank} = trial {t['number']}" + (" (pruned)" if t["state"] == "pruned" else "")
                    for rank, t in zip(RANKS, done))
    return pd.DataFrame(rows), [*names, objective], who


def sweep_view(sweep_id: str | None):
    """(status, trials table, best-so-far plot, importance plot, parallel plot, its axes' note)."""
    empty = ("", trials_frame(None), None, None, None, "")
    if not sweep_id:
        return ("No sweep yet: write a sweep file (or take the base from the New run form) and **Start sweep**.",
                *empty[1:])
    try:
        d = sweeps.sweep_to_dict(int(sweep_id))
    except (JobError, ValueError) as exc:
        return (f"**Error:** {md_text(exc)}", *empty[1:])
    done = sum(t["state"] in ("complete", "pruned", "failed") for t in d["trials"])
    status = (f"**Sweep #{d['id']}** {md_text(d['name'])} — **{d['status']}**, {done} of {d['trials_planned']} "
              f"trials done ({d['parallel']} at a time), {d['direction']} {md_text(d['objective'])}")
    if d["best_run"] is not None:
        status += (f"\n\nBest so far: **run #{d['best_run']}**, {md_text(d['objective'])} {d['best_value']:.4f} "
                   f"with {md_text(_fmt_params(d['best_params'] or {}))}")
    if d.get("error"):
        status += f"\n\n**Error:** {md_text(d['error'], 400)}"
    best_plot = imp_plot = None
    st = studies.load(d["id"])
    if st is not None:
        curve = studies.best_so_far(st)
        if curve:
            best_plot = pd.DataFrame([{"trial": p["trial"], "value": v, "series": s} for p in curve
                                      for s, v in (("trial value", p["value"]), ("best so far", p["best"]))])
        imp = studies.importance(st)
        if imp:
            imp_plot = pd.DataFrame({"parameter": list(imp), "importance": list(imp.values())})
    par, axes, who = parallel_frame(d)
    axes_note = (f"Each axis scaled 0-1 (a range from low to high, choices in their order; on {md_text(axes[-1])}, "
                 "0 = the lowest complete trial's; a pruned trial's line stops before it). "
                 f"Lines: {md_text(who)}") if axes else ""
    par_plot = gr.update(value=par, sort=axes) if par is not None else None
    return status, trials_frame(d), best_plot, imp_plot, par_plot, axes_note


def build_section(form_inputs: dict) -> None:
    """The Sweep accordion (below the run comparison). ``form_inputs``: the New run form's {field: component}, read
    by "Base = the New run form"."""
    keys = list(form_inputs)
    with gr.Accordion("Sweep — search hyperparameters (Optuna)", open=False, elem_id="sweep") as acc:
        gr.Markdown("A sweep trains one run per trial, each a normal run in the queue above; weak trials are stopped "
                    "early from their eval loss (pruned, with a checkpoint). Same file as `python -m core sweep "
                    "--config sweep.yaml`.")
        with gr.Row(equal_height=False):
            with gr.Column(scale=2, min_width=320):
                yaml_box = gr.Code(EXAMPLE, language="yaml", label="Sweep file (YAML)", interactive=True,
                                   elem_id="sweep-yaml")
                from_form = gr.Button("Base = the New run form", size="sm", elem_id="sweep-from-form")
                with gr.Row():
                    objective = gr.Dropdown(["eval_loss", *METRIC_OBJECTIVES], value="eval_loss", label="Objective",
                                            info="eval_loss is minimised; an Evaluate metric is measured on held-out "
                                                 "rows after each trial", scale=2, elem_id="sweep-objective")
                    trials = gr.Number(6, label="Trials", precision=0, minimum=1, scale=1, elem_id="sweep-trials")
                    parallel = gr.Number(1, label="Parallel", precision=0, minimum=1, scale=1,
                                         elem_id="sweep-parallel")
                start_btn = gr.Button("Start sweep", variant="primary", elem_id="sweep-start")
                msg = gr.Markdown(elem_id="sweep-msg")
            with gr.Column(scale=3, min_width=420):
                with gr.Row():
                    picked = gr.Dropdown(choices=[], label="Sweep", allow_custom_value=True, scale=3,
                                         elem_id="sweep-picked")
                    stop_btn = gr.Button("Stop sweep", variant="stop", scale=1, elem_id="sweep-stop")
                status = gr.Markdown(elem_id="sweep-status")
                table = gr.Dataframe(headers=TRIAL_HEADERS, interactive=False, wrap=True, max_height=260,
                                     elem_id="sweep-trials-table")
                with gr.Row():
                    best_plot = gr.LinePlot(x="trial", y="value", color="series", title="Best so far", height=220,
                                            color_map={"trial value": "#a5b4fc", "best so far": "#6366f1"},
                                            elem_id="sweep-best")
                    imp_plot = gr.BarPlot(x="parameter", y="importance", title="Parameter importance", height=220,
                                          elem_id="sweep-importance")
                # a fixed colour domain (the ranks): without it the plot keeps the series of its first frame
                par_plot = gr.LinePlot(x="axis", y="position", color="trial", title="Parallel coordinates",
                                       height=240, x_title="parameter", y_title="position (0-1)",
                                       color_map=RANK_COLOURS, elem_id="sweep-parallel-plot")
                axes_md = gr.Markdown(elem_id="sweep-axes")
                with gr.Row():
                    steps = gr.Number(20, label="More steps", precision=0, minimum=1, scale=1)
                    cont_btn = gr.Button("Continue the best trial (new run from its adapter)", scale=2,
                                         elem_id="sweep-continue")
                action_msg = gr.Markdown(elem_id="sweep-action")
        timer = gr.Timer(REFRESH_S, active=False)

    view_outputs = [status, table, best_plot, imp_plot, par_plot, axes_md]

    def refresh(current):
        choices = sweep_choices()
        ids = [v for _, v in choices]
        value = current if current in ids else (ids[0] if ids else None)
        return gr.update(choices=choices, value=value), *sweep_view(value)

    def on_start(request: gr.Request, text, obj, n, par):
        message, sid = start_sweep(text, obj, n, par, owner=user_of(request))
        if sid is None:
            return message, gr.update()
        return message, gr.update(choices=sweep_choices(), value=sid)

    def on_from_form(text, *values):
        return base_from_form(text, dict(zip(keys, values)))

    def on_stop(request: gr.Request, sid):
        if not sid:
            return "Pick a sweep first."
        try:
            check_can_manage(sweeps.get_sweep(int(sid)), user_of(request), "stop")  # the owner (or an admin)
            run = sweeps.stop_sweep(int(sid), timeout_s=30)
        except NotAllowed as exc:
            return f"**Not allowed:** {md_text(exc)}"
        except (JobError, ValueError) as exc:
            return f"**Error:** {md_text(exc)}"
        return f"Sweep #{run.id} {run.status}: its running trials were asked to stop (with a checkpoint)."

    def on_continue(request: gr.Request, sid, n):
        if not sid:
            return "Pick a sweep first."
        try:
            user = user_of(request)
            check_can_manage(sweeps.get_sweep(int(sid)), user, "continue")
            run = sweeps.continue_best(int(sid), int(n or 20), owner=user)
        except NotAllowed as exc:
            return f"**Not allowed:** {md_text(exc)}"
        except (JobError, ConfigError, ValueError) as exc:
            return f"**Error:** {md_text(exc)}"
        return f"Run #{run.id} queued: it continues the best trial (run #{run.parent_run_id}) — see **Runs** above."

    acc.expand(lambda: gr.Timer(active=True), None, [timer])
    acc.collapse(lambda: gr.Timer(active=False), None, [timer])
    acc.expand(refresh, [picked], [picked, *view_outputs])
    from_form.click(on_from_form, [yaml_box, *form_inputs.values()], [yaml_box, msg])
    start_btn.click(on_start, [yaml_box, objective, trials, parallel], [msg, picked])
    picked.change(sweep_view, [picked], view_outputs)
    stop_btn.click(on_stop, [picked], [action_msg], concurrency_limit=None)
    cont_btn.click(on_continue, [picked, steps], [action_msg])
    timer.tick(refresh, [picked], [picked, *view_outputs], show_progress="hidden", concurrency_limit=None)

