"""What a prompt template's new tokens cost a LoRA run: alpaca (no new tokens) vs chatml (2 new tokens, PEFT
trainable tokens on the embedding and, when untied, the lm_head), same model, same batch, one invocation.

For each architecture (GPT-2: tied lm_head, Conv1D; Llama: untied lm_head) a random base model is built the way
``tests/base_models.py`` builds one, at a size where the vocabulary matters (V = 32,000 by default: the 800-token
byte-level BPE of tests/base_models.py padded with plain filler tokens to V, so the tokenizer and the embedding agree
as in a real base model). Each side then goes through what ``core.train.model`` does: ``apply_template`` on the
tokenizer, ``grow_vocab`` (mean-row init), the rows to train (new tokens + the template's tokens, the base having
no template), ``LoraConfig(r=16, lora_alpha=32, target_modules="all-linear",
trainable_token_indices={embedding: ids, lm_head: ids if untied})``, fused AdamW over the trainable parameters.

Measured, on fixed random token batches (b × s), fp32 on the CPU:

* peak tensor memory of a training step — the bytes of the live model state (unique storages of parameters and
  buffers) + the peak of the running sum of the CPU allocator's allocation/free events that ``torch.profiler``
  (profile_memory=True) records over 2 steps (forward, loss, backward, clip, AdamW step, zero_grad); the same
  measure as bench/calibrate_memory.py, compared with ``estimate_training_memory(...).peak_tensor_bytes``;
* step time — the same step, without the profiler, alternating alpaca and chatml steps so that machine noise
  falls on both (first step of each discarded); median, mean and min reported, ratios of the medians and minima.

    .venv/bin/python bench/template_cost.py                      # gpt2 + llama, V=32000, h=256, 2 layers, 2×256
    .venv/bin/python bench/template_cost.py --vocab 50257 --archs gpt2 --json out.json
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

MIB = 2**20


def base_tokenizer_of(vocab: int):
    from tests.base_models import base_tokenizer

    tok = base_tokenizer()
    if vocab > len(tok):
        tok.add_tokens([f"filler{i}" for i in range(vocab - len(tok))])
    return tok


def base_model(arch: str, vocab: int, hidden: int, layers: int):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    if arch == "gpt2":  # as tests/base_models.make_base_model, larger
        return GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_positions=512, n_embd=hidden, n_layer=layers, n_head=4,
                                          bos_token_id=0, eos_token_id=0))
    return LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden,
                                        num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                                        max_position_embeddings=512, tie_word_embeddings=False, bos_token_id=0,
                                        eos_token_id=0))


def prepare(model, tokenizer, template: str):
    """core.train.model's template steps + LoRA config, on a copy of the base model; (peft model, trained ids)."""
    from peft import LoraConfig, get_peft_model

    from core.data.templates import apply_template, embedding_module_names, grow_vocab

    base_had_template = bool(getattr(tokenizer, "chat_template", None))
    applied = apply_template(tokenizer, template)
    grow_vocab(model, len(tokenizer))
    wanted = applied.new_tokens + ([] if base_had_template else applied.template_tokens)
    trained_ids = sorted({int(tokenizer.convert_tokens_to_ids(t)) for t in wanted})
    token_rows = None
    if trained_ids:
        emb_name, head_name, tied = embedding_module_names(model)
        token_rows = {emb_name.rsplit(".", 1)[-1]: trained_ids}
        if head_name and not tied:
            token_rows[head_name.rsplit(".", 1)[-1]] = trained_ids
    model.config.use_cache = False
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM",
                      trainable_token_indices=token_rows)
    peft_model = get_peft_model(model, lora)
    peft_model.train()
    return peft_model, trained_ids, token_rows


def make_step(model, ids):
    import torch

    trainable = [p for p in model.parameters() if p.requires_grad]
    try:
        opt = torch.optim.AdamW(trainable, lr=1e-4, fused=True)
    except (RuntimeError, TypeError):
        opt = torch.optim.AdamW(trainable, lr=1e-4, foreach=False)

    def step() -> float:
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    return step, opt


def measure_peak(model, ids, steps: int = 2) -> int:
    from calibrate_memory import _live_model_tensors, _storage_bytes
    from torch.profiler import ProfilerActivity, profile

    step, _opt = make_step(model, ids)
    baseline = _storage_bytes(_live_model_tensors(model))
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        for _ in range(steps):
            step()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]" and e.device_type().name == "CPU")
    running = peak = 0
    for _, nbytes in events:
        running += nbytes
        peak = max(peak, running)
    return baseline + peak


