"""Evaluate tab: base vs fine-tuned on held-out data — one table of metrics with the delta, every example, filters,
exports, and runs compared on the same evaluation set.

Evaluations are jobs (core.runs): they run in their own process, survive a closed tab and show progress here. Only
binds components to core calls: no ML, no SQL here. Handlers are module-level so tests call them without a browser.
"""
from __future__ import annotations

import html
import tempfile
from pathlib import Path

import gradio as gr
import pandas as pd

from core import runs
from core.evaluate import results
from core.evaluate.config import EvalConfig, EvalConfigError
from core.evaluate.metrics import HIGHER_IS_BETTER
from core.evaluate.submit import submit_evaluation
from core.jobconfig import choices_of
from core.runs import JobError
from ui.common import fmt_num, is_mine, job_progress, md_text, mine_box, owner_filter
from ui.judge import judge_box

OWN_SPLIT = "__run__"
SPLIT_CHOICES = ["auto", "all", "test", "validation", "train"]
TASK_CHOICES = ["auto", "arc", "openbookqa", "hellaswag", "truthfulqa", "mmlu"]
FEWSHOT_FROM = [("the scored rows (each question left out)", ""), ("train", "train"), ("validation", "validation"),
                ("test", "test"), ("all", "all")]
EVAL_COLUMNS = ["id", "model", "on", "n", "metric", "base → tuned", "status", "by"]
METRIC_COLUMNS = ["metric", "base", "tuned", "delta"]
EXAMPLE_COLUMNS = ["#", "prompt", "reference", "base", "tuned", "base score", "tuned score", "note"]
SKIP_METRICS = {"n", "per_field"}


def run_choices() -> list[tuple[str, str]]:
    """Training runs that have something to evaluate (an adapter or a model)."""
    out = []
    for r in runs.list_runs(kind="train"):
        if r.adapter_path:
            out.append((f"#{r.id} {r.name} ({r.method}, {r.status.value})", str(r.id)))
    return out


def dataset_choices() -> list[tuple[str, str]]:
    from core.data import list_datasets

    out = [("the run's own held-out rows", OWN_SPLIT)]
    for d in list_datasets():
        if d.kind in ("sft", "multiple_choice", "preference"):
            splits = ", ".join(f"{k} {v}" for k, v in (d.splits or {}).items() if v)
            what = "preference pairs: the chosen answers are the references" if d.kind == "preference" else d.kind
            out.append((f"#{d.id} {d.name} ({what}; {splits})", str(d.id)))
    return out


def _evaluations(who: str | None = None) -> tuple[list, dict]:
    """(evaluations made by ``who`` — everyone's for None —, evaluate jobs by id). An evaluation is its job's
    owner's."""
    jobs = {r.id: r for r in runs.list_runs(kind="evaluate")}
    evs = [e for e in results.list_evaluations() if is_mine(jobs[e.job_id].owner if e.job_id in jobs else "", who)]
    return evs, jobs


def evaluation_choices(who: str | None = None) -> list[tuple[str, str]]:
    return [(f"#{e.id} {e.tuned_label} on {e.dataset_ref} [{e.split}]", str(e.id)) for e in _evaluations(who)[0]]


def evaluations_frame(who: str | None = None) -> pd.DataFrame:
    rows = []
    evs, jobs = _evaluations(who)
    seen_jobs = {e.job_id for e in evs}  # an evaluation is its job's owner's: filtered together
    for e in evs:
        owner = jobs[e.job_id].owner if e.job_id in jobs else ""
        rows.append([e.id, e.tuned_label, f"{e.dataset_ref} [{e.split}]", e.n, e.headline,
                     f"{fmt_num(e.headline_base)} → {fmt_num(e.headline_tuned)}", "done", owner])
    for j in jobs.values():  # evaluations still running (or that failed) have no row yet
        if j.id not in seen_jobs and is_mine(j.owner, who):
            prog = f"{j.step}/{j.max_steps}" if j.max_steps else ""
            rows.append(["-", j.name, f"{j.dataset_ref} [{(j.config or {}).get('split', '')}]", "", "", "",
                         f"job #{j.id} {j.status.value} {prog}".strip(), j.owner])
    return pd.DataFrame(rows, columns=EVAL_COLUMNS)


