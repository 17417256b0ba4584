"""Evaluate tab's Judge section (issue 28): pick a judge model, pairwise or rubric, start a judge job over the votes or
the selected evaluation, and see its scores with its agreement with people — percent, Cohen's κ, n, position flips —
right beside them, and a warning when it disagrees with people or too few votes measured it.

Judge runs are jobs (core.evaluate.judge): they survive a closed tab (the page shows the latest one again when it
opens), show progress and can be stopped. What the judge model wrote is shown as text. Handlers are module-level so
tests call them without a browser.
"""
from __future__ import annotations

import html

import gradio as gr
import pandas as pd

from core import runs
from core.evaluate.judge import (
    ENDPOINT_REF,
    JudgeConfigError,
    agreement_line,
    configured_endpoint,
    fmt_share,
    judgements,
    submit_judge,
)
from core.generate import GenerateError
from core.runs import JobError
from ui.common import is_mine, job_progress, md_text, user_of

ON_VOTES = "the votes"
ON_EVALUATION = "the selected evaluation (the votes still measure the judge)"
JUDGED_COLUMNS = ["#", "judged", "people", "judge", "position flip", "what the judge wrote"]
DEFAULT_RUBRIC = ("5: correct, complete and follows the instructions; 3: partly right; 1: wrong or off-topic.")


def judge_choices() -> list[tuple[str, str]]:
    """Every model the studio can run as a judge: the embedded model, training runs, running deployments and the
    admin's endpoint when one is configured (a folder can be typed)."""
    from core.deploy.deployments import list_deployments

    out = [("the embedded model (default)", "default")]
    out += [(f"run #{r.id} {r.name} ({r.method})", f"run:{r.id}") for r in runs.list_runs(kind="train")
            if r.adapter_path]
    out += [(f"deployment #{d.id} {d.served_name} ({d.target})", f"deployment:{d.id}")
            for d in list_deployments(active_only=True) if d.status == "running"]
    try:
        endpoint = configured_endpoint()
    except GenerateError:
        endpoint = None
    if endpoint is not None:
        out.append((f"the admin's {endpoint.label}", ENDPOINT_REF))
    return out


def start_judge(judge: str | None, mode: str, rubric: str, on: str, evaluation_id: str | None, limit,
                request: gr.Request = None) -> tuple[str, str | None]:
    """The Start button: (message, judge job id or None). In a studio with several people the judge is measured on
    the page user's own votes (an admin: everyone's), as 'Make preference data from votes' uses them."""
    from core.access import PathNotAllowed, check_user_path
    from core.data.feedback import votes_scope

    user = user_of(request)
    ref = (judge or "").strip()
    if not ref:
        return "**Pick a judge model.**", None
    evaluation = None
    if on == ON_EVALUATION:
        if not evaluation_id:
            return "**Select an evaluation above first (or judge the votes).**", None
        evaluation = int(evaluation_id)
    try:
        if "/" in ref:
            check_user_path(ref, "the judge model folder")
        job = submit_judge({"judge": ref, "mode": mode or "pairwise", "rubric": (rubric or "").strip() or None,
                            "evaluation_id": evaluation, "limit": int(limit) if limit else None,
                            "voter": votes_scope(user)}, owner=user)
    except PathNotAllowed as exc:
        return f"**Error:** {md_text(exc)}", None
    except (JudgeConfigError, JobError) as exc:
        return f"**Error:** {md_text(exc)}", None
    return f"Judge job #{job.id} **{job.status.value}**: it runs in its own process; progress below.", str(job.id)


def stop_judge(job_id: str | None, request: gr.Request = None) -> str:
    from core.users import NotAllowed, check_can_manage

    if not job_id:
        return "No judge job to stop."
    try:
        job = runs.get_run(int(job_id))
        check_can_manage(job, user_of(request), "stop")
        job = runs.stop(job.id, wait=False)
    except NotAllowed as exc:
        return f"**Not allowed:** {md_text(exc)}"
    except (JobError, ValueError) as exc:
        return f"**Error:** {md_text(exc)}"
    return f"Judge job #{job.id}: stop asked ({job.status.value})."


