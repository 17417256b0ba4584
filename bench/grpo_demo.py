"""GRPO on the demo task, measured: field accuracy after SFT, after GRPO from the base model, and after SFT followed by
GRPO (continued from the SFT adapter), on the same held-out rows; and a GRPO step's time split into generation
(sampling + scoring the answers) and training.

    .venv/bin/python bench/grpo_demo.py                       # the defaults behind bench/RESULTS.md
    .venv/bin/python bench/grpo_demo.py --grpo-steps 20 --json-out /tmp/grpo.json

Every run goes through the studio's spine (``python -m core train`` / ``runs continue --objective grpo``: the worker
subprocess, checkpoints, metric rows); the held-out rows (seed 1, messages in the train set dropped) are answered
greedily and scored with the demo task's scorer (``core.data.demo.score_predictions``), as ``bench/demo_task.py``.
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
sys.path.insert(0, str(REPO / "bench"))
os.environ.setdefault("FTS_MODELS_DIR", str(REPO / "workspace" / "models"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from demo_task import evaluate, load_base, log

from core.data.demo import generate_demo_rows, write_demo_dataset


def cli(*args: str, env: dict) -> dict:
    out = subprocess.run([sys.executable, "-m", "core", *args, "--json"], cwd=REPO, env=env, capture_output=True,
                         text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"`python -m core {' '.join(args)}` failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout)


def wait(run_id: int, env: dict) -> dict:
    while True:
        run = cli("runs", "show", str(run_id), env=env)
        if run["status"] in ("succeeded", "failed", "stopped", "cancelled"):
            if run["status"] != "succeeded":
                raise SystemExit(f"run {run_id} ended {run['status']}: {run.get('error')}")
            return run
        time.sleep(2)


def grpo_step_split(run_id: int, env: dict) -> dict:
    code = ("import json,sys; from core.runs import store; "
            f"print(json.dumps([m.extra for m in store.metrics({run_id})]))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, check=True)
    rows = [e for e in json.loads(out.stdout) if e and "time/step_s" in e]
    gen = sum(e["time/generate_s"] for e in rows) / len(rows)
    step = sum(e["time/step_s"] for e in rows) / len(rows)
    rewards = [round(e.get("reward", 0.0), 3) for e in rows]
    return {"step_s": round(step, 2), "generate_s": round(gen, 2), "step_train_s": round(step - gen, 2),
            "generate_share": round(gen / step, 3), "reward_by_step": rewards,
            "mean_length_by_step": [round(e.get("completions/mean_length", 0.0), 1) for e in rows]}


def score_adapter(adapter: str | None, rows: list[dict], args) -> dict:
    from peft import PeftModel

    from core.models import load_tokenizer

    base = str(REPO / "workspace" / "models" / "smollm2-135m-instruct")
    tokenizer = load_tokenizer(base)
    model = load_base(base)
    if adapter:
        model = PeftModel.from_pretrained(model, adapter)
    scores, _, secs = evaluate(model, tokenizer, rows, args)
    return {"field_accuracy": round(scores["field_accuracy"], 3),
            "json_valid_rate": round(scores["json_valid_rate"], 3),
            "exact_match_rate": round(scores["exact_match_rate"], 3), "eval_s": round(secs, 1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train-rows", type=int, default=400)
    ap.add_argument("--eval-rows", type=int, default=40)
    ap.add_argument("--sft-steps", type=int, default=20)
    ap.add_argument("--grpo-steps", type=int, default=10)
    ap.add_argument("--prompts-per-step", type=int, default=2)
    ap.add_argument("--generations", type=int, default=4)
    ap.add_argument("--grpo-lr", type=float, default=5e-4)
    ap.add_argument("--max-new-tokens", type=int, default=80)
    ap.add_argument("--gen-batch-size", type=int, default=8)
    ap.add_argument("--json-out", default=None)
    args = ap.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="grpo-demo-"))
    env = {**os.environ, "FTS_WORKSPACE": str(work / "ws")}
    env.pop("DATABASE_URL", None)
    train_rows = generate_demo_rows(args.train_rows, seed=0)
    seen = {r["messages"][1]["content"] for r in train_rows}
    held_out = [r for r in generate_demo_rows(args.eval_rows * 2, seed=1) if r["messages"][1]["content"] not in seen]
    held_out = held_out[: args.eval_rows]
    data = write_demo_dataset(work / "demo.jsonl", n=args.train_rows, seed=0)
    common = {"dataset": str(data), "batch_size": 4, "max_length": 384, "save_steps": 0, "seed": 42}
    grpo = {"objective": "grpo", "rewards": ["field_accuracy"], "num_generations": args.generations,
            "max_completion_length": args.max_new_tokens, "batch_size": args.prompts_per_step,
            "learning_rate": args.grpo_lr, "max_steps": args.grpo_steps}

    def train(name: str, **cfg) -> dict:
        path = work / f"{name}.yaml"
        path.write_text(json.dumps({**common, "name": name, **cfg}), encoding="utf-8")  # JSON is YAML
        t0 = time.time()
        run = wait(cli("train", "--config", str(path), env=env)["id"], env)
        run["wall_s"] = round(time.time() - t0, 1)
        log(f"{name}: run {run['id']} in {run['wall_s']} s")
        return run

    report: dict = {"settings": vars(args)}
    log("scoring the base model")
    report["base"] = score_adapter(None, held_out, args)
    sft = train("sft", max_steps=args.sft_steps, learning_rate=2e-3, warmup_ratio=0.05)
    report["sft"] = {**score_adapter(sft["adapter_path"], held_out, args), "train_s": sft["wall_s"]}
    g = train("grpo-from-base", **grpo)
    report["grpo_from_base"] = {**score_adapter(g["adapter_path"], held_out, args), "train_s": g["wall_s"],
                                **grpo_step_split(g["id"], env)}
    t0 = time.time()
    same = [f"--set={k}={json.dumps(v)}" for k, v in grpo.items() if k not in ("objective", "max_steps")]
    cont = cli("runs", "continue", str(sft["id"]), "--steps", str(args.grpo_steps), "--objective", "grpo",
               *same, "--set=warmup_ratio=0", env=env)  # the same GRPO settings as from the base
    sg = wait(cont["id"], env)
    log(f"sft->grpo: run {sg['id']} in {time.time() - t0:.1f} s")
    report["sft_then_grpo"] = {**score_adapter(sg["adapter_path"], held_out, args),
                               "train_s": round(time.time() - t0, 1), **grpo_step_split(sg["id"], env)}

    print(f"held-out rows: {len(held_out)}; GRPO: {args.grpo_steps} steps x {args.prompts_per_step} prompts x "
          f"{args.generations} answers, <= {args.max_new_tokens} new tokens, reward field_accuracy")
    print(f"{'model':<16} {'field acc':>9} {'json valid':>10} {'exact':>6} {'train s':>8}")
    for key in ("base", "sft", "grpo_from_base", "sft_then_grpo"):
        r = report[key]
        print(f"{key:<16} {r['field_accuracy']:>9.3f} {r['json_valid_rate']:>10.3f} {r['exact_match_rate']:>6.3f} "
              f"{r.get('train_s', 0):>8}")
    for key in ("grpo_from_base", "sft_then_grpo"):
        r = report[key]
        print(f"{key}: GRPO step {r['step_s']} s = generation {r['generate_s']} s ({r['generate_share']:.0%}) + "
              f"training {r['step_train_s']} s; mean reward by step {r['reward_by_step']}")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
