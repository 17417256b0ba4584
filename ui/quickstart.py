"""The quick-start panel above the tabs: the demo task end to end, one click per stage (core.quickstart).

Its status is read from the database on a timer, so it shows the same progress after a reload, in a second browser,
or when a stage was done by hand in its tab. It is each person's own quick start (core.quickstart.state by user).
"""
from __future__ import annotations

import html

import gradio as gr
import pandas as pd

from core import quickstart as qs
from core.runs import JobError
from ui.common import fmt_duration, fmt_num, fmt_splits, if_changed, md_text, progress_html, user_of

REFRESH_S = 2.0
IDLE_REFRESH_S = 6.0  # the panel's refresh while no stage's job runs
GOTO_TABS = ["Data", "Estimate", "Train", "Evaluate"]  # the tabs stages 1-4 stand for (stage 5 opens its own)
STAGES = ["Load the demo task", "Estimate", "Train (LoRA)", "Evaluate base vs tuned", "Open the Playground"]
# measured on an idle 2-core CPU at the default settings (bench/first_ten_minutes.py, bench/RESULTS.md)
MEASURED = {"train_s": 95, "evaluate_s": 40, "total_s": 160}
# the Playground's Send button into view once stage 5 switched to it (below the panel and its report)
SCROLL_TO_SEND = ("() => { const go = () => { const b = document.getElementById('pg-send'); if (b) "
                  "b.scrollIntoView({block: 'center'}); }; setTimeout(go, 150); setTimeout(go, 700); }")


def _mark(done: bool, busy: bool = False) -> str:
    return "✓" if done else ("…" if busy else "○")  # plain symbols: emoji fonts are not everywhere


def _code(text: str, limit: int = 200) -> str:
    """Model output as an inline code span: shown as text (markdown escapes HTML inside it), one line."""
    text = " ".join((text or "").split())[:limit].replace("`", "'")
    return f"`{text}`" if text else "*(empty)*"


def _defaults() -> bool:
    """The quick start runs at its default size (the measured times hold for those)."""
    return qs.train_config("1").max_steps == qs.TRAIN["max_steps"] and qs.eval_rows() == qs.EVAL["limit"]


def panel_label() -> str:
    when = (f"about {round(MEASURED['total_s'] / 60)} minutes measured on an idle 2-core CPU, longer on a busy one"
            if _defaults() else "short settings")
    return f"Quick start — the demo task end to end ({when}; every stage shows its progress)"


def _job_line(job) -> str:
    """What a job is doing, in the words its tab uses: step/total, percent, ETA (progress_html's text)."""
    steps = f"step {job.step}/{job.max_steps or '?'}"
    pct = f"{100 * job.step / job.max_steps:.0f}%" if job.max_steps else ""
    eta = f"ETA {fmt_duration(job.eta_s)}" if job.eta_s is not None and job.status == "running" else ""
    return " · ".join(b for b in (steps, pct, eta) if b)


