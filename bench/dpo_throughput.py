"""DPO throughput (issue 13): the studio's DPO path vs a plain TRL DPOTrainer script at its defaults, on the same
pairs, model (embedded SmolLM2-135M-Instruct), LoRA settings (r 16, all-linear), batch, max length and steps, fp32 on
this CPU. Target: >= 1.5x pairs per second.

    .venv/bin/python bench/dpo_throughput.py [--steps 8] [--batch-size 2] [--max-length 256] [--rounds 2]

Ours: a real run through the worker (submit_training); its time = the reference pass it makes before step 1 (the
model at step 0 scoring each pair once) + the trainer's train_runtime. Plain TRL: its train_runtime (its reference is
the adapter-disabled base, one extra forward per step, inside that time). Tokenisation and model loading are outside
both. Runs alternate plain / ours so both see the same machine state; medians are compared.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("FTS_MODELS_DIR", str(REPO / "workspace" / "models"))


def ours(data: str, args) -> dict:
    from core import runs
    from core.train.config import TrainConfig
    from core.train.jobs import submit_training

    config = TrainConfig(dataset=data, objective="dpo", method="lora", max_steps=args.steps,
                         batch_size=args.batch_size, max_length=args.max_length, learning_rate=5e-4, lora_r=16,
                         lora_alpha=32, save_steps=0, seed=7)
    run = runs.wait_for(submit_training(config).id, timeout_s=3600, poll_s=0.5)
    assert run.status == "succeeded", runs.log_tail(run.id)
    log = Path(run.log_path).read_text()
    ref_s = float(re.search(r"reference log-probabilities: \d+ pairs in ([\d.]+)s", log).group(1))
    margins = [(m.extra or {}).get("rewards/margins") for m in runs.run_metrics(run.id)]
    return {"train_runtime": run.final_metrics["train_runtime"], "reference_s": ref_s,
            "seconds": run.final_metrics["train_runtime"] + ref_s, "pairs": args.steps * args.batch_size,
            "last_margin": margins[-1]}


def plain(model_dir: str, jsonl: str, args) -> dict:
    out = subprocess.run([sys.executable, str(REPO / "bench" / "plain_trl_dpo.py"), "--model", model_dir, "--data",
                          jsonl, "--steps", str(args.steps), "--batch-size", str(args.batch_size), "--max-length",
                          str(args.max_length)], capture_output=True, text=True, check=True)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    res["seconds"] = res["train_runtime"]
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    os.environ["FTS_WORKSPACE"] = tempfile.mkdtemp(prefix="fts-bench-dpo-")
    os.environ.pop("DATABASE_URL", None)

    from core.data.prepare import prepare_dataset
    from core.models import ensure_default_model

    model_dir = str(ensure_default_model())
    data = str(REPO / "tests" / "fixtures" / "dpo_en_demo.json")
    rows = [r.row for r in prepare_dataset(data).rows]
    jsonl = Path(os.environ["FTS_WORKSPACE"]) / "pairs.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"{len(rows)} pairs, {args.steps} steps x {args.batch_size} pairs, max length {args.max_length}, "
          "LoRA r16 all-linear, fp32 CPU", flush=True)
    results: dict[str, list[dict]] = {"plain TRL": [], "ours": []}
    for i in range(args.rounds):
        for name in ("plain TRL", "ours"):
            t = time.time()
            res = plain(model_dir, str(jsonl), args) if name == "plain TRL" else ours(data, args)
            results[name].append(res)
            print(f"round {i + 1} {name:9s}: {res['seconds']:6.1f} s for {res['pairs']} pairs "
                  f"({res['pairs'] / res['seconds']:.3f} pairs/s; last margin {res['last_margin']:.3f}"
                  + (f"; reference pass {res['reference_s']:.1f} s" if "reference_s" in res else "")
                  + f"; wall {time.time() - t:.0f} s)", flush=True)
    p = statistics.median(r["pairs"] / r["seconds"] for r in results["plain TRL"])
    o = statistics.median(r["pairs"] / r["seconds"] for r in results["ours"])
    print(f"\nmedian pairs/s: plain TRL {p:.3f}, ours {o:.3f}; ratio {o / p:.2f}x (target >= 1.5x)")


if __name__ == "__main__":
    main()