def latest_judge_job(who: str | None) -> str | None:
    """The newest judge job ``who`` started (everyone's for None): what the section shows on opening."""
    mine = [j for j in runs.list_runs(kind="judge") if is_mine(j.owner, who)]
    return str(max(mine, key=lambda j: j.id).id) if mine else None


def _two(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def _scores_md(m: dict) -> str:
    scores = m.get("scores") or {}
    if m.get("mode") == "rubric":
        rows = [f"| {md_text(k)} | {_two(v.get('mean_score'))} | {v.get('scored')} of {v.get('answers')} |"
                for k, v in scores.items()]
        head = "| model | mean score (1-5) | answers scored |\n|---|---|---|"
    else:
        rows = [f"| {md_text(k)} | {fmt_share(v.get('win_rate'))} | {v.get('wins')} / {v.get('losses')} / "
                f"{v.get('ties')} |" for k, v in scores.items()]
        head = "| model | judge's win rate | wins / losses / ties |\n|---|---|---|"
    return head + "\n" + "\n".join(rows) if rows else "_no scores_"


def _agreement_md(m: dict) -> str:
    kappa = "n/a" if m.get("kappa") is None else f"{m['kappa']:.2f}"
    flips = ("n/a (rubric: one answer at a time)" if m.get("position_flip_rate") is None
             else f"{fmt_share(m['position_flip_rate'])} of {m.get('pairs_both_orders')} pairs")
    warning = (f"\n\n<div class='fts-error' id='judge-warning'>Warning: {html.escape(m['warning'])}</div>"
               if m.get("warning") else "\n\n**The judge agrees with people well enough on these votes.**")
    return (f"| agreement with people | |\n|---|---|\n| agreement | **{fmt_share(m.get('agreement'))}** |\n"
            f"| Cohen's κ | **{kappa}** |\n| n (votes) | **{m.get('n', 0)}** |\n| position flips | {flips} |\n"
            f"| unparseable replies | {m.get('unparseable', 0)} of {m.get('replies', 0)} |" + warning)


def judge_result(job_id: str | None) -> tuple[str, str, str, pd.DataFrame]:
    """(headline md, scores md, agreement md, every judgement) of a judge job; empty texts while it runs."""
    empty = pd.DataFrame(columns=JUDGED_COLUMNS)
    if not job_id:
        return "_No judge run yet._", "", "", empty
    try:
        job = runs.get_run(int(job_id))
    except (JobError, ValueError):
        return "", "", "", empty
    if job.status != runs.RunStatus.succeeded:
        return f"Judge job #{job.id}: {job.status.value}.", "", "", empty
    m = job.final_metrics or {}
    head = (f"**Judge job #{job.id}**: {md_text(m.get('judge'))} ({m.get('mode')}) on {md_text(m.get('on'))}: "
            f"{m.get('votes_judged', 0)} votes, {m.get('examples_judged', 0)} evaluation examples. "
            f"{md_text(agreement_line(m))}.")
    rows = []
    for k, r in enumerate(judgements(job), 1):
        what = f"vote #{r['vote_id']}" if r.get("from") == "vote" else f"example #{r.get('example')}"
        shown = "verdict" if m.get("mode") == "pairwise" else "verdict (from scores)"
        judged = r.get("verdict", "") if shown == "verdict" else (
            f"{r.get('verdict')} ({', '.join(f'{s} {v}' for s, v in (r.get('scores') or {}).items())})")
        replies = " | ".join(f"{w}: {t}" for w, t in (r.get("replies") or {}).items() if t is not None)
        rows.append([k, what, r.get("human") or "-", judged, "yes" if r.get("position_flip") else "",
                     replies[:600]])
    return head, _scores_md(m), _agreement_md(m), pd.DataFrame(rows, columns=JUDGED_COLUMNS)


def judge_box(selected_evaluation):
    """The Judge section (under an evaluation's examples). Returns (refresh fn, its inputs, its outputs) for the
    tab's page-load refresh: the judge choices and the latest judge run."""
    with gr.Accordion("Judge: an LLM judge, measured against the people's votes", open=False,
                      elem_id="judge-box"):
        gr.Markdown("A model scores answers — pairwise (A vs B, asked in both orders: a winner that changes side is "
                    "a position flip, counted as a tie) or 1-5 against your rubric. Every judge run is measured on "
                    "the Playground's blind A/B votes first: trust its scores only as far as it agrees with people.")
        with gr.Row():
            model = gr.Dropdown(choices=[], label="Judge model", allow_custom_value=True, scale=3,
                                elem_id="judge-model", info="or type a model / adapter folder")
            mode = gr.Radio(["pairwise", "rubric"], value="pairwise", label="Mode", scale=2, elem_id="judge-mode")
        rubric = gr.Textbox(label="Rubric (rubric mode)", value=DEFAULT_RUBRIC, lines=2, elem_id="judge-rubric")
        with gr.Row():
            on = gr.Radio([ON_VOTES, ON_EVALUATION], value=ON_VOTES, label="Judge", scale=3, elem_id="judge-on")
            limit = gr.Number(50, label="At most (votes / examples)", precision=0, minimum=0, scale=1)
        with gr.Row():
            start = gr.Button("Start judge", variant="primary", elem_id="judge-start")
            stop = gr.Button("Stop", elem_id="judge-stop")
        msg = gr.Markdown(elem_id="judge-msg")
        progress = gr.HTML(elem_id="judge-progress")
        head = gr.Markdown(elem_id="judge-head")
        with gr.Row():
            scores = gr.Markdown(elem_id="judge-scores")
            agreement = gr.Markdown(elem_id="judge-agreement")
        table = gr.Dataframe(headers=JUDGED_COLUMNS, interactive=False, wrap=True, max_height=320,
                             label="Every judgement (the judge's replies shown as text)", elem_id="judge-table")
        shown = gr.State(None)  # the judge job shown
        watched = gr.State(None)  # the judge job running

    # the timer ticks only while a judge job is watched (it stops itself otherwise; starting one, or a page that
    # finds one running, starts it)
    timer = gr.Timer(1.0)

    def on_start(request: gr.Request, *values):
        text, job_id = start_judge(*values, request=request)
        if not job_id:
            return text, gr.update(), gr.update(), gr.update(), None, gr.update()
        return (text, job_progress(job_id), "_The judge's scores appear here when its job ends._", job_id, job_id,
                gr.Timer(active=True))

    start.click(on_start, [model, mode, rubric, on, selected_evaluation, limit],
                [msg, progress, head, shown, watched, timer])
    stop.click(stop_judge, [shown], msg)

    def tick(job_id):
        if not job_id:
            # (the watched job left as it is: a Start's reply may have set one since this tick was sent)
            return gr.update(), gr.update(), gr.update(), gr.update(), gr.update(), gr.update(), gr.Timer(active=False)
        job = runs.get_run(int(job_id))
        if not job.status.is_finished:
            return job_progress(job_id), gr.update(), gr.update(), gr.update(), gr.update(), job_id, gr.update()
        return (job_progress(job_id), *judge_result(job_id), None, gr.Timer(active=False))

    timer.tick(tick, [watched], [progress, head, scores, agreement, table, watched, timer], show_progress="hidden",
               concurrency_limit=None)

    def refresh(current=None, request: gr.Request = None):
        choices = judge_choices()
        values = [v for _, v in choices]
        job_id = latest_judge_job(user_of(request) or None)  # a single-user studio: everyone's is the user's
        job = runs.get_run(int(job_id)) if job_id else None
        running = job is not None and not job.status.is_finished
        return (gr.update(choices=choices, value=current if current else (values[0] if values else None)),
                job_progress(job_id), *judge_result(job_id), job_id, job_id if running else None,
                gr.Timer(active=True) if running else gr.update())

    return refresh, [model], [model, progress, head, scores, agreement, table, shown, watched, timer]