def status_markdown(extra: str = "", user: str = "", st=None) -> str:
    """Where ``user``'s quick start stands, a line per stage with what happened and which tab did it."""
    try:
        st = st if st is not None else qs.state(user)
    except Exception as exc:  # noqa: BLE001 - the panel must never break the page
        return f"Quick start status unavailable: {html.escape(str(exc))}"
    lines = []
    ds = st.dataset
    lines.append(f"{_mark(ds is not None)} **1 · Demo task** — " + (
        f"dataset #{ds.id} `{ds.name}`: {ds.rows} support messages → JSON answers, split {fmt_splits(ds.splits)} "
        "(see the **Data** tab)" if ds is not None else
        (f"**cannot load:** {md_text(st.conflict)}" if st.conflict else
         "turn support messages into JSON: load 160 generated rows")))
    lines.append(f"{_mark(st.estimated)} **2 · Estimate** — the pre-flight memory check every run gets "
                 "(the **Estimate** tab has every term)")
    run = st.run
    if run is None:
        steps = qs.train_config(ds.id if ds is not None else "1").max_steps
        took = f", ~{MEASURED['train_s']} s measured on an idle 2-core CPU" if _defaults() else ""
        lines.append(f"{_mark(False)} **3 · Train** — a {steps}-step LoRA run on SmolLM2-135M-Instruct{took}")
    else:
        busy = not run.status.is_finished
        loss = f", loss {fmt_num(run.last_loss)}" if run.last_loss else ""
        err = f" — {html.escape((run.error or '').splitlines()[0])}" if run.error and run.status != "succeeded" else ""
        lines.append(f"{_mark(run.status == 'succeeded', busy)} **3 · Train** — training job #{run.id} "
                     f"**{run.status.value}**, {_job_line(run)}{loss}{err} (live curves in the **Train** tab)")
    ev, job = st.evaluation, st.evaluation_job
    if ev is not None:
        lines.append(f"✓ **4 · Evaluate** — {ev.headline} base **{fmt_num(ev.headline_base, '{:.3f}')}** → tuned "
                     f"**{fmt_num(ev.headline_tuned, '{:.3f}')}** on {ev.n} held-out rows (every example in the "
                     "**Evaluate** tab)")
    elif job is not None:
        busy = not job.status.is_finished
        err = f" — {html.escape((job.error or '').splitlines()[0])}" if job.error else ""
        lines.append(f"{_mark(False, busy)} **4 · Evaluate** — evaluation job #{job.id} **{job.status.value}**, "
                     f"{_job_line(job)}{err} (the **Evaluate** tab shows the same)")
    else:
        took = f", ~{MEASURED['evaluate_s']} s measured on an idle 2-core CPU" if _defaults() else ""
        lines.append(f"{_mark(False)} **4 · Evaluate** — base vs tuned on up to {qs.eval_rows()} of the run's "
                     f"held-out rows{took}")
    if st.played:
        lines.append("✓ **5 · Playground** — both models answered side by side (send more in the **Playground** "
                     "tab)")
    else:
        ready = st.run is not None and st.run.status == "succeeded"
        lines.append(f"{_mark(False)} **5 · Playground** — both models side by side on a new support message"
                     + (": ready, press **5 · Open the Playground**, then **Send to both**" if ready else ""))
    return "\n\n".join(lines) + (f"\n\n{extra}" if extra else "")


def progress_block(st) -> str:
    """The bar of the job the quick start waits for (the same bar and words as its tab), how long it has run, and
    the last thing its log said — so a busy machine looks busy, not stuck. Empty when nothing runs."""
    from core import runs

    job = None
    if st.run is not None and not st.run.status.is_finished:
        job, tps = st.run, st.run.tokens_per_s
    elif st.evaluation_job is not None and not st.evaluation_job.status.is_finished and st.evaluation is None:
        job, tps = st.evaluation_job, None
    if job is None:
        return ""
    what = "Training" if job.kind == "train" else "Evaluating"
    bar = progress_html(job.step, job.max_steps, job.status.value, job.eta_s, tps)
    since = runs.duration_s(job)
    last = ""
    try:
        tail = [ln for ln in runs.log_tail(job.id, max_lines=6).splitlines() if ln.strip() and "%|" not in ln]
        if tail:
            text = tail[-1].split("] ", 1)[-1] if tail[-1].startswith("[") else tail[-1]
            last = html.escape(text if len(text) <= 160 else text[:160] + "…")
    except Exception:  # noqa: BLE001, S110 - the bar shows without the log line
        pass
    facts = [f"{what} (job #{job.id})"]
    if since is not None:
        facts.append(f"running for {fmt_duration(since)}")
    if last:
        facts.append(f"last log line: <code>{last}</code>")
    return f'<div id="qs-job">{bar}<div class="fts-status">{" · ".join(facts)}</div></div>'


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


