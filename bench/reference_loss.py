"""Evaluate's reference loss (the NLL of each reference answer under base and tuned) with and without the shared
prefix: rows that start alike up to their first label (the demo task's system prompt and the user turn's opening,
64 of ~145 tokens) compute it once per adapter and go on from its KV cache.

    .venv/bin/python bench/reference_loss.py [--rows 16] [--rounds 3]

The embedded default model (SmolLM2-135M) with a LoRA adapter whose B matrices are perturbed (so both sides do real
work), base and tuned rows of the demo task in one batch as the evaluation job sends them; the two ways alternate,
``--rounds`` times each, in one process. The summed NLLs must agree (printed).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    import core.evaluate.job as job
    from core.data.chat import tokenize_conversation
    from core.data.demo import generate_demo_rows
    from core.generate import ModelCache, ModelSource
    from core.models import resolve_model

    base = resolve_model("default").path
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32),
                           LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
    adapter = Path(tempfile.mkdtemp(prefix="fts-bench-adapter-")) / "adapter"
    model.save_pretrained(adapter)
    cache = ModelCache()
    cache.slot(ModelSource("base", "default"))
    tuned = cache.slot(ModelSource("tuned", "default", str(adapter)))
    loaded = tuned.loaded
    rows = generate_demo_rows(args.rows, seed=7)
    examples = [(tc.input_ids, tc.assistant_mask)
                for tc in (tokenize_conversation(loaded.tokenizer, r["messages"]) for r in rows)] * 2
    adapters = [None] * len(rows) + [tuned.adapter_name] * len(rows)
    tokens = sum(len(e[0]) for e in examples)

    def once(shared: bool) -> tuple[float, float]:
        keep = job.MIN_SHARED_PREFIX
        job.MIN_SHARED_PREFIX = keep if shared else 10**9
        try:
            t0 = time.perf_counter()
            out = job.reference_losses(loaded, examples, adapters, batch_size=2 * args.rows)
            return time.perf_counter() - t0, sum(nll for nll, _ in out)
        finally:
            job.MIN_SHARED_PREFIX = keep

    once(True)
    once(False)  # warm both paths
    times: dict[bool, list[float]] = {True: [], False: []}
    sums: dict[bool, float] = {}
    for _ in range(args.rounds):
        for shared in (False, True):
            s, total = once(shared)
            times[shared].append(s)
            sums[shared] = total
    print(f"{len(examples)} rows (base + tuned), {tokens} tokens, {torch.get_num_threads()} threads, "
          f"{args.rounds} rounds each")
    print("| reference loss | s (median) | summed NLL |")
    print("|---|---:|---:|")
    for shared in (False, True):
        name = "shared prefix once per adapter" if shared else "every row whole"
        print(f"| {name} | {statistics.median(times[shared]):.2f} | {sums[shared]:.3f} |")


if __name__ == "__main__":
    main()
