"""Multi-process training on this CPU host (issue 27): 1 process vs DDP-2 vs FSDP-2 on one random Llama, the same
seed, data and global batch. Prints the loss match, each rank's peak RSS against the per-device estimate, and the
throughput 1 -> 2 processes. Run from a git worktree (editing the tree under a benchmark breaks its subprocesses):

    .venv/bin/python bench/distributed_cpu.py [--hidden 256] [--layers 4] [--steps 30]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--seq", type=int, default=256)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-dist-"))
    os.environ["FTS_WORKSPACE"] = str(tmp / "ws")
    (tmp / "ws").mkdir()
    from tests.base_models import FIXTURES, make_base_model

    model = str(make_base_model(tmp / "llama", "llama", hidden=args.hidden, layers=args.layers))
    from core import runs
    from core.estimate import load_model_spec
    from core.estimate.memory import estimate_training_memory, per_device_peak_bytes
    from core.estimate.report import plan_for_config
    from core.train.config import TrainConfig
    from core.train.jobs import submit_training

    base = dict(base_model=model, chat_template="alpaca", dataset=str(FIXTURES / "alpaca_en_demo.json"),
                max_steps=args.steps, max_length=args.seq, lora_r=8, lora_alpha=16, learning_rate=2e-3,
                save_steps=0, logging_steps=1, seed=7)
    setups = {"1 process (2 threads)": dict(batch_size=4),
              "DDP x2 (1 thread each)": dict(batch_size=2, num_processes=2, distributed="ddp"),
              "FSDP x2 (1 thread each)": dict(batch_size=2, num_processes=2, distributed="fsdp")}
    spec = load_model_spec(model)
    out, curves = {}, {}
    for label, kw in setups.items():
        cfg = TrainConfig(**base, **kw, name=label)
        run = runs.wait_for(submit_training(cfg).id, timeout_s=1800)
        assert run.status == "succeeded", runs.log_tail(run.id)
        metrics = [m for m in runs.run_metrics(run.id) if m.loss is not None]
        curves[label] = [m.loss for m in metrics]
        tokens = metrics[-1].extra["tokens_seen"] - metrics[0].extra["tokens_seen"]
        secs = metrics[-1].wall_time_s - metrics[0].wall_time_s
        log = Path(run.log_path).read_text()
        peaks = [int(float(x) * {"MB": 1e6, "GB": 1e9}[u]) for x, u in
                 re.findall(r"rank \d+ ([\d.]+) (MB|GB)", log.split("ranks: peak RSS")[-1].splitlines()[0])] \
            if "ranks: peak RSS" in log else [run.peak_memory_bytes]
        est = estimate_training_memory(spec, plan_for_config(cfg, device="cpu", bf16_supported=False))
        per_dev = per_device_peak_bytes(est, cfg.distributed, cfg.num_processes, spec.num_layers)
        out[label] = {"tokens_per_s": round(tokens / secs, 1), "rank_peak_rss_mb": [round(p / 1e6) for p in peaks],
                      "estimate_per_device_mb": round(per_dev / 1e6, 1), "final_loss": round(curves[label][-1], 4)}
        print(label, json.dumps(out[label]), flush=True)
    ref = curves["1 process (2 threads)"]
    for label, c in curves.items():
        diff = max(abs(a - b) for a, b in zip(ref, c))
        out[label]["max_loss_diff_vs_1"] = float(f"{diff:.2e}")
    print(json.dumps({"model": f"llama h{args.hidden} L{args.layers}", "params": spec.describe(), "steps": args.steps,
                      "global_batch": 4, "seq": args.seq, "results": out}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
