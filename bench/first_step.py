"""Submit → first training step, with and without the warm worker (core/runs/warm.py), against a cold import.

    .venv/bin/python bench/first_step.py [--rounds 3] [--processes 2]

All in one script, alternating, on the same machine state:
- cold import: ``python -c "import torch, transformers, peft, trl"`` (what every worker paid before its first step);
- a 1-step LoRA run of the embedded default model (SmolLM2-135M) on the alpaca sample, submitted through the runs
  core as the dashboard does: seconds from ``submit_training`` to the run's step 1 in the database, and to its end
  (adapter saved), once with ``FTS_WARM_WORKER=0`` (cold worker) and once with the warm worker ready.
Goal (issue 26): the warm run's whole first step in less time than the cold import alone. ``--processes 2``: the
same for a 2-process DDP run, whose ranks fork from the warm worker too (or start cold with it off).
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def cold_import_s() -> float:
    started = time.monotonic()
    subprocess.run([sys.executable, "-c", "import torch, transformers, peft, trl"], check=True, cwd=REPO,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.monotonic() - started


def one_run(dataset: str, warm_on: bool, processes: int = 1) -> tuple[float, float, bool]:
    """(s to step 1, s to the end, started warm) for a 1-step run submitted now."""
    from core import runs
    from core.train.config import TrainConfig
    from core.train.jobs import submit_training

    os.environ["FTS_WARM_WORKER"] = "1" if warm_on else "0"
    config = TrainConfig(dataset=dataset, method="lora", max_steps=1, batch_size=2, max_length=96, lora_r=4,
                         lora_alpha=8, logging_steps=1, name="first-step", num_processes=processes,
                         distributed="ddp" if processes > 1 else "none")
    started = time.monotonic()
    run = submit_training(config)
    first = None
    while True:
        r = runs.get_run(run.id)
        if first is None and (r.step or 0) >= 1:
            first = time.monotonic() - started
        if r.status.is_finished:
            break
        time.sleep(0.02)
    total = time.monotonic() - started
    assert r.status == "succeeded", runs.log_tail(run.id)
    log = runs.log_tail(run.id, max_lines=400)
    was_warm = ("forked from the warm worker;" in log) if processes > 1 else ("started from the warm worker" in log)
    return first or total, total, was_warm


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--processes", type=int, default=1)
    args = ap.parse_args()
    ws = Path(tempfile.mkdtemp(prefix="fts-first-step-"))
    os.environ["FTS_WORKSPACE"] = str(ws)
    os.environ.pop("DATABASE_URL", None)
    os.environ.setdefault("FTS_MODELS_DIR", str(REPO / "workspace" / "models"))  # the converted model, not again
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from core.models import ensure_default_model
    from core.runs import warm
    from core.runs.backends import job_environment

    ensure_default_model()
    dataset = str(REPO / "tests" / "fixtures" / "alpaca_en_demo.json")
    os.environ["FTS_WARM_WORKER"] = "1"
    env = job_environment()
    warm.ensure(env)
    t0 = time.monotonic()
    assert warm.wait_ready(env, 300), "the warm worker did not start"
    print(f"warm worker ready {time.monotonic() - t0:.1f} s after it was asked for (once per dashboard start)")
    results: dict[str, list] = {"import": [], "cold": [], "warm": []}
    for i in range(args.rounds):
        results["import"].append(cold_import_s())
        results["cold"].append(one_run(dataset, warm_on=False, processes=args.processes))
        results["warm"].append(one_run(dataset, warm_on=True, processes=args.processes))
        print(f"round {i + 1}: cold import {results['import'][-1]:.2f} s · cold run step 1 "
              f"{results['cold'][-1][0]:.2f} s (end {results['cold'][-1][1]:.2f} s) · warm run step 1 "
              f"{results['warm'][-1][0]:.2f} s (end {results['warm'][-1][1]:.2f} s, warm={results['warm'][-1][2]})",
              flush=True)
    imp = statistics.median(results["import"])
    cold = statistics.median(r[0] for r in results["cold"])
    hot = statistics.median(r[0] for r in results["warm"])
    cold_end = statistics.median(r[1] for r in results["cold"])
    hot_end = statistics.median(r[1] for r in results["warm"])
    load = os.getloadavg()[0]
    print(f"\nmedians of {args.rounds} rounds, {args.processes} process(es) (load average {load:.1f}):")
    print(f"  cold `import torch, transformers, peft, trl`: {imp:.2f} s")
    print(f"  submit -> step 1: cold worker {cold:.2f} s, warm worker {hot:.2f} s ({cold / hot:.1f}x faster; "
          f"{'under' if hot < imp else 'over'} the cold import alone)")
    print(f"  submit -> run finished (1 step, adapter saved): cold {cold_end:.2f} s, warm {hot_end:.2f} s")
    assert all(r[2] for r in results["warm"]) and not any(r[2] for r in results["cold"])
    warm.stop(env)


if __name__ == "__main__":
    main()
