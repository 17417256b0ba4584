"""Generation speed of the Playground and of Evaluate against plain transformers loops, measured in one run.

Playground: both sides streaming at once (base and tuned out of one batched decode) vs a plain single
``model.generate`` on the same model and settings run alone — base alone for the base side, base+adapter (PEFT,
unmerged) alone for the tuned side. Tokens/s end to end (request to last token), greedy, same prompt.

Evaluate: examples/s (base + tuned answers) on the same demo-task rows: (a) naive, one example at a time;
(b) a plain batched ``generate`` loop, left-padded batches of 16, greedy, base then tuned; (c) ours: length-sorted
batches, base and tuned rows of a prompt in one batch (PEFT adapter names), finished rows leaving the batch.

    .venv/bin/python bench/generation_speed.py [--adapter DIR] [--rows 32] [--new-tokens 64]

Without ``--adapter`` it trains a small LoRA on the demo task first (about a minute on 2 cores).
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


def train_adapter(workdir: Path) -> str:
    os.environ["FTS_WORKSPACE"] = str(workdir / "ws")
    from core import runs
    from core.data import import_demo_task
    from core.train.config import TrainConfig
    from core.train.jobs import submit_training

    ds = import_demo_task(240, seed=0, model=None)
    cfg = TrainConfig(dataset=str(ds.dataset_id), lora_r=16, lora_alpha=32, max_steps=20, batch_size=4,
                      learning_rate=2e-3, max_length=256, save_steps=0, name="bench-adapter")
    run = runs.wait_for(submit_training(cfg).id, timeout_s=1800)
    if run.status != runs.RunStatus.succeeded:
        raise SystemExit(f"training the bench adapter failed: {run.error}")
    return run.adapter_path


def plain_generate(model, tok, prompts: list[list[int]], new_tokens: int, batch: int) -> list[int]:
    """A plain transformers loop: left-padded batches, greedy; returns generated lengths."""
    import torch

    lengths = []
    for s in range(0, len(prompts), batch):
        chunk = prompts[s:s + batch]
        longest = max(map(len, chunk))
        ids = torch.full((len(chunk), longest), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, p in enumerate(chunk):
            ids[i, longest - len(p):] = torch.tensor(p)
            mask[i, longest - len(p):] = 1
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens, do_sample=False,
                                 pad_token_id=tok.pad_token_id)
        for row in out[:, longest:]:
            n = int((row != tok.pad_token_id).sum())
            lengths.append(n)
    return lengths


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--adapter", default=None)
    ap.add_argument("--rows", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fts-bench-gen-"))
    adapter = args.adapter or train_adapter(work)

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from core.data.demo import demo_prompts, generate_demo_rows
    from core.generate import BASE_ADAPTER, GenSettings, ModelCache, ModelSource, generate_rows, prompt_ids, stream
    from core.models import ensure_default_model, load_tokenizer

    base_dir = str(ensure_default_model())
    tok = load_tokenizer(base_dir)
    tok.padding_side = "left"
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32),
                                      adapter).eval()
    cache = ModelCache()
    slot_b = cache.slot(ModelSource("base", "default"))
    slot_t = cache.slot(ModelSource("tuned", "default", adapter))
    slot_b = type(slot_b)(slot_b.source, slot_b.loaded, BASE_ADAPTER)
    n_new = args.new_tokens
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; adapter {adapter}")

    # ---- Playground ------------------------------------------------------------------------------------------------
    chat = [{"role": "user", "content": "Write a short story about a lighthouse keeper who finds a message in a "
                                        "bottle. Give it a beginning, a middle and an end."}]
    ids = prompt_ids(tok, chat)
    x = torch.tensor([ids])

    def plain_rate(model) -> float:
        t = time.perf_counter()
        with torch.no_grad():
            out = model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=n_new,
                                 do_sample=False)
        return (out.shape[1] - x.shape[1]) / (time.perf_counter() - t)

    def ours_rates() -> tuple[float, float, int, int]:
        t = time.perf_counter()
        *_, sides = stream([slot_b, slot_t], [chat, chat], GenSettings(max_new_tokens=n_new))
        # end-to-end rate per side: its tokens over the time from the request to its last token
        b, tt = sides
        dec_end = time.perf_counter() - t
        return b.tokens / dec_end, tt.tokens / dec_end, b.tokens, tt.tokens

    plain_rate(base), ours_rates()  # warm-up
    pb, pt, ob, ot = [], [], [], []
    for _ in range(args.repeats):
        pb.append(plain_rate(base))
        pt.append(plain_rate(tuned))
        rb, rt, nb, nt = ours_rates()
        ob.append(rb)
        ot.append(rt)
    print("\nPlayground, both sides at once vs each model alone (tokens/s, median of "
          f"{args.repeats}; {nb} and {nt} tokens):")
    print(f"  plain generate, base alone:   {statistics.median(pb):6.1f}")
    print(f"  plain generate, tuned alone:  {statistics.median(pt):6.1f}")
    for label, ours_side, plain_side in (("base", ob, pb), ("tuned", ot, pt)):
        o, p = statistics.median(ours_side), statistics.median(plain_side)
        print(f"  ours, {label} side:{' ' * (23 - len(label))}{o:6.1f}  ratio {o / p:.2f}x")

    # ---- Evaluate --------------------------------------------------------------------------------------------------
    rows = generate_demo_rows(args.rows, seed=1)
    prompts = [prompt_ids(tok, p) for p in demo_prompts(rows)]
    n = len(prompts)

    t = time.perf_counter()
    for model in (base, tuned):
        plain_generate(model, tok, prompts, n_new, batch=1)
    naive = 2 * n / (time.perf_counter() - t)
    t = time.perf_counter()
    for model in (base, tuned):
        plain_generate(model, tok, prompts, n_new, batch=16)
    batched = 2 * n / (time.perf_counter() - t)
    t = time.perf_counter()
    generate_rows(slot_b.loaded, prompts * 2, [BASE_ADAPTER] * n + [slot_t.adapter_name] * n,
                  GenSettings(max_new_tokens=n_new), batch_size=32)
    ours = 2 * n / (time.perf_counter() - t)
    print(f"\nEvaluate generation, {n} demo rows x (base + tuned), {n_new} new tokens, greedy (examples/s):")
    print(f"  (a) naive, one at a time:          {naive:6.2f}")
    print(f"  (b) plain batched generate, bs 16: {batched:6.2f}  ({batched / naive:.1f}x naive)")
    print(f"  (c) ours:                          {ours:6.2f}  ({ours / batched:.2f}x plain batched, "
          f"{ours / naive:.1f}x naive)")


if __name__ == "__main__":
    main()
