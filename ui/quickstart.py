"""The quick-start panel above the tabs: the demo task end to end, one click per stage (core.quickstart).

Its status is read from the database on a timer, so it shows the same progress after a reload, in a second browser,
or when a stage was done by hand in its tab.
"""
from __future__ import annotations

import html

import gradio as gr
import pandas as pd

from core import quickstart as qs
from core.runs import JobError
from ui.common import fmt_num

REFRESH_S = 2.0
GOTO_TABS = ["Data", "Estimate", "Train", "Evaluate"]  # the tabs stages 1-4 stand for (stage 5 opens its own)
STAGES = ["Load the demo task", "Estimate", "Train (LoRA, ~1 min on a CPU)", "Evaluate base vs tuned",
          "Open the Playground"]


def _mark(done: bool, busy: bool = False) -> str:
    return "✓" if done else ("…" if busy else "○")  # plain symbols: emoji fonts are not everywhere


def _code(text: str, limit: int = 200) -> str:
    """Model output as an inline code span: shown as text (markdown escapes HTML inside it), one line."""
    text = " ".join((text or "").split())[:limit].replace("`", "'")
    return f"`{text}`" if text else "*(empty)*"


def status_markdown(extra: str = "") -> str:
    """Where the quick start stands, a line per stage with what happened and which tab did it."""
    try:
        st = qs.state()
    except Exception as exc:  # noqa: BLE001 - the panel must never break the page
        return f"Quick start status unavailable: {html.escape(str(exc))}"
    lines = []
    ds = st.dataset
    lines.append(f"{_mark(ds is not None)} **1 · Demo task** — " + (
        f"dataset #{ds.id} `{ds.name}`: {ds.rows} support messages → JSON answers, split {ds.splits} "
        "(see the **Data** tab)" if ds is not None else "turn support messages into JSON: load 160 generated rows"))
    lines.append(f"{_mark(st.run is not None)} **2 · Estimate** — the pre-flight check every run gets "
                 "(the **Estimate** tab has every term)")
    run = st.run
    if run is None:
        steps = qs.train_config(ds.id if ds is not None else "1").max_steps
        lines.append(f"{_mark(False)} **3 · Train** — a {steps}-step LoRA run on SmolLM2-135M-Instruct")
    else:
        busy = not run.status.is_finished
        prog = f"step {run.step}/{run.max_steps or '?'}" + (f", loss {fmt_num(run.last_loss)}" if run.last_loss else "")
        err = f" — {html.escape((run.error or '').splitlines()[0])}" if run.error and run.status != "succeeded" else ""
        lines.append(f"{_mark(run.status == 'succeeded', busy)} **3 · Train** — run #{run.id} **{run.status.value}**, "
                     f"{prog}{err} (live curves in the **Train** tab)")
    ev, job = st.evaluation, st.evaluation_job
    if ev is not None:
        lines.append(f"✓ **4 · Evaluate** — {ev.headline} base **{fmt_num(ev.headline_base, '{:.3f}')}** → tuned "
                     f"**{fmt_num(ev.headline_tuned, '{:.3f}')}** on {ev.n} held-out rows (every example in the "
                     "**Evaluate** tab)")
    elif job is not None:
        busy = not job.status.is_finished
        err = f" — {html.escape((job.error or '').splitlines()[0])}" if job.error else ""
        lines.append(f"{_mark(False, busy)} **4 · Evaluate** — job #{job.id} **{job.status.value}**{err}")
    else:
        lines.append(f"{_mark(False)} **4 · Evaluate** — base vs tuned on up to {qs.eval_rows()} of the run's "
                     "held-out rows")
    lines.append(f"{_mark(False)} **5 · Playground** — both models side by side on a new support message"
                 + (": ready, press **5 · Open the Playground**" if ev is not None else ""))
    return "\n\n".join(lines) + (f"\n\n{extra}" if extra else "")


def report_markdown(ev) -> str:
    """The "what changed" report of an evaluated run: headline base → tuned and three changed answers."""
    if ev is None:
        return ""
    rep = qs.what_changed(ev)
    out = [f"#### What changed\n**{rep['headline']}**: base {fmt_num(rep['base'], '{:.3f}')} → tuned "
           f"**{fmt_num(rep['tuned'], '{:.3f}')}** on {rep['n']} held-out rows."]
    for i, ex in enumerate(rep["examples"], 1):
        out.append(f"**Example {i}.** {html.escape(' '.join(ex['prompt'].split())[:300])}\n\n"
                   f"- base: {_code(ex['base'])}\n- tuned: {_code(ex['tuned'])}")
    return "\n\n".join(out)


def loss_frame(run) -> pd.DataFrame | None:
    if run is None:
        return None
    from core import runs

    rows = [(m.step, m.loss) for m in runs.run_metrics(run.id) if m.loss is not None]
    return pd.DataFrame(rows, columns=["step", "loss"]) if rows else None


def refresh():
    """Timer/page-load: the stage lines, the report and loss curve once evaluated."""
    try:
        st = qs.state()
    except Exception:  # noqa: BLE001
        return status_markdown(), "", gr.update(visible=False)
    frame = loss_frame(st.run) if st.evaluation else None
    return (status_markdown(), report_markdown(st.evaluation),
            gr.update(value=frame, visible=True) if frame is not None else gr.update(visible=False))