def refresh(user: str = "", cache: dict | None = None):
    """Timer/page-load: the stage lines, the running job's bar, the report and loss curve once evaluated.
    ``cache``: what this page was sent last (the report and curve are sent again only when they change)."""
    cache = dict(cache or {})
    try:
        st = qs.state(user)
    except Exception:  # noqa: BLE001
        return status_markdown(user=user), gr.update(), gr.update(), gr.update(), cache, gr.update()
    block = progress_block(st)
    status = if_changed(cache, "status", status_markdown(user=user, st=st))
    # no empty gap under the stages while nothing runs
    bar = if_changed(cache, "bar", gr.update(value=block, visible=bool(block)), block)
    pace = REFRESH_S if block else IDLE_REFRESH_S  # every 2 s while a stage's job runs
    timer = if_changed(cache, "pace", gr.Timer(value=pace), pace)
    key = st.evaluation.id if st.evaluation is not None else None
    if cache.get("report") == key:
        return status, bar, gr.update(), gr.update(), cache, timer
    cache["report"] = key
    frame = loss_frame(st.run) if st.evaluation else None
    return (status, bar, report_markdown(st.evaluation),
            gr.update(value=frame, visible=True) if frame is not None else gr.update(visible=False), cache, timer)


def do_stage(stage: int, owner: str = ""):
    """One button: run that stage; returns (status, message)."""
    try:
        if stage == 1:
            ds = qs.load_demo(owner)
            msg = f"Loaded dataset #{ds.id} ({ds.rows} rows). Next: **2 · Estimate**."
        elif stage == 2:
            st = qs.state(owner)
            if st.dataset is None:
                raise qs.QuickStartError(st.conflict or "load the demo task first (stage 1)")
            est = qs.estimate(st.dataset.id, owner)
            peak = est["peak_bytes"] / 1024**3 if est["peak_bytes"] else None
            msg = (f"Estimated peak memory **{fmt_num(peak, '{:.2f}')} GB** on {est['device']}: "
                   f"{html.escape(est['message'])}. Next: **3 · Train**.")
        elif stage == 3:
            run = qs.start_training(owner)
            msg = (f"Started training job #{run.id} — it keeps going if you close this page; its progress bar is "
                   "below.")
        elif stage == 4:
            job = qs.start_evaluation(owner)
            msg = (f"Started evaluation job #{job.id}: base and tuned answer the same {qs.eval_rows()} held-out "
                   "messages; its progress bar is below.")
        else:
            msg = ""
    except (qs.QuickStartError, JobError, ValueError) as exc:
        msg = f"**Not yet:** {html.escape(str(exc))}"
    return status_markdown(user=owner), msg


def build_panel(open_: bool) -> dict:
    """The panel's components (wired by :func:`wire` once the tabs exist)."""
    with gr.Accordion(panel_label(), open=open_, elem_id="qs-panel") as panel:
        gr.Markdown("Fine-tune the embedded SmolLM2-135M-Instruct to turn customer-support messages into JSON, then "
                    "see the difference. One click per stage; each one can also be done by hand in its tab.")
        with gr.Row():
            buttons = [gr.Button(f"{i} · {name}", size="sm", elem_id=f"qs-stage-{i}")
                       for i, name in enumerate(STAGES, 1)]
        message = gr.Markdown(elem_id="qs-message")
        status = gr.Markdown(elem_id="qs-status")
        progress = gr.HTML(elem_id="qs-progress", visible=False)
        with gr.Row():
            gr.Markdown("See each stage where it happened:")
            goto = {tab: gr.Button(f"→ {tab} tab", size="sm", variant="secondary", elem_id=f"qs-go-{tab}")
                    for tab in GOTO_TABS}
        with gr.Row():
            report = gr.Markdown(elem_id="qs-report")
            curve = gr.LinePlot(x="step", y="loss", title="Training loss", height=220, visible=False,
                                elem_id="qs-curve")
        cache = gr.State({})
    return {"panel": panel, "buttons": buttons, "message": message, "status": status, "progress": progress,
            "report": report, "curve": curve, "goto": goto, "cache": cache}


