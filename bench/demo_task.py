"""Measure the built-in demo task: the embedded model before and after a short LoRA run.

    FTS_MODELS_DIR=workspace/models .venv/bin/python bench/demo_task.py            # defaults used in bench/DEMO.md
    .venv/bin/python bench/demo_task.py --trainer inprocess --steps 50 --lr 2e-3  # same loop without the CLI
    .venv/bin/python bench/demo_task.py --trainer cli                             # train through `python -m core train`

Steps: generate train rows (seed 0) and held-out rows (seed 1, any message also in the train set dropped), score the
base model's greedy answers on the held-out rows, train a LoRA adapter, score the tuned model the same way, print a
table (and ``--json-out`` a JSON report).

Training runs through the project's CLI (``python -m core train --config run.yaml --wait``) when ``--trainer cli``,
or when ``--trainer auto`` and ``core/__main__.py`` exists; otherwise a minimal in-process TRL SFTTrainer + PEFT LoRA
loop with the same hyperparameters (loss on the assistant turn only, via ``core.data.chat.tokenize_conversation``).
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
os.environ.setdefault("FTS_MODELS_DIR", str(REPO / "workspace" / "models"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from core.data.demo import (
    FIELDS,
    demo_prompts,
    demo_references,
    generate_demo_rows,
    score_predictions,
    write_demo_dataset,
)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---- generation ---------------------------------------------------------------------------------------------------

def generate_answers(model, tokenizer, prompts: list[list[dict]], max_new_tokens: int, batch_size: int) -> list[str]:
    """Greedy answers for chat prompts, batched with left padding (longest prompts first to pad little)."""
    import torch

    tokenizer.padding_side = "left"
    texts = [tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=False) for p in prompts]
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    answers: list[str] = [""] * len(texts)
    model.eval()
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        enc = tokenizer([texts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.inference_mode():
            out = model.generate(
                **enc,
                do_sample=False,
                max_new_tokens=max_new_tokens,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
        new = out[:, enc["input_ids"].shape[1] :]
        for i, seq in zip(idx, new):
            answers[i] = tokenizer.decode(seq, skip_special_tokens=True).strip()
    return answers


def evaluate(model, tokenizer, rows: list[dict], args) -> tuple[dict, list[str], float]:
    started = time.time()
    preds = generate_answers(model, tokenizer, demo_prompts(rows), args.max_new_tokens, args.gen_batch_size)
    return score_predictions(preds, demo_references(rows)), preds, time.time() - started


def load_base(path: str):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)


# ---- training -------------------------------------------------------------------------------------------------

def train_inprocess(model_path: str, tokenizer, train_rows: list[dict], args, out_dir: Path) -> tuple[Path, float]:
    """Minimal TRL SFTTrainer + PEFT LoRA run, fp32 on CPU, loss on the assistant turn only."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    from core.data.chat import tokenize_conversation

    records = []
    for row in train_rows:
        tok = tokenize_conversation(tokenizer, row["messages"], args.max_length)
        records.append({"input_ids": tok.input_ids, "assistant_masks": tok.assistant_mask})
    dataset = Dataset.from_list(records)
    lengths = [len(r["input_ids"]) for r in records]
    log(f"train set: {len(records)} rows, {sum(lengths) / len(lengths):.0f} tokens/row on average, max {max(lengths)}")

    tokenizer.padding_side = "right"
    model = load_base(model_path)
    peft_config = LoraConfig(
        r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM"
    )
    config = SFTConfig(
        output_dir=str(out_dir / "trainer"),
        max_steps=args.steps,
        per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=1,
        learning_rate=args.lr,
        lr_scheduler_type=args.scheduler,
        warmup_steps=args.warmup_steps,
        weight_decay=0.0,
        max_grad_norm=1.0,
        logging_steps=5,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        bf16=False,
        fp16=False,
        seed=args.seed,
        data_seed=args.seed,
        max_length=args.max_length,
        packing=False,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
                         peft_config=peft_config)
    started = time.time()
    trainer.train()
    train_s = time.time() - started
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    log(f"loss: {' '.join(f'{x:.3f}' for x in losses)}")
    adapter = out_dir / "adapter"
    trainer.model.save_pretrained(adapter)
    del trainer, model
    torch.set_grad_enabled(True)
    return adapter, train_s