def do_stage(stage: int, owner: str = ""):
    """One button: run that stage; returns (status, message)."""
    try:
        if stage == 1:
            ds = qs.load_demo()
            msg = f"Loaded dataset #{ds.id} ({ds.rows} rows). Next: **2 · Estimate**."
        elif stage == 2:
            st = qs.state()
            if st.dataset is None:
                raise qs.QuickStartError("load the demo task first (stage 1)")
            est = qs.estimate(st.dataset.id)
            peak = est["peak_bytes"] / 1024**3 if est["peak_bytes"] else None
            msg = (f"Estimated peak memory **{fmt_num(peak, '{:.2f}')} GB** on {est['device']}: "
                   f"{html.escape(est['message'])}. Next: **3 · Train**.")
        elif stage == 3:
            run = qs.start_training(owner)
            msg = f"Started run #{run.id} — it keeps going if you close this page; its progress is below."
        elif stage == 4:
            job = qs.start_evaluation()
            msg = (f"Started evaluation job #{job.id}: base and tuned answer the same {qs.eval_rows()} held-out "
                   "messages (progress below).")
        else:
            msg = ""
    except (qs.QuickStartError, JobError, ValueError) as exc:
        msg = f"**Not yet:** {html.escape(str(exc))}"
    return status_markdown(), msg


def build_panel(open_: bool) -> dict:
    """The panel's components (wired by :func:`wire` once the tabs exist)."""
    with gr.Accordion("Quick start — the demo task end to end (about 3 minutes on a CPU)", open=open_,
                      elem_id="qs-panel") as panel:
        gr.Markdown("Fine-tune the embedded SmolLM2-135M-Instruct to turn customer-support messages into JSON, then "
                    "see the difference. One click per stage; each one can also be done by hand in its tab.")
        with gr.Row():
            buttons = [gr.Button(f"{i} · {name}", size="sm", elem_id=f"qs-stage-{i}")
                       for i, name in enumerate(STAGES, 1)]
        message = gr.Markdown(elem_id="qs-message")
        status = gr.Markdown(elem_id="qs-status")
        with gr.Row():
            gr.Markdown("See each stage where it happened:")
            goto = {tab: gr.Button(f"→ {tab} tab", size="sm", variant="secondary", elem_id=f"qs-go-{tab}")
                    for tab in GOTO_TABS}
        with gr.Row():
            report = gr.Markdown(elem_id="qs-report")
            curve = gr.LinePlot(x="step", y="loss", title="Training loss", height=220, visible=False,
                                elem_id="qs-curve")
    return {"panel": panel, "buttons": buttons, "message": message, "status": status, "report": report,
            "curve": curve, "goto": goto}


def _select(tab: str):
    return lambda: gr.update(selected=tab)


def wire(demo: gr.Blocks, parts: dict, tabs: gr.Tabs, loaders: dict | None = None) -> None:
    """Stage buttons, the "→ tab" links (switch tab, then read its lists as opening it by hand does), the timer.

    ``loaders``: tab name → (fn, inputs, outputs), the lists a tab reads when it is opened."""
    from ui import playground

    loaders = loaders or {}
    for tab, btn in parts["goto"].items():
        event = btn.click(_select(tab), None, tabs, show_progress="hidden")
        if tab in loaders:
            fn, inputs, outputs = loaders[tab]
            event.then(fn, inputs, outputs, show_progress="hidden")

    status, message = parts["status"], parts["message"]
    def stage_handler(i: int):
        def handler(request: gr.Request):
            from ui.common import user_of

            return do_stage(i, user_of(request))
        return handler

    for i, btn in enumerate(parts["buttons"][:4], 1):
        btn.click(stage_handler(i), None, [status, message])
    pg = playground.COMPONENTS

    def open_playground():
        st = qs.state()
        if st.run is None or st.run.status != "succeeded":
            return (gr.update(), *[gr.update()] * 5, status_markdown(),
                    "**Not yet:** the quick-start run has to finish first (stage 3)")
        from core.data.demo import DEMO_SYSTEM_PROMPT

        choices = playground.model_choices()
        return (gr.update(selected="Playground"), gr.update(choices=choices, value="default"),
                gr.update(choices=choices, value=f"run:{st.run.id}"), gr.update(value=qs.demo_message()),
                gr.update(value=DEMO_SYSTEM_PROMPT), gr.update(value=96), status_markdown(),
                "The Playground has the base (A) and the tuned run (B) and a new support message: press **Send to "
                "both**.")

    parts["buttons"][4].click(open_playground, None,
                              [tabs, pg["model_a"], pg["model_b"], pg["prompt"], pg["system"], pg["max_new"], status,
                               message])
    timer = gr.Timer(REFRESH_S)
    outputs = [status, parts["report"], parts["curve"]]
    timer.tick(refresh, None, outputs, show_progress="hidden", concurrency_limit=None)
    demo.load(refresh, None, outputs, show_progress="hidden")
