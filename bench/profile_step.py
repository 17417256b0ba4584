"""Where one training step's time goes (our worker's loss path, LoRA r=16 all-linear, batch 4, fp32 CPU).

    .venv/bin/python bench/profile_step.py [--attn sdpa|eager]
"""
import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("FTS_MODELS_DIR", str(REPO / "workspace" / "models"))

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from core.data import load_training_rows
from core.models import load_tokenizer, resolve_model
from core.train.tokenize import PaddingFreeCollator, labelled_positions_loss, tokenize_rows

ap = argparse.ArgumentParser()
ap.add_argument("--attn", default="fts_packed_sdpa")
ap.add_argument("--data", default=str(REPO.parent / "shared" / "datasets" / "alpaca_en_demo.json"))
args = ap.parse_args()
from core.train.attention import register

register()
tok = load_tokenizer("default")
rows = load_training_rows(args.data)[:16]
examples, _ = tokenize_rows(tok, rows, 512)
model = AutoModelForCausalLM.from_pretrained(resolve_model("default").path, dtype=torch.float32,
                                             attn_implementation=args.attn)
model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"))
collate = PaddingFreeCollator(tok.pad_token_id)
batches = [collate(examples[i:i + 4]) for i in range(0, 16, 4)]
opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)


def step(b):
    loss, _ = labelled_positions_loss(model, b)
    loss.backward()
    opt.step()
    opt.zero_grad()


step(batches[0])
t = time.perf_counter()
n = 0
for b in batches[1:]:
    step(b)
    n += b["input_ids"].numel()
dt = time.perf_counter() - t
print(f"{n / dt:.1f} tok/s over {len(batches) - 1} steps ({n / (len(batches) - 1):.0f} tokens/step)")
with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
    step(batches[1])
print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=14))