def start_evaluation(run_id: str | None, folder: str, base: str, dataset: str | None, split: str, limit,
                     mode: str, mc_style: str, lm_task: str, max_new_tokens, mc_task: str = "auto", num_fewshot=0,
                     fewshot_split: str = "", owner: str = "") -> tuple[str, str | None]:
    """The Start button: (message, evaluate job id or None). Bad input: a message, nothing queued. An empty sample
    size: 200 rows for generation, every row for multiple choice."""
    mode_value = {"multiple choice": "multiple_choice", "lm-eval task": "lm_eval"}.get(mode, "generation")
    data = {
        "run_id": int(run_id) if run_id and str(run_id).isdigit() else None,
        "tuned": (folder or "").strip() or None,
        "base": (base or "").strip() or None,
        "dataset": None if dataset in (None, "", OWN_SPLIT) else str(dataset),
        "split": None if split in (None, "", "auto") else split,
        "limit": int(limit) if limit else None,
        "mode": mode_value,
        "mc_style": mc_style or "arc",
        "mc_task": None if mc_task in (None, "", "auto") or mc_style != "native" else mc_task,
        "num_fewshot": int(num_fewshot) if num_fewshot else None,
        "fewshot_split": (fewshot_split or None) if num_fewshot else None,
        "lm_eval_task": (lm_task or "").strip() or None,
        "max_new_tokens": int(max_new_tokens or 128),
    }
    if data["run_id"] is not None and data["tuned"]:
        return "**Error:** pick a run *or* type a folder, not both.", None
    from core.access import PathNotAllowed, check_user_path

    try:
        check_user_path(data["tuned"], "the adapter / model folder")
        check_user_path(data["base"], "the base model")
    except PathNotAllowed as exc:
        return f"**Error:** {md_text(exc)}", None
    try:
        cfg = EvalConfig.from_dict({k: v for k, v in data.items() if v is not None})
        job = submit_evaluation(cfg, owner=owner)
    except (EvalConfigError, JobError) as exc:
        return f"**Error:** {html.escape(str(exc))}", None
    return f"Evaluation job #{job.id} **{job.status.value}**: it runs in its own process; progress below.", str(job.id)


def metrics_frame(ev) -> pd.DataFrame:
    m = ev.metrics or {}
    base, tuned, delta = m.get("base", {}), m.get("tuned", {}), m.get("delta", {})
    rows = []
    for k, v in base.items():
        if k in SKIP_METRICS or not isinstance(v, (int, float)) or isinstance(v, bool):
            continue
        d = delta.get(k)
        better = None if d is None or d == 0 else (d > 0) == HIGHER_IS_BETTER.get(k, True)
        arrow = "" if better is None else (" (better)" if better else " (worse)")
        rows.append([k, fmt_num(v), fmt_num(tuned.get(k)), (fmt_num(d) + arrow) if d is not None else "-"])
    for field, acc in (base.get("per_field") or {}).items():
        t = (tuned.get("per_field") or {}).get(field)
        rows.append([f"field: {field}", fmt_num(acc), fmt_num(t), fmt_num(None if t is None else t - acc)])
    return pd.DataFrame(rows, columns=METRIC_COLUMNS)


def examples_frame(ev, which: str = "all", limit: int = 500) -> pd.DataFrame:
    rows = [results.flat_row(x) for x in results.examples(ev, which, limit=limit)]
    return pd.DataFrame([[r.get(c, "") for c in EXAMPLE_COLUMNS] for r in rows], columns=EXAMPLE_COLUMNS)


def compare_frame(ev) -> pd.DataFrame:
    """Every evaluation on the same data and split: runs compared on one evaluation set."""
    same = [e for e in results.list_evaluations() if e.dataset_ref == ev.dataset_ref and e.split == ev.split
            and e.kind == ev.kind]
    rows = [[e.id, e.run_id or "-", e.tuned_label, e.n, e.headline, fmt_num(e.headline_base),
             fmt_num(e.headline_tuned)] for e in same]
    return pd.DataFrame(rows, columns=["eval", "run", "model", "n", "metric", "base", "tuned"])


