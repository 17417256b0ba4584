"""The two sides of an evaluation, shared by every way of scoring them (core.evaluate.job's generation and multiple
choice, core.evaluate.harness's lm-eval tasks): which models are compared, how fast they were scored, and the stored
result — an Evaluation row and the per-example ``examples.jsonl`` in the job's folder.
"""
from __future__ import annotations

import json

from core import runs
from core.evaluate import metrics as M
from core.evaluate import results
from core.evaluate.config import EvalConfig
from core.generate import GenerateError, ModelSource, resolve_source, source_for_run
from core.runs.errors import JobError
from core.runs.worker import JobResult
from storage import Evaluation


def resolve_sides(cfg: EvalConfig) -> tuple[ModelSource, ModelSource]:
    """(base, tuned). The tuned side is the run (or folder); the base side its base model unless given."""
    try:
        tuned = source_for_run(cfg.run_id) if cfg.run_id is not None else resolve_source(cfg.tuned)
        if cfg.base:
            base = resolve_source(cfg.base)
        elif tuned.adapter:
            base = resolve_source(tuned.base)
        elif tuned.run_id is not None:  # a full fine-tune: its base is the run's base model
            base = resolve_source(runs.get_run(tuned.run_id).base_model or "default")
        else:
            raise GenerateError("the tuned side is a whole model folder: name the base model to compare it with")
    except GenerateError as exc:
        raise JobError(str(exc)) from None
    if base.adapter:
        raise JobError("the base side must be a model, not an adapter")
    if base.endpoint or tuned.endpoint:
        raise JobError("a deployment's endpoint cannot be evaluated here (loss and multiple choice need the weights): "
                       "evaluate the run it serves")
    return base, tuned


def speed(examples: int, seconds: float) -> dict:
    """The evaluation's speed: examples scored on both sides (base + tuned) per second of scoring (model loading
    excluded). Stored in the metrics; shown by ``evaluate --json``, ``evaluations show`` and the Evaluate tab."""
    seconds = max(seconds, 1e-9)
    return {"examples_per_s": examples / seconds, "seconds": round(seconds, 3), "examples_scored": examples}


def store_evaluation(ctx, cfg, kind, base_src, tuned_src, dataset_ref, split, records, metrics) -> JobResult:
    """The job's result: its per-example ``records`` written to ``examples.jsonl`` (renamed into place when whole),
    its metrics in an Evaluation row (by the main process only), and the headline for the job's summary."""
    path = ctx.dir / "examples.jsonl"
    tmp = path.with_suffix(".jsonl.partial")
    with open(tmp, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps({k: v for k, v in r.items() if not k.startswith("_")}, ensure_ascii=False) + "\n")
    tmp.replace(path)
    headline = M.headline_metric(metrics)
    settings = cfg.model_dump(mode="json")
    ev = Evaluation(job_id=ctx.job_id, run_id=tuned_src.run_id, kind=kind, name=ctx.job.name,
                    base_label=base_src.label, tuned_label=tuned_src.label, dataset_ref=dataset_ref, split=split,
                    n=metrics["base"].get("n", len(records)), settings=settings, metrics=metrics, headline=headline,
                    headline_base=metrics["base"].get(headline), headline_tuned=metrics["tuned"].get(headline),
                    examples_path=str(path))
    if ctx.is_main:
        ev = results.save(ev)
    summary = (f"{headline}: base {metrics['base'].get(headline)} -> tuned {metrics['tuned'].get(headline)}"
               if headline else "done")
    return JobResult(final_metrics={"evaluation_id": ev.id, "headline": headline,
                                    "base": metrics["base"].get(headline), "tuned": metrics["tuned"].get(headline)},
                     summary=summary)
