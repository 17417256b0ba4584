"""The baseline: a plain TRL SFTTrainer script at its defaults (what a user would write), fp32 on CPU.

Prints one JSON line: non-padding tokens/s measured from the end of step 1 to the end of the last step.
"""
import argparse
import json
import time

import torch
from datasets import Dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from trl import SFTConfig, SFTTrainer

ap = argparse.ArgumentParser()
ap.add_argument("--model", required=True)
ap.add_argument("--data", required=True, help="JSONL of {'messages': [...]} rows")
ap.add_argument("--steps", type=int, default=10)
ap.add_argument("--batch-size", type=int, default=4)
ap.add_argument("--max-length", type=int, default=512)
args = ap.parse_args()

rows = [json.loads(line) for line in open(args.data)]
tok = AutoTokenizer.from_pretrained(args.model)
model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
tokens = {"n": 0}
marks = []


class CountingSFTTrainer(SFTTrainer):
    def compute_loss(self, model, inputs, *a, **kw):
        if model.training:
            tokens["n"] += (int(inputs["attention_mask"].sum()) if "attention_mask" in inputs
                            else inputs["input_ids"].numel())
        return super().compute_loss(model, inputs, *a, **kw)


class Clock(TrainerCallback):
    def on_step_end(self, a, state, control, **kw):
        marks.append((time.perf_counter(), tokens["n"]))


cfg = SFTConfig(output_dir="/tmp/plain-sft", max_steps=args.steps, per_device_train_batch_size=args.batch_size,
                max_length=args.max_length, bf16=False, fp16=False, use_cpu=True, report_to=[], logging_steps=1,
                save_strategy="no", learning_rate=2e-4, disable_tqdm=True)
trainer = CountingSFTTrainer(model=model, args=cfg, train_dataset=Dataset.from_list(rows), processing_class=tok,
                             peft_config=LoraConfig(r=16, lora_alpha=32, target_modules="all-linear",
                                                    task_type="CAUSAL_LM"),
                             callbacks=[Clock()])
trainer.train()
(t0, k0), (t1, k1) = marks[0], marks[-1]
print(json.dumps({"tokens_per_s": (k1 - k0) / (t1 - t0), "s_per_step": (t1 - t0) / (len(marks) - 1),
                  "tokens_per_step": (k1 - k0) / (len(marks) - 1)}))