def show_evaluation(evaluation_id: str | None, which: str = "all"):
    """(summary md, metrics df, examples df, compare df)."""
    empty = pd.DataFrame(columns=METRIC_COLUMNS)
    if not evaluation_id:
        return ("_No evaluation selected. Start one on the left; it appears here when it is done._", empty,
                pd.DataFrame(columns=EXAMPLE_COLUMNS), pd.DataFrame())
    try:
        ev = results.get(int(evaluation_id))
    except (results.EvaluationNotFound, ValueError):
        return (f"_Evaluation {html.escape(str(evaluation_id))} not found._", empty,
                pd.DataFrame(columns=EXAMPLE_COLUMNS), pd.DataFrame())
    s = ev.settings or {}
    gen = (f"greedy, max {s.get('max_new_tokens')} new tokens" if not s.get("temperature")
           else f"temperature {s.get('temperature')}, top-p {s.get('top_p')}, max {s.get('max_new_tokens')} new tokens")
    notes = "".join(f"\n- {md_text(n)}" for n in (ev.metrics or {}).get("notes", []))
    if ev.kind == "multiple_choice":
        gen = "log-likelihood of each choice"
    speed = (ev.metrics or {}).get("examples_per_s")
    if speed:
        gen += f"; {speed:.3g} examples/s, base + tuned, in {(ev.metrics or {}).get('seconds', 0):.3g} s"
    head = (f"**{md_text(ev.tuned_label)}** vs **{md_text(ev.base_label)}** on {md_text(ev.dataset_ref)} "
            f"[{ev.split}], {ev.n} examples ({ev.kind}; {gen}; seed {s.get('seed')})."
            + (f"\n\nHeadline: **{ev.headline}** {fmt_num(ev.headline_base)} → **{fmt_num(ev.headline_tuned)}**"
               if ev.headline else "") + notes)
    return head, metrics_frame(ev), examples_frame(ev, which), compare_frame(ev)


def export_file(evaluation_id: str | None, fmt: str, which: str) -> str | None:
    if not evaluation_id:
        raise gr.Error("Select an evaluation first.")
    ev = results.get(int(evaluation_id))
    data = results.export(ev, fmt, which)
    out = Path(tempfile.mkdtemp(prefix="fts-export-")) / f"evaluation-{ev.id}-{which.replace(' ', '-')}.{fmt}"
    out.write_bytes(data)
    return str(out)


# ---- corrections: picked rows become preference data (issue 28) ---------------------------------------------------
def make_corrections(evaluation_id: str | None, which: str, rows_text: str, edited: str,
                     request: gr.Request = None) -> str:
    """The rows picked (or every row the filter shows) as a preference dataset: chosen = the reference, or the answer
    typed for a single picked row; rejected = the tuned model's answer. Says the dataset's id."""
    from core.data import DatasetError
    from core.evaluate.corrections import corrections_from_evaluation, parse_rows
    from ui.common import user_of

    if not evaluation_id:
        return "**Select an evaluation first.**"
    try:
        rows = parse_rows(rows_text)
        edits = None
        if (edited or "").strip():
            if not rows or len(rows) != 1:
                return "**An edited answer is for one example: type its number (the '#' column) in Rows.**"
            edits = {rows[0]: edited}
        user = user_of(request)
        result = corrections_from_evaluation(evaluation_id, which=which or "all", rows=rows, edits=edits, owner=user)
    except DatasetError as exc:
        return f"**{md_text(exc)}**"
    return md_text(result.message)


def corrections_box(selected, which) -> None:
    """Under the per-example table: turn the rows into corrections for DPO / ORPO."""
    with gr.Accordion("Turn rows into preference data (corrections for DPO / ORPO)", open=False):
        gr.Markdown("chosen = the reference answer (or your edited answer), rejected = the tuned model's answer. "
                    "Empty Rows: every row the filter above shows (e.g. *tuned worse*).")
        with gr.Row():
            rows = gr.Textbox(label="Rows (# numbers, e.g. 1,4,7)", scale=1, elem_id="eval-fix-rows")
            edited = gr.Textbox(label="Edited answer (for one row; empty: the reference)", lines=2, scale=2,
                                elem_id="eval-fix-edit")
        make = gr.Button("Make preference data", elem_id="eval-fix-make")
        made = gr.Markdown(elem_id="eval-fix-made")
    make.click(make_corrections, [selected, which, rows, edited], made)