def _first_json(text: str) -> dict | None:
    """The first JSON object printed at the start of a line (the CLI pretty-prints with indent=2)."""
    decoder = json.JSONDecoder()
    for i, line in enumerate(text.splitlines(keepends=True)):
        if line.startswith("{"):
            start = sum(len(x) for x in text.splitlines(keepends=True)[:i])
            try:
                obj, _ = decoder.raw_decode(text, start)
            except json.JSONDecodeError:
                continue
            if isinstance(obj, dict):
                return obj
    return None


def train_cli(train_rows: list[dict], args, out_dir: Path) -> tuple[Path, float]:
    """Train through the project's CLI: ``python -m core train --config run.yaml --wait --json``.

    The run goes into a throwaway workspace under ``out_dir`` (its own SQLite DB) unless ``--workspace`` names one,
    and the worker runs at normal priority (FTS_WORKER_NICE=0) so the timing is comparable with the in-process loop.
    """
    import yaml

    data_path = out_dir / "demo_train.jsonl"
    with data_path.open("w", encoding="utf-8") as f:
        for row in train_rows:
            f.write(json.dumps(row) + "\n")
    config = {
        "name": "demo-task-bench",
        "base_model": "default",
        "dataset": str(data_path),
        "method": "lora",
        "max_steps": args.steps,
        "batch_size": args.batch_size,
        "learning_rate": args.lr,
        "lr_scheduler": args.scheduler,
        "lora_r": args.lora_r,
        "lora_alpha": args.lora_alpha,
        "max_length": args.max_length,
        "precision": "fp32",
        "seed": args.seed,
        "save_steps": 0,
    }
    cfg_path = out_dir / "run.yaml"
    cfg_path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    env = dict(os.environ)
    env["FTS_WORKSPACE"] = str(Path(args.workspace).resolve() if args.workspace else out_dir / "workspace")
    env.setdefault("FTS_WORKER_NICE", "0")
    if args.threads:
        env["FTS_WORKER_THREADS"] = str(args.threads)
    cmd = [sys.executable, "-m", "core", "train", "--config", str(cfg_path), "--wait", "--json"]
    log(f"running {' '.join(cmd)} (FTS_WORKSPACE={env['FTS_WORKSPACE']})")
    started = time.time()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    wall_s = time.time() - started
    report = _first_json(proc.stdout) or {}
    if proc.returncode != 0 or report.get("status") != "succeeded":
        raise SystemExit(
            f"`python -m core train` did not succeed (exit {proc.returncode}, status {report.get('status')}, "
            f"error {report.get('error')}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    adapter = report.get("adapter_path")
    if not adapter and report.get("id") is not None:
        shown = subprocess.run([sys.executable, "-m", "core", "runs", "show", str(report["id"]), "--json"],
                               cwd=REPO, env=env, capture_output=True, text=True)
        adapter = (_first_json(shown.stdout) or {}).get("adapter_path")
    if not adapter or not Path(adapter).is_dir():
        raise SystemExit(f"the CLI run finished but reported no adapter directory:\n{proc.stdout[-3000:]}")
    final = report.get("final_metrics") or {}
    train_s = float(final.get("train_runtime") or report.get("duration_s") or wall_s)
    log(f"CLI run {report.get('id')}: train_runtime {train_s:.0f}s, worker duration {report.get('duration_s')}s, "
        f"CLI wall {wall_s:.0f}s, final loss {report.get('loss')}")
    return Path(adapter), train_s


# ---- main -----------------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train-rows", type=int, default=400)
    ap.add_argument("--eval-rows", type=int, default=40)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--scheduler", default="linear")
    ap.add_argument("--warmup-steps", type=int, default=3)
    ap.add_argument("--lora-r", type=int, default=16)
    ap.add_argument("--lora-alpha", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=384)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--max-new-tokens", type=int, default=80)
    ap.add_argument("--gen-batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=0,
                    help="torch threads for generation and training (0 = auto: 1 when the machine is already busy, "
                         "since OpenMP threads that lose their core stall each other, else torch's default)")
    ap.add_argument("--trainer", choices=("auto", "cli", "inprocess"), default="auto")
    ap.add_argument("--skip-base", action="store_true", help="skip scoring the untouched model")
    ap.add_argument("--workspace", default=None, help="FTS_WORKSPACE for --trainer cli (default: a throwaway one)")
    ap.add_argument("--work-dir", default=None, help="keep the dataset/adapter here (default: a temp dir)")
    ap.add_argument("--json-out", default=None, help="write the full report (scores, predictions) here")
    ap.add_argument("--show", type=int, default=3, help="print this many held-out examples with both answers")
    args = ap.parse_args(argv)

    import torch
    from peft import PeftModel

    from core.models import load_tokenizer, resolve_model

    if not args.threads and os.cpu_count() and os.getloadavg()[0] >= os.cpu_count() - 0.5:
        args.threads = 1
        log(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores: using 1 torch thread")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    trainer = args.trainer
    if trainer == "auto":
        trainer = "cli" if (REPO / "core" / "__main__.py").is_file() else "inprocess"

    model_path = resolve_model("default").path
    tokenizer = load_tokenizer("default")
    train_rows = generate_demo_rows(args.train_rows, seed=0)
    seen = {r["messages"][1]["content"] for r in train_rows}
    eval_rows = [r for r in generate_demo_rows(args.eval_rows * 2, seed=1) if r["messages"][1]["content"] not in seen]
    eval_rows = eval_rows[: args.eval_rows]
    log(f"model {model_path}; {len(train_rows)} train rows (seed 0), {len(eval_rows)} held-out rows (seed 1); "
        f"trainer={trainer}; torch threads={torch.get_num_threads()}")

    report: dict = {"settings": vars(args) | {"trainer": trainer, "torch_threads": torch.get_num_threads()}}
    base_preds: list[str] = []
    if not args.skip_base:
        base = load_base(model_path)
        report["base"], base_preds, gen_s = evaluate(base, tokenizer, eval_rows, args)
        report["base"]["generation_s"] = gen_s
        log(f"base: {json.dumps(report['base'])}")
        del base

    tmp = tempfile.TemporaryDirectory(prefix="demo-bench-")
    out_dir = Path(args.work_dir) if args.work_dir else Path(tmp.name)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_demo_dataset(out_dir / "demo_eval.jsonl", n=args.eval_rows, seed=1)
    if trainer == "cli":
        adapter, train_s = train_cli(train_rows, args, out_dir)
    else:
        adapter, train_s = train_inprocess(model_path, tokenizer, train_rows, args, out_dir)
    log(f"trained in {train_s:.0f}s -> {adapter}")

    tuned = PeftModel.from_pretrained(load_base(model_path), str(adapter))
    report["tuned"], tuned_preds, gen_s = evaluate(tuned, tokenizer, eval_rows, args)
    report["tuned"]["generation_s"] = gen_s
    report["train_s"] = train_s
    log(f"tuned: {json.dumps(report['tuned'])}")

    refs = demo_references(eval_rows)
    for i in range(min(args.show, len(eval_rows))):
        print(f"\n--- held-out #{i}: {eval_rows[i]['messages'][1]['content']!r}")
        print(f"reference: {refs[i]}")
        if base_preds:
            print(f"base:      {base_preds[i][:300]!r}")
        print(f"tuned:     {tuned_preds[i][:300]!r}")

    rows = [("json_valid_rate", "json_valid_rate"), ("field_accuracy", "field_accuracy"),
            ("exact_match_rate", "exact_match_rate")]
    rows += [(f"  {f}", f) for f in FIELDS]
    print(f"\n| metric ({len(eval_rows)} held-out) | base | tuned |\n|---|---|---|")
    for label, key in rows:
        get = (lambda s, key=key: s["per_field"][key]) if key in FIELDS else (lambda s, key=key: s[key])
        base_v = f"{get(report['base']):.3f}" if "base" in report else "-"
        print(f"| {label} | {base_v} | {get(report['tuned']):.3f} |")
    print(f"| training seconds | | {train_s:.0f} |")
    print(f"\nsettings: trainer={trainer} train_rows={args.train_rows} steps={args.steps} batch={args.batch_size} "
          f"lr={args.lr} scheduler={args.scheduler} r={args.lora_r} alpha={args.lora_alpha} fp32 cpu "
          f"threads={torch.get_num_threads()}")

    if args.json_out:
        report["examples"] = [
            {"user": r["messages"][1]["content"], "reference": ref, "base": b, "tuned": t}
            for r, ref, b, t in zip(eval_rows, refs, base_preds or [""] * len(refs), tuned_preds)
        ]
        Path(args.json_out).write_text(json.dumps(report, indent=2), encoding="utf-8")
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
