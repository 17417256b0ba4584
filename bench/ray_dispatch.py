"""Dispatch overhead of the Ray backend (issue 12): seconds from submit to the worker's first training step, through
the Ray backend (a real local head: `ray start --head` on loopback, CPU) vs the local backend, on the same short
LoRA run of the embedded model. Runs alternate local / Ray so both see the same machine state.

    .venv/bin/python bench/ray_dispatch.py [--rounds 3]

Prints each run's figure, the medians and the ratio (target ≤ 1.5×).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("FTS_MODELS_DIR", str(REPO / "workspace" / "models"))


def first_step_s(config) -> tuple[float, float]:
    """(submit → first step recorded, submit → succeeded), seconds."""
    from core import runs
    from core.train.jobs import submit_training

    t0 = time.perf_counter()
    run = submit_training(config)
    first = None
    while True:
        r = runs.get_run(run.id)
        if first is None and r.step >= 1:
            first = time.perf_counter() - t0
        if r.status.is_finished:
            assert r.status == "succeeded", runs.log_tail(run.id)
            return first or time.perf_counter() - t0, time.perf_counter() - t0
        time.sleep(0.05)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    os.environ["FTS_WORKSPACE"] = tempfile.mkdtemp(prefix="fts-bench-ray-")
    os.environ.pop("DATABASE_URL", None)

    from core.models import ensure_default_model
    from core.train.config import TrainConfig
    from tests.conftest import RayHead

    ensure_default_model()
    data = str(REPO / "tests" / "fixtures" / "alpaca_en_demo.json")
    config = TrainConfig(dataset=data, method="lora", max_steps=2, batch_size=2, max_length=96, lora_r=4,
                         lora_alpha=8, save_steps=0, logging_steps=1)
    t = time.perf_counter()
    head = RayHead()
    print(f"ray head up in {time.perf_counter() - t:.1f} s")
    results: dict[str, list[float]] = {"local": [], "ray": []}
    try:
        for i in range(args.rounds):
            for backend in ("local", "ray"):
                os.environ["FTS_JOB_BACKEND"] = backend
                os.environ["RAY_ADDRESS"] = head.address
                os.environ["FTS_RAY_NUM_GPUS"] = "0"
                first, total = first_step_s(config)
                results[backend].append(first)
                print(f"round {i + 1} {backend:5s}: first step after {first:5.2f} s, done after {total:5.2f} s",
                      flush=True)
    finally:
        head.close()
    loc, ray = statistics.median(results["local"]), statistics.median(results["ray"])
    print(f"\nmedian submit -> first step: local {loc:.2f} s, ray {ray:.2f} s; ratio ray/local {ray / loc:.2f}x "
          f"(target <= 1.5x)")


if __name__ == "__main__":
    main()