def run_arch(arch: str, args) -> dict:
    import torch

    from core.estimate import TrainingPlan, estimate_training_memory, spec_from_config

    tok = base_tokenizer_of(args.vocab)
    base = base_model(arch, len(tok), args.hidden, args.layers)
    spec = spec_from_config(base.config, f"{arch}-V{len(tok)}-h{args.hidden}-L{args.layers}")
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, len(tok), (args.batch, args.seq), generator=g)
    sides = {}
    for template in ("alpaca", "chatml"):
        t = copy.deepcopy(tok)
        model, trained_ids, token_rows = prepare(copy.deepcopy(base), t, template)
        batch = ids.clone()
        if trained_ids:  # the new tokens appear in the batch, where alpaca has EOS
            batch[:, 0], batch[:, -1] = trained_ids[0], trained_ids[-1]
        else:
            batch[:, 0] = batch[:, -1] = t.eos_token_id
        plan = TrainingPlan(method="lora", precision="fp32", optimizer="adamw", batch_size=args.batch,
                            seq_len=args.seq, lora_r=16, lora_targets=("all-linear",), device="cpu",
                            new_tokens=len(trained_ids))
        est = estimate_training_memory(spec, plan)
        wrapped = [n for n, m in model.named_modules() if type(m).__name__ == "TrainableTokensWrapper"]
        sides[template] = {"model": model, "batch": batch, "trained_ids": trained_ids, "targets": token_rows,
                           "wrapped": wrapped,
                           "est": est, "vocab_rows": int(model.get_input_embeddings().weight.shape[0])}
    # memory: one side at a time, fresh optimizer each
    for side in sides.values():
        side["measured"] = measure_peak(side["model"], side["batch"])
    # time: alternate the sides step by step
    steppers = {k: make_step(v["model"], v["batch"])[0] for k, v in sides.items()}
    times: dict[str, list[float]] = {k: [] for k in sides}
    for i in range(args.steps + 1):
        for k, step in steppers.items():
            t0 = time.perf_counter()
            step()
            if i:  # the first step of each side allocates the optimizer states
                times[k].append(time.perf_counter() - t0)
    a, b = sides["alpaca"], sides["chatml"]
    out = {
        "arch": arch, "spec": spec.describe(), "tied": spec.tie_word_embeddings, "batch": args.batch, "seq": args.seq,
        "trained_ids": b["trained_ids"], "trainable_token_targets": list(b["targets"] or {}),
        "wrapped_layers": b["wrapped"],
        "vocab_rows": {k: v["vocab_rows"] for k, v in sides.items()},
    }
    for k, v in sides.items():
        out[k] = {"measured_peak": int(v["measured"]), "estimated_peak": int(v["est"].peak_tensor_bytes),
                  "estimated_phase": v["est"].peak_phase, "step_s_mean": statistics.mean(times[k]),
                  "step_s_median": statistics.median(times[k]), "step_s_min": min(times[k]),
                  "error_pct": round((v["est"].peak_tensor_bytes - v["measured"]) / v["measured"] * 100, 2)}
    out["measured_extra"] = int(b["measured"] - a["measured"])
    out["estimated_extra"] = int(b["est"].peak_tensor_bytes - a["est"].peak_tensor_bytes)
    out["new_token_components"] = {k: v for k, v in b["est"].component_bytes().items() if k.startswith("new_token")}
    out["peak_ratio"] = b["measured"] / a["measured"]
    out["time_ratio"] = out["chatml"]["step_s_median"] / out["alpaca"]["step_s_median"]
    out["time_ratio_min"] = out["chatml"]["step_s_min"] / out["alpaca"]["step_s_min"]
    out["merged_copy_bytes"] = 4 * b["vocab_rows"] * spec.hidden_size
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archs", default="gpt2,llama")
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=12, help="timed steps per side (after one untimed)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    import torch

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; fp32 CPU; LoRA r=16 all-linear; "
          f"batch {args.batch}×{args.seq}")
    results = []
    for arch in [a.strip() for a in args.archs.split(",") if a.strip()]:
        r = run_arch(arch, args)
        results.append(r)
        print(f"\n{r['spec']}")
        print(f"  chatml trains rows {r['trained_ids']} via trainable tokens on {r['trainable_token_targets']} "
              f"(PEFT wrapped: {', '.join(w.split('.')[-1] for w in r['wrapped_layers'])}); "
              f"vocab rows alpaca {r['vocab_rows']['alpaca']:,}, chatml {r['vocab_rows']['chatml']:,}; "
              f"one merged V×h fp32 copy = {r['merged_copy_bytes'] / MIB:.1f} MiB")
        for k in ("alpaca", "chatml"):
            s = r[k]
            print(f"  {k:<7} peak measured {s['measured_peak'] / MIB:8.1f} MiB, "
                  f"estimated {s['estimated_peak'] / MIB:8.1f} MiB ({s['error_pct']:+.1f} %, "
                  f"at {s['estimated_phase']}); step median {s['step_s_median'] * 1000:7.1f} ms, "
                  f"mean {s['step_s_mean'] * 1000:7.1f}, min {s['step_s_min'] * 1000:7.1f}")
        print(f"  extra peak (chatml - alpaca): measured {r['measured_extra'] / MIB:.1f} MiB, estimated "
              f"{r['estimated_extra'] / MIB:.1f} MiB; ratios chatml/alpaca: peak {r['peak_ratio']:.3f}, "
              f"step time {r['time_ratio']:.3f} (medians; {r['time_ratio_min']:.3f} of the minima)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
