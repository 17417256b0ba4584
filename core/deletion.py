"""Deleting a training run with what was made from it: its evaluations (core.evaluate), its export jobs and their
files, the serve jobs of its ended local deployments (and, through the serve kind's hook, their rows), refused while
a deployment (core.deploy) serves it. It reaches across train, evaluate and deploy, so it sits
above them (with the quick start), and none of them imports it.
"""
from __future__ import annotations

from core import runs
from core.deploy import deployments
from core.evaluate import results
from core.lineage import dependents
from core.runs import JobError, store


def delete_run(run_id: int) -> dict:
    """Delete an ended training run with what was made from it: its folder (checkpoints, adapter, merged model, log),
    its metric rows, its evaluations and their jobs, its export jobs, its ended local deployments. Runs continued
    from it stay (each has its own adapter). Refused, with nothing deleted, while the run or a job made from it is
    active, or while a deployment serves it. Returns what went: {"runs": [ids], "evaluations": n, "dependents": what
    had come from it, in words (core.lineage; "" when nothing had)}."""
    run = runs.get_run(run_id)
    if run.kind != "train":
        raise JobError(f"run {run_id} is a {run.kind} job, not a training run")
    if run.status.is_active:
        raise JobError(f"run {run_id} is {run.status.value}: stop it before deleting")
    # a deployment first: a local one is a serve job made from the run, and the person needs to hear which endpoint
    serving = [d for d in deployments.list_deployments(active_only=True) if d.run_id == run_id]
    if serving:
        raise JobError(f"deployment #{serving[0].id} serves run {run_id} ({serving[0].status}): stop it in the Deploy "
                       "tab (or `python -m core deployments stop ID`) before deleting the run")
    made_from = [c for c in store.children(run_id) if c.kind != "train"]
    busy = [c for c in made_from if runs.get_run(c.id).status.is_active]
    if busy:
        raise JobError("; ".join(f"{c.kind} job #{c.id} of run {run_id} is {c.status.value}" for c in busy)
                       + ": wait for it or stop it before deleting the run")
    said = dependents("run", run_id)["message"]
    ids = [run_id, *(c.id for c in made_from)]
    # first: a job that became active meanwhile refuses the delete before anything is gone; the serve jobs' rows in
    # the deployments table go with them (the serve kind's delete hook)
    runs.delete(ids)
    evaluations = results.delete_for_run(run_id)
    return {"runs": ids, "evaluations": evaluations, "dependents": said}
