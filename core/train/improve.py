"""Improve a run from feedback (issue 28), the loop in one place: the people's feedback on a finished run — the
Playground votes on it, or its latest evaluation's "tuned worse" rows corrected to their references — becomes a
preference dataset (core.data.feedback / core.evaluate.corrections), a DPO or ORPO run continues from the run's
adapter (the continue-as path, :func:`core.train.jobs.continue_training`), and once it has finished it is evaluated
on the same held-out rows as the run's last evaluation (:func:`evaluate_like_parent`) and compared side by side in
the Playground. The run page and ``python -m core improve`` drive it.
"""
from __future__ import annotations

from core import runs
from core.data.errors import DatasetError
from core.data.feedback import describe_left_out, plan_from_votes, preference_from_votes, select_votes
from core.evaluate import results
from core.runs import JobError
from storage import RunStatus

OBJECTIVES = ("dpo", "orpo")
DEFAULT_STEPS = 20
SOURCES = ("votes", "corrections")
LEAK_NOTE = ("the corrections are the run's held-out rows: an evaluation on them afterwards measures rows it "
             "trained on")


def _finished_run(run_id: int | str):
    try:
        rid = int(str(run_id).strip())
    except ValueError:
        raise JobError(f"run id must be a number, got {run_id!r}") from None
    run = runs.get_run(rid)
    if run.kind != "train":
        raise JobError(f"run {rid} is a {run.kind} job, not a training run")
    return run


def latest_generation_evaluation(run_id: int):
    """The run's newest generation evaluation (the one with answers to vote on or correct), or None."""
    for ev in results.list_evaluations(run_id=run_id, limit=50):
        if ev.kind == "generation":
            return ev
    return None


def feedback_available(run_id: int | str, voter: str | None = None) -> dict:
    """What could improve the run now: the votes cast with it on one side (``voter``: only theirs, None: everyone's)
    and the pairs they make, and the corrections its latest evaluation offers ("tuned worse" rows). ``message``:
    the same in one line."""
    run = _finished_run(run_id)
    key = f"run:{run.id}"
    votes = select_votes(model=key, voter=voter)
    plan = plan_from_votes(votes) if votes else None
    ev = latest_generation_evaluation(run.id)
    worse = 0
    if ev is not None:
        worse = sum(1 for ex in results.iter_examples(ev) if results.matches(ex, "tuned worse")
                    and (ex.get("reference") or "").strip() and (ex.get("tuned") or "").strip()
                    and (ex.get("reference") or "").strip() != (ex.get("tuned") or "").strip())
    pairs = len(plan.rows) if plan else 0
    if votes:
        said = (f"{len(votes)} vote(s) on run #{run.id} → {pairs} preference pair(s)"
                f" ({describe_left_out(plan.left_out)})")
    else:
        said = (f"no votes on run #{run.id} yet: in the Playground tick 'Blind A/B', put run #{run.id} on one side "
                "and vote for the better answer")
    if ev is not None:
        said += (f"; evaluation #{ev.id} has {worse} 'tuned worse' row(s) to correct to their references "
                 "(source: corrections)")
    return {"run_id": run.id, "votes": len(votes), "pairs": pairs, "left_out": plan.left_out if plan else {},
            "evaluation_id": ev.id if ev is not None else None, "corrections": worse, "message": said}


def improve_from_feedback(run_id: int | str, *, objective: str = "dpo", steps: int | None = None,
                          source: str = "votes", voter: str | None = None, owner: str = "",
                          learning_rate: float | None = None) -> dict:
    """Build the preference dataset from the run's feedback and queue a ``objective`` run continued from it.
    Returns ``{"dataset": FeedbackResult, "run": Run, "note": str}``; DatasetError / JobError (nothing queued) when
    there is no usable feedback or the run cannot be continued."""
    if objective not in OBJECTIVES:
        raise JobError(f"improve from feedback trains with dpo or orpo, not {objective!r}")
    if source not in SOURCES:
        raise JobError(f"the feedback comes from votes or corrections, not {source!r}")
    steps = DEFAULT_STEPS if steps is None else int(steps)
    if steps < 1:
        raise JobError("steps must be at least 1")
    run = _finished_run(run_id)
    if run.status != RunStatus.succeeded or not run.adapter_path:
        raise JobError(f"run {run.id} is {run.status.value}: improve a run that finished with an adapter")
    tokenizer = run.base_model or "default"
    note = ""
    if source == "votes":
        try:
            made = preference_from_votes(model=f"run:{run.id}", voter=voter, owner=owner, tokenizer=tokenizer,
                                         name=f"feedback-run{run.id}")
        except DatasetError as exc:
            raise DatasetError(f"run {run.id}: {exc}") from None
    else:
        from core.evaluate.corrections import corrections_from_evaluation

        ev = latest_generation_evaluation(run.id)
        if ev is None:
            raise DatasetError(f"run {run.id} has no generation evaluation to correct: evaluate it first (Evaluate "
                               "tab, or `python -m core evaluate --run ID`)")
        made = corrections_from_evaluation(ev.id, which="tuned worse", owner=owner, tokenizer=tokenizer,
                                           name=f"corrections-run{run.id}")
        note = LEAK_NOTE
    from core.train.jobs import continue_training

    changes = {}
    if learning_rate:
        changes["learning_rate"] = learning_rate
    new = continue_training(run.id, steps, owner=owner, objective=objective, dataset=str(made.dataset_id),
                            **changes)
    return {"dataset": made, "run": new, "note": note}


def parent_evaluation(run) -> tuple[object | None, object | None]:
    """(the run it continued from, that run's latest generation evaluation)."""
    if not run.parent_run_id:
        return None, None
    try:
        parent = runs.get_run(run.parent_run_id)
    except JobError:
        return None, None
    return parent, latest_generation_evaluation(parent.id)


def same_rows_config(run_id: int | str) -> dict:
    """The EvalConfig (as a dict) that scores ``run_id`` on the same held-out rows, with the same settings, as the
    latest evaluation of the run it continued from."""
    run = _finished_run(run_id)
    parent, ev = parent_evaluation(run)
    if parent is None:
        raise JobError(f"run {run.id} did not continue another run: evaluate it in the Evaluate tab")
    if ev is None:
        raise JobError(f"run {parent.id} (which run {run.id} continued) has no evaluation to repeat: evaluate either "
                       "in the Evaluate tab")
    dataset = ev.dataset_ref or ""
    if dataset.startswith("run:"):  # the parent's own held-out rows: its dataset, the same split
        dataset = str(parent.dataset_ref or (parent.config or {}).get("dataset", ""))
    if not dataset.isdigit():
        raise JobError(f"evaluation #{ev.id} scored rows of {dataset or '?'}, not a stored dataset: pick the rows in "
                       "the Evaluate tab")
    settings = {k: v for k, v in (ev.settings or {}).items() if k not in ("name", "run_id", "tuned", "dataset",
                                                                            "split")}
    return {**settings, "run_id": run.id, "dataset": dataset, "split": ev.split,
            "name": f"eval-run{run.id}-like-eval{ev.id}"}


def evaluate_like_parent(run_id: int | str, owner: str = ""):
    """Queue the evaluation of :func:`same_rows_config`. Returns the evaluate job."""
    from core.evaluate.submit import submit_evaluation

    run = _finished_run(run_id)
    if run.status != RunStatus.succeeded:
        raise JobError(f"run {run.id} is {run.status.value}: evaluate it once it has succeeded")
    return submit_evaluation(same_rows_config(run.id), owner=owner)