def _select(tab: str):
    return lambda: gr.update(selected=tab)


# which tabs' lists a stage changes: they are read again right after it (the landing tab shows its lists at once)
STAGE_LISTS = {1: ("Train", "Estimate", "Data"), 3: ("Train",), 4: ("Evaluate",)}


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

    status, message, progress, cache = parts["status"], parts["message"], parts["progress"], parts["cache"]
    # it polls while the panel is open (every event costs a page this size ~0.1 s of browser time, and a closed panel
    # shows none of what it refreshes): every 2 s while a stage's job runs, more slowly otherwise (refresh)
    timer = gr.Timer(REFRESH_S, active=parts["panel"].open)
    outputs = [status, progress, parts["report"], parts["curve"], cache, timer]

    def stage_handler(i: int):
        def handler(request: gr.Request):
            return do_stage(i, user_of(request))
        return handler

    def tick(cache_value, request: gr.Request):
        return refresh(user_of(request), cache_value)

    for i, btn in enumerate(parts["buttons"][:4], 1):
        event = btn.click(stage_handler(i), None, [status, message]).then(tick, [cache], outputs,
                                                                         show_progress="hidden")
        for tab in STAGE_LISTS.get(i, ()):
            if tab in loaders:
                fn, inputs, outs = loaders[tab]
                event = event.then(fn, inputs, outs, show_progress="hidden")
    pg = playground.COMPONENTS

    def open_playground(request: gr.Request):
        user = user_of(request)
        st = qs.state(user)
        if st.run is None or st.run.status != "succeeded":
            return (gr.update(), *[gr.update()] * 5, status_markdown(user=user, st=st),
                    "**Not yet:** the quick-start run has to finish first (stage 3)")
        from core.data.demo import DEMO_SYSTEM_PROMPT

        choices = playground.model_choices()
        return (gr.update(selected="Playground"), gr.update(choices=choices, value="default"),
                gr.update(choices=choices, value=f"run:{st.run.id}"), gr.update(value=qs.demo_message()),
                gr.update(value=DEMO_SYSTEM_PROMPT), gr.update(value=96), status_markdown(user=user, st=st),
                "The Playground has the base (A) and the tuned run (B) and a new support message: press **Send to "
                "both** (below); stage 5 is checked once both have answered.")

    parts["buttons"][4].click(open_playground, None,
                              [tabs, pg["model_a"], pg["model_b"], pg["prompt"], pg["system"], pg["max_new"], status,
                               message]).then(None, None, None, js=SCROLL_TO_SEND)
    timer.tick(tick, [cache], outputs, show_progress="hidden", concurrency_limit=None)
    parts["panel"].expand(lambda: gr.Timer(active=True), None, timer, show_progress="hidden").then(
        tick, [cache], outputs, show_progress="hidden")
    parts["panel"].collapse(lambda: gr.Timer(active=False), None, timer, show_progress="hidden")

    def on_load(cache_value, request: gr.Request):
        """A page opens: the panel open while this person's quick start waits for them (core.quickstart.panel_open
        — not from when the app was built), and its status."""
        user = user_of(request)
        try:
            open_ = qs.panel_open(user)
        except Exception:  # noqa: BLE001 - the page opens as it was built
            open_ = None
        *shown, pace = refresh(user, cache_value)
        if open_ is not None:  # the pace refresh sent (noted in the panel's cache), and whether it ticks at all
            pace = gr.Timer(value=shown[-1].get("sent", {}).get("pace", REFRESH_S), active=open_)
        return (gr.update() if open_ is None else gr.update(open=open_), *shown, pace)

    demo.load(on_load, [cache], [parts["panel"], *outputs], show_progress="hidden")
