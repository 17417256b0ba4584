"""The baseline for preference tuning: a plain TRL DPOTrainer script at its defaults (what a user would write), LoRA,
fp32 on CPU; its reference is the base with the adapter disabled (TRL's default for a PEFT model, one extra forward
per step).

Prints one JSON line: train_runtime (s), steps, pairs trained and the tokens of those pairs.
"""
import argparse
import json

import torch
from datasets import Dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import DPOConfig, DPOTrainer

ap = argparse.ArgumentParser()
ap.add_argument("--model", required=True)
ap.add_argument("--data", required=True, help="JSONL of {'prompt': [...], 'chosen': [...], 'rejected': [...]} rows")
ap.add_argument("--steps", type=int, default=8)
ap.add_argument("--batch-size", type=int, default=2)
ap.add_argument("--max-length", type=int, default=256)
ap.add_argument("--lr", type=float, default=5e-4)
args = ap.parse_args()

rows = [json.loads(line) for line in open(args.data)]
tok = AutoTokenizer.from_pretrained(args.model)
model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
cfg = DPOConfig(output_dir="/tmp/plain-dpo", max_steps=args.steps, per_device_train_batch_size=args.batch_size,
                max_length=args.max_length, bf16=False, fp16=False, use_cpu=True, report_to=[], logging_steps=1,
                save_strategy="no", learning_rate=args.lr, disable_tqdm=True, seed=7)
trainer = DPOTrainer(model=model, args=cfg, train_dataset=Dataset.from_list(rows), processing_class=tok,
                     peft_config=LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"))
out = trainer.train()
margins = [h["rewards/margins"] for h in trainer.state.log_history if "rewards/margins" in h]
print(json.dumps({"train_runtime": out.metrics["train_runtime"], "steps": trainer.state.global_step,
                  "pairs": trainer.state.global_step * args.batch_size,
                  "last_margin": margins[-1] if margins else None}))
