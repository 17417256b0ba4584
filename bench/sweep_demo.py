"""A sweep on the demo task vs the default settings (issue 29): a 6-trial learning-rate x LoRA-rank sweep at a fixed
small step budget, each trial scored by field accuracy on the demo's held-out rows, against one run with the quick
start's defaults (learning rate 2e-3, LoRA r 16) at the same budget, scored the same way.

    FTS_MODELS_DIR=workspace/models .venv/bin/python bench/sweep_demo.py [--steps 16] [--trials 6] [--json-out F]

Everything goes through the studio as a person would use it: the demo dataset (core.quickstart), training runs and
evaluations on the runs queue, the sweep's driver (core.sweep) in a fresh workspace. Prints the default's and the
best trial's field accuracy and the sweep's wall time.
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


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--eval-rows", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--base-model", default="default", help="a smoke test of the script: a tiny model folder")
    parser.add_argument("--json-out", default=None)
    args = parser.parse_args()
    os.environ["FTS_WORKSPACE"] = tempfile.mkdtemp(prefix="fts-sweep-bench-")

    from core import quickstart, runs
    from core.evaluate.config import EvalConfig
    from core.evaluate.results import by_job
    from core.evaluate.submit import submit_evaluation
    from core.sweep import jobs as sweeps
    from core.train.config import TrainConfig
    from core.train.jobs import submit_training

    monitor = runs.start_monitor()
    ds = quickstart.load_demo()
    base = {**quickstart.TRAIN, "dataset": str(ds.id), "max_steps": args.steps, "base_model": args.base_model}
    evaluation = {"split": "validation", "limit": args.eval_rows, "max_new_tokens": args.max_new_tokens}

    log(f"default settings: lr {base['learning_rate']}, LoRA r {base['lora_r']}, {args.steps} steps")
    t0 = time.time()
    run = runs.wait_for(submit_training(TrainConfig(name="default", **base)).id, timeout_s=7200)
    assert run.status == "succeeded", runs.log_tail(run.id)
    job = runs.wait_for(submit_evaluation(EvalConfig(run_id=run.id, **evaluation)).id, timeout_s=7200)
    assert job.status == "succeeded", runs.log_tail(job.id)
    default_s = time.time() - t0
    default_metrics = by_job(job.id).metrics
    default_acc = default_metrics["tuned"]["field_accuracy"]
    base_acc = default_metrics["base"]["field_accuracy"]
    log(f"default: field accuracy {default_acc:.3f} (base model {base_acc:.3f}) in {default_s:.0f} s")

    spec = {"name": "demo-lr-rank", "base": {k: v for k, v in base.items() if k not in ("lora_r", "lora_alpha")},
            "search": {"learning_rate": {"type": "log_uniform", "low": 3e-4, "high": 6e-3},
                       "lora_r": {"type": "choice", "values": [8, 16, 32]}},
            "objective": "field_accuracy", "eval": evaluation, "trials": args.trials, "parallel": 1,
            "seed": args.seed}
    t0 = time.time()
    sweep = sweeps.submit_sweep(spec)
    final = runs.wait_for(sweep.id, timeout_s=4 * 3600)
    sweep_s = time.time() - t0
    d = sweeps.sweep_to_dict(sweep.id)
    monitor.shutdown()
    for t in d["trials"]:
        log(f"trial {t['number']}: {t['state']} field accuracy {t['value']} {t['params']}")
    report = {"steps": args.steps, "eval_rows": args.eval_rows, "max_new_tokens": args.max_new_tokens,
              "base_model_field_accuracy": base_acc, "default_field_accuracy": default_acc,
              "default_wall_s": round(default_s, 1), "sweep_status": str(final.status),
              "best_field_accuracy": d["best_value"], "best_params": d["best_params"],
              "sweep_wall_s": round(sweep_s, 1), "trials": d["trials"], "cpu_count": os.cpu_count()}
    print(json.dumps({k: v for k, v in report.items() if k != "trials"}, indent=2))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report, indent=2, default=str))
    return 0 if final.status == "succeeded" else 1


if __name__ == "__main__":
    sys.exit(main())
