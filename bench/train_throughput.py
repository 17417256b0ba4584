"""Training throughput: our worker vs a plain TRL SFTTrainer script, same model/data/LoRA, measured in one run.

    .venv/bin/python bench/train_throughput.py [--steps 10] [--data ../shared/datasets/alpaca_en_demo.json]

Model: the embedded SmolLM2-135M-Instruct; LoRA r=16 on all linear layers; batch 4; max length 512; fp32 on CPU.
Two datasets: the variable-length alpaca sample, and uniform-length rows (every row exactly --uniform-length tokens).
Throughput = non-padding tokens per second, from the end of step 1 to the end of the last step. Prints ratios.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def to_messages_jsonl(rows: list[dict], path: Path) -> None:
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


def uniform_rows(tokenizer, rows: list[dict], length: int) -> list[dict]:
    """Rows cut so every rendered conversation is exactly `length` tokens (assistant answer trimmed)."""
    from core.data.chat import render_text

    out = []
    for r in rows:
        msgs = r["messages"]
        if len(tokenizer(render_text(tokenizer, msgs), add_special_tokens=False)["input_ids"]) < length:
            continue
        # trim the answer token by token until the rendering is exactly `length` tokens
        answer_ids = tokenizer(msgs[-1]["content"], add_special_tokens=False)["input_ids"]
        lo, hi = 0, len(answer_ids)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            trial = msgs[:-1] + [{"role": "assistant", "content": tokenizer.decode(answer_ids[:mid])}]
            if len(tokenizer(render_text(tokenizer, trial), add_special_tokens=False)["input_ids"]) <= length:
                lo = mid
            else:
                hi = mid - 1
        trial = msgs[:-1] + [{"role": "assistant", "content": tokenizer.decode(answer_ids[:lo])}]
        if len(tokenizer(render_text(tokenizer, trial), add_special_tokens=False)["input_ids"]) == length:
            out.append({"messages": trial})
    return out


def run_plain(model_dir: str, data: Path, steps: int, max_length: int) -> dict:
    out = subprocess.run([sys.executable, str(REPO / "bench" / "plain_trl_sft.py"), "--model", model_dir, "--data",
                          str(data), "--steps", str(steps), "--max-length", str(max_length)],
                         capture_output=True, text=True, cwd=REPO)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_ours(data: Path, steps: int, max_length: int, workspace: Path) -> dict:
    from core import runs as jobs
    from core.train.config import TrainConfig
    from core.train.jobs import submit_training

    cfg = TrainConfig(dataset=str(data), method="lora", lora_r=16, lora_alpha=32, batch_size=4,
                      max_length=max_length, max_steps=steps, save_steps=0, name="bench")
    run = jobs.wait_for(submit_training(cfg).id)
    if run.status != "succeeded":
        raise RuntimeError(run.error)
    ms = [m for m in jobs.run_metrics(run.id) if m.loss is not None]
    s_per_step = (ms[-1].wall_time_s - ms[0].wall_time_s) / (len(ms) - 1)
    return {"tokens_per_s": run.tokens_per_s, "s_per_step": s_per_step,
            "tokens_per_step": run.tokens_per_s * s_per_step}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "datasets" / "alpaca_en_demo.json"))
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--uniform-length", type=int, default=256)
    ap.add_argument("--skip-uniform", action="store_true")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="fts-bench-"))
    os.environ["FTS_WORKSPACE"] = str(tmp / "ws")
    os.environ.setdefault("FTS_MODELS_DIR", str(REPO / "workspace" / "models"))
    os.environ["FTS_WORKER_NICE"] = "0"  # a benchmark on an otherwise idle machine: same priority as the baseline
    from core.data import load_training_rows
    from core.models import load_tokenizer, resolve_model

    model_dir = resolve_model("default").path
    tok = load_tokenizer("default")
    rows = [r for r in load_training_rows(args.data) if "messages" in r]
    variable = tmp / "variable.jsonl"
    to_messages_jsonl(rows, variable)
    datasets = [("variable-length (alpaca)", variable, args.max_length)]
    if not args.skip_uniform:
        uni = uniform_rows(tok, rows, args.uniform_length)
        uniform = tmp / "uniform.jsonl"
        to_messages_jsonl(uni, uniform)
        datasets.append((f"uniform {args.uniform_length} tokens ({len(uni)} rows)", uniform, args.max_length))

    results = []
    for label, path, max_len in datasets:
        t = time.time()
        plain = run_plain(model_dir, path, args.steps, max_len)
        ours = run_ours(path, args.steps, max_len, tmp)
        results.append((label, plain, ours))
        print(f"{label}: plain {plain['tokens_per_s']:.1f} tok/s, ours {ours['tokens_per_s']:.1f} tok/s, "
              f"ratio {ours['tokens_per_s'] / plain['tokens_per_s']:.2f}x  ({time.time() - t:.0f}s)", flush=True)
    print("\n| data | plain TRL tok/s | ours tok/s | ratio | plain s/step | ours s/step |")
    print("|---|---|---|---|---|---|")
    for label, plain, ours in results:
        print(f"| {label} | {plain['tokens_per_s']:.1f} | {ours['tokens_per_s']:.1f} | "
              f"{ours['tokens_per_s'] / plain['tokens_per_s']:.2f}x | {plain['s_per_step']:.2f} | "
              f"{ours['s_per_step']:.2f} |")


if __name__ == "__main__":
    main()
