"""Improve from feedback on a run's page (issue 28): the Playground's votes or an evaluation's corrections become
preference pairs, a DPO / ORPO run continues from the selected run, is evaluated on the same rows as the run it
continued, and the two open side by side in the Playground."""
from __future__ import annotations

import gradio as gr

from core import runs
from core.runs import JobError, RunStatus
from core.train.config import ConfigError
from ui.common import md_text, user_of
from ui.run_list import run_choices

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