def build_tab() -> None:
    with gr.Row(equal_height=False):
        with gr.Column(scale=2, min_width=320):
            gr.Markdown("#### New evaluation\nBase vs fine-tuned on the same examples: loss, ROUGE/BLEU/chrF, exact "
                        "match, JSON fields — or multiple-choice accuracy scored like lm-evaluation-harness.")
            with gr.Row():
                run = gr.Dropdown(choices=[], label="Training run", scale=4, elem_id="eval-run",
                                  allow_custom_value=True)  # a refresh can remove the shown item
                refresh = gr.Button("↻", scale=0, min_width=40, size="sm")
            empty_hint = gr.Markdown(elem_id="eval-empty")
            folder = gr.Textbox(label="…or an adapter / model folder", placeholder="/path/to/adapter",
                                elem_id="eval-folder")
            base = gr.Textbox(label="Base model (empty: the run's base)", elem_id="eval-base")
            dataset = gr.Dropdown(choices=[("the run's own held-out rows", OWN_SPLIT)], value=OWN_SPLIT,
                                  label="Evaluate on", elem_id="eval-dataset")
            with gr.Row():
                split = gr.Radio(SPLIT_CHOICES, value="auto", label="Split",
                                 info="auto: a dataset whole; the run's own rows: test, else validation")
                limit = gr.Number(None, label="Sample (rows)", precision=0, minimum=0,
                                  info="0 or empty: 200 (generation), every row (multiple choice)")
            mode = gr.Radio(["generation", "multiple choice", "lm-eval task"], value="generation", label="Mode",
                            info="a multiple-choice dataset is always scored as multiple choice")
            with gr.Row():
                mc_style = gr.Radio(choices_of(EvalConfig, "mc_style"), value="arc", label="Multiple-choice prompt",
                                    info="ARC: 'Question: …\\nAnswer:'; MMLU: lettered options; native: "
                                         "lm-eval's own task for the file's layout (HellaSwag, TruthfulQA MC1/MC2, "
                                         "ARC, OpenBookQA, MMLU)", elem_id="eval-mc-style")
                mc_task = gr.Dropdown(TASK_CHOICES, value="auto", label="Native task", elem_id="eval-mc-task",
                                      info="auto: from the columns")
            with gr.Row():
                num_fewshot = gr.Number(0, label="Few-shot", precision=0, minimum=0, maximum=64,
                                        elem_id="eval-fewshot", info="TruthfulQA: its own 6-shot primer, keep 0")
                fewshot_split = gr.Dropdown(FEWSHOT_FROM, value="", label="Few-shot examples from",
                                            elem_id="eval-fewshot-split")
                lm_task = gr.Textbox(label="lm-eval task", placeholder="arc_easy")
            max_new = gr.Number(128, label="Max new tokens", precision=0, minimum=1)
            start = gr.Button("Start evaluation", variant="primary", elem_id="eval-start")
            start_msg = gr.Markdown(elem_id="eval-msg")
            job_state = gr.State(None)
            progress = gr.HTML(elem_id="eval-progress")
        with gr.Column(scale=3, min_width=420):
            with gr.Row():
                gr.Markdown("#### Evaluations")
                mine = mine_box("Only mine", "eval-mine")
            table = gr.Dataframe(headers=EVAL_COLUMNS, interactive=False, max_height=240, wrap=True,
                                 elem_id="eval-table")
            selected = gr.Dropdown(choices=[], label="Evaluation", elem_id="eval-selected",
                                  allow_custom_value=True)  # a refresh can remove the shown item
            summary = gr.Markdown(elem_id="eval-summary")
            metrics = gr.Dataframe(headers=METRIC_COLUMNS, interactive=False, label="Metrics (Δ = tuned − base)",
                                   elem_id="eval-metrics")
            with gr.Row():
                which = gr.Dropdown(list(results.FILTERS), value="all", label="Show examples", scale=2)
                fmt = gr.Radio(["csv", "jsonl"], value="csv", label="Export", scale=1)
                export_btn = gr.Button("Export", scale=1)
            export_out = gr.File(label="Download", visible=False)
            examples = gr.Dataframe(headers=EXAMPLE_COLUMNS, interactive=False, wrap=True, max_height=420,
                                    column_widths=["5%", "29%", "18%", "18%", "18%", "6%", "6%", "0%"],
                                    label="Every example (text shown as text)", elem_id="eval-examples")
            corrections_box(selected, which)
            judge_refresh, judge_inputs, judge_outputs = judge_box(selected)
            with gr.Accordion("Runs compared on this evaluation set", open=False):
                compare = gr.Dataframe(interactive=False)

    def refresh_lists(current_run=None, current_sel=None, mine=False, request: gr.Request = None):
        who = owner_filter(mine, request)
        evs = evaluation_choices(who)
        ids = [v for _, v in evs]
        sel = current_sel if current_sel in ids else (ids[0] if ids else None)
        run_ch = run_choices()
        run_ids = [v for _, v in run_ch]
        run_value = current_run if current_run in run_ids else (run_ids[0] if run_ids else None)
        hint = ("" if run_ch else "No finished training run yet: train one in the **Train** tab (or run the "
                "**Quick start** above), or point at an adapter / model folder below.")
        return (gr.update(choices=run_ch, value=run_value), gr.update(choices=dataset_choices()),
                evaluations_frame(who), gr.update(choices=evs, value=sel), hint)

    list_outputs = [run, dataset, table, selected, empty_hint]
    refresh.click(refresh_lists, [run, selected, mine], list_outputs)
    mine.change(refresh_lists, [run, selected, mine], list_outputs)
    detail_outputs = [summary, metrics, examples, compare]
    selected.change(show_evaluation, [selected, which], detail_outputs)
    which.change(show_evaluation, [selected, which], detail_outputs)
    export_btn.click(lambda *a: gr.update(value=export_file(*a), visible=True), [selected, fmt, which], export_out)

    def on_start(request: gr.Request, mine, *values):  # the request first: gradio injects only positional special args
        from ui.common import user_of

        msg, job_id = start_evaluation(*values, owner=user_of(request))
        return (msg, job_id, job_progress(job_id), evaluations_frame(owner_filter(mine, request)),
                gr.Timer(active=True) if job_id else gr.update())

    # the timer ticks only while this page watches an evaluation: it stops itself when there is none (an event costs
    # a page this size ~0.1 s of browser time), and starting one, or opening the tab, starts it
    timer = gr.Timer(1.0)
    start.click(on_start, [mine, run, folder, base, dataset, split, limit, mode, mc_style, lm_task, max_new, mc_task,
                           num_fewshot, fewshot_split], [start_msg, job_state, progress, table, timer])

    def tick(job_id, current_sel, mine=False, request: gr.Request = None):
        """While an evaluation runs: its progress; when it ends, the new evaluation is selected."""
        if not job_id:
            # (its job state left as it is: a Start's reply may have set one since this tick was sent)
            return gr.update(), gr.update(), gr.update(), gr.update(), gr.update(), gr.Timer(active=False)
        text = job_progress(job_id)
        job = runs.get_run(int(job_id))
        if not job.status.is_finished:
            return text, gr.update(), gr.update(), gr.update(), job_id, gr.update()
        ev = results.by_job(job.id)
        who = owner_filter(mine, request)
        evs = evaluation_choices(who)
        return (text, evaluations_frame(who), gr.update(choices=evs, value=str(ev.id) if ev else current_sel),
                gr.update(choices=run_choices()), None, gr.Timer(active=False))

    timer.tick(tick, [job_state, selected, mine], [progress, table, selected, run, job_state, timer],
               show_progress="hidden", concurrency_limit=None)
    def refresh_all(current_run=None, current_sel=None, mine=False, current_judge=None, request: gr.Request = None):
        return (*refresh_lists(current_run, current_sel, mine, request), *judge_refresh(current_judge, request))

    # app.py runs it when the tab is shown: lists are never stale, and a judge run started before shows again
    return refresh_all, [run, selected, mine, *judge_inputs], list_outputs + judge_outputs
