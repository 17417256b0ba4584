"""The feedback loop on the demo task (issue 28): how far do people's votes move a run, and how many does it take?

    .venv/bin/python bench/feedback_loop.py                       # defaults used in bench/RESULTS.md
    .venv/bin/python bench/feedback_loop.py --votes 96 --dpo-steps 48 --json-out /tmp/loop.json

The people are simulated by a scripted voter — a program, not a model — that prefers valid JSON with the right fields:
it scores each of the two answers against the row's reference (core.data.demo.score_prediction: JSON parsed, the
four fields compared) and votes for the one with more right fields (valid JSON breaks a tie), "tie" when both are
equally right and valid, "both bad" when neither parses.

Steps, all through the studio's own paths in a fresh workspace: import the demo task (160 rows: 144 train, 16
validation); a short SFT LoRA run (the quick start's settings, fewer steps, so there is room left); its evaluation on
the validation rows (field accuracy *before*); the voter on the run's and the base model's sampled answers
(temperature 0.8, one batch) to the first N training prompts, each vote stored with ``arena.record_vote`` (the
Playground's vote store, as its blind A/B of the base against the run); ``improve_from_feedback`` (votes →
preference dataset → DPO continued from the run); ``evaluate_like_parent`` (the same validation rows, sample and
settings: field accuracy *after*). Prints a table and the numbers, and ``--json-out`` a JSON report.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("FTS_MODELS_DIR", str(REPO / "workspace" / "models"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def voter(answer_a: str, answer_b: str, reference: str) -> str:
    """The scripted person: 'a' | 'b' | 'tie' | 'both_bad'."""
    from core.data.demo import score_prediction

    sa, sb = score_prediction(answer_a, reference), score_prediction(answer_b, reference)
    if not sa["valid_json"] and not sb["valid_json"]:
        return "both_bad"
    ka = (sa["field_accuracy"], sa["valid_json"])
    kb = (sb["field_accuracy"], sb["valid_json"])
    return "a" if ka > kb else "b" if kb > ka else "tie"


def _wait(job_id: int, what: str):
    from core import runs

    t0 = time.time()
    job = runs.wait_for(job_id, timeout_s=3600, poll_s=1.0)
    if job.status != "succeeded":
        raise SystemExit(f"{what} (job {job_id}) ended {job.status}: {job.error}\n{runs.log_tail(job_id)[-2000:]}")
    return job, time.time() - t0


def _evaluation(job):
    from core.evaluate import results

    return results.get(job.final_metrics["evaluation_id"])


def sample_pairs(run_id: int, rows: list[dict], temperature: float, max_new_tokens: int, batch: int):
    """(the run's answer, the base model's answer) to each row's prompt, sampled, both in one batch (the Playground's
    decoding path: runs of one base share its weights; the arena refuses a vote between a model and itself)."""
    from core.data.demo import demo_prompts
    from core.generate.cache import model_cache
    from core.generate.decoding import GenSettings
    from core.generate.sources import resolve_source
    from core.generate.streaming import stream

    cache = model_cache()
    tuned, base = cache.slot(resolve_source(f"run:{run_id}")), cache.slot(resolve_source("default"))
    prompts = demo_prompts(rows)
    pairs: list[tuple[str, str]] = []
    for start in range(0, len(prompts), batch):
        convs = prompts[start:start + batch]
        settings = GenSettings(max_new_tokens=max_new_tokens, temperature=temperature, top_p=0.95, seed=start)
        final: list = []
        for sides in stream([tuned] * len(convs) + [base] * len(convs), convs + convs, settings):
            final = sides  # every side's text so far: the last yield is the whole answer
        texts = [r.text for r in final]
        pairs.extend(zip(texts[:len(convs)], texts[len(convs):]))
    return pairs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=160)
    ap.add_argument("--sft-steps", type=int, default=8)
    ap.add_argument("--votes", type=int, default=64, help="votes the scripted voter casts (one per training prompt)")
    ap.add_argument("--dpo-steps", type=int, default=24)
    ap.add_argument("--dpo-lr", type=float, default=5e-4)
    ap.add_argument("--objective", choices=["dpo", "orpo"], default="dpo")
    ap.add_argument("--eval-rows", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--workspace", default=None, help="default: a fresh temporary folder")
    ap.add_argument("--sft-run", type=int, default=None, help="reuse this finished SFT run of --workspace (and its "
                    "newest evaluation as 'before') instead of training one")
    ap.add_argument("--json-out", default=None)
    args = ap.parse_args()

    ws = Path(args.workspace or tempfile.mkdtemp(prefix="fts-feedback-"))
    os.environ["FTS_WORKSPACE"] = str(ws)
    os.environ.pop("DATABASE_URL", None)
    from core import runs
    from core.data import get_dataset, import_demo_task, read_split
    from core.data.demo import demo_references
    from core.evaluate import arena
    from core.evaluate.submit import submit_evaluation
    from core.quickstart import TRAIN
    from core.train.config import TrainConfig
    from core.train.improve import evaluate_like_parent, improve_from_feedback, latest_generation_evaluation
    from core.train.jobs import submit_training

    t_all = time.time()
    sft_s = before_s = 0.0
    before = None
    if args.sft_run:
        sft = runs.get_run(args.sft_run)
        ds_id = int(sft.dataset_ref)
        before = latest_generation_evaluation(sft.id)
        args.sft_steps = sft.step
    else:
        ds_id = import_demo_task(args.rows, seed=0).dataset_id
        sft = submit_training(TrainConfig(dataset=str(ds_id), name="feedback-sft",
                                          **{**TRAIN, "max_steps": args.sft_steps}))
        sft, sft_s = _wait(sft.id, "the SFT run")
        print(f"SFT run {sft.id}: {args.sft_steps} steps in {sft_s:.0f} s", file=sys.stderr)
    rows = read_split(get_dataset(ds_id), "train")
    if before is None:
        ev_cfg = {"run_id": sft.id, "split": "validation", "limit": args.eval_rows,
                  "max_new_tokens": args.max_new_tokens}
        before_job, before_s = _wait(submit_evaluation(ev_cfg).id, "the first evaluation")
        before = _evaluation(before_job)
    print(f"before: {before.metrics['tuned']}", file=sys.stderr)

    t0 = time.time()
    voted_rows = rows[:args.votes]
    pairs = sample_pairs(sft.id, voted_rows, args.temperature, args.max_new_tokens, args.batch)
    sample_s = time.time() - t0
    tally: dict[str, int] = {}
    for row, (a, b), ref in zip(voted_rows, pairs, demo_references(voted_rows)):
        winner = voter(a, b, ref)
        tally[winner] = tally.get(winner, 0) + 1
        msgs = row["messages"]
        system = next((m["content"] for m in msgs if m["role"] == "system"), "")
        prompt = next(m["content"] for m in msgs if m["role"] == "user")
        arena.record_vote(prompt=prompt, system_prompt=system, output_a=a, output_b=b, model_a=f"run:{sft.id}",
                          model_b="default", winner=winner, voter="scripted-voter",
                          settings={"temperature": args.temperature, "max_new_tokens": args.max_new_tokens})
    print(f"votes: {tally} ({sample_s:.0f} s to sample {2 * len(voted_rows)} answers)", file=sys.stderr, flush=True)

    got = improve_from_feedback(sft.id, objective=args.objective, steps=args.dpo_steps,
                                learning_rate=args.dpo_lr)
    made = got["dataset"]
    dpo, dpo_s = _wait(got["run"].id, f"the {args.objective.upper()} run")
    print(f"{args.objective} run {dpo.id} on dataset {made.dataset_id} ({made.rows} pairs) in {dpo_s:.0f} s",
          file=sys.stderr)
    after_job, after_s = _wait(evaluate_like_parent(dpo.id).id, "the second evaluation")
    after = _evaluation(after_job)
    from core.train.compare import step_report

    rep = step_report(dpo.id)
    report = {
        "rows": len(rows), "sft_steps": args.sft_steps, "votes": len(voted_rows), "tally": tally,
        "pairs": made.rows, "left_out": made.left_out, "objective": args.objective, "dpo_steps": args.dpo_steps,
        "dpo_lr": args.dpo_lr, "eval_rows": after.n, "same_rows": rep["evaluations"] is not None,
        "base": {k: before.metrics["base"].get(k) for k in ("field_accuracy", "json_valid_rate")},
        "before": {k: before.metrics["tuned"].get(k) for k in ("field_accuracy", "json_valid_rate")},
        "after": {k: after.metrics["tuned"].get(k) for k in ("field_accuracy", "json_valid_rate")},
        "reward_margin_last": rep["margin"], "preference_accuracy_last": rep["accuracy"],
        "seconds": {"sft": round(sft_s), "eval_before": round(before_s), "sample_answers": round(sample_s),
                    "dpo": round(dpo_s), "eval_after": round(after_s), "total": round(time.time() - t_all)},
        "run_ids": {"sft": sft.id, "dpo": dpo.id}, "dataset_id": made.dataset_id, "workspace": str(ws),
    }
    print(f"\n{'':<22}{'field accuracy':>16}{'valid JSON':>12}")
    for name in ("base", "before", "after"):
        print(f"{name:<22}{report[name]['field_accuracy']:>16.3f}{report[name]['json_valid_rate']:>12.3f}")
    print(f"\n{len(voted_rows)} votes {tally} → {made.rows} pairs; {args.objective.upper()} {args.dpo_steps} steps; "
          f"{after.n} held-out rows; {report['seconds']}")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
