"""Calibrate the memory estimator against real training steps.

For each configuration (model × method × batch/seq), a fresh subprocess builds the model, runs a few real optimizer
steps (forward, loss, backward, grad clipping, AdamW step, zero_grad) and measures the peak tensor memory:

* CUDA: ``torch.cuda.max_memory_allocated()`` (compared with the estimate's ``peak_tensor_bytes``; the CUDA context
  and allocator slack are reported separately by the estimator and are not in that counter);
* CPU: tracked tensor memory — the bytes of the live model state (unique storages of parameters, buffers and
  bitsandbytes quant constants) plus the running sum of the CPU allocator's allocation/free events recorded by
  ``torch.profiler`` (profile_memory=True) during the steps; the peak of that sum.

Weights are random (``from_config``): memory does not depend on their values, and no download is needed. QLoRA goes
through a saved random checkpoint so bitsandbytes quantises it on load, as in real use.

    python bench/calibrate_memory.py                       # all configs for this device
    python bench/calibrate_memory.py --only smollm2-lora   # one
    python bench/calibrate_memory.py --device cuda --json bench/results_cuda.json
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

# name -> (catalog model, overrides of its config, method, batch, seq, extras)
CONFIGS = {
    "smollm2-full": ("SmolLM2-135M-Instruct", {}, "full", 2, 256, {}),
    "smollm2-full-ckpt": ("SmolLM2-135M-Instruct", {}, "full", 2, 256, {"gradient_checkpointing": True}),
    "smollm2-lora": ("SmolLM2-135M-Instruct", {}, "lora", 2, 256, {}),
    "smollm2-lora-eager": ("SmolLM2-135M-Instruct", {}, "lora", 2, 256, {"attention": "eager"}),
    "smollm2-qlora": ("SmolLM2-135M-Instruct", {}, "qlora", 2, 256, {}),
    "qwen2.5-0.5b-full": ("Qwen2.5-0.5B", {}, "full", 1, 256, {}),
    "qwen2.5-0.5b-lora": ("Qwen2.5-0.5B", {}, "lora", 1, 256, {}),
    "qwen2.5-0.5b-qlora": ("Qwen2.5-0.5B", {}, "qlora", 1, 256, {}),
    "llama-4L-gqa-full": ("Llama-3.1-8B", {"num_hidden_layers": 2, "hidden_size": 1024, "intermediate_size": 3584,
                                           "num_attention_heads": 16, "num_key_value_heads": 4, "vocab_size": 32000},
                          "full", 2, 256, {}),
}
CUDA_EXTRA = {  # larger shapes that only make sense on a GPU
    "qwen2.5-0.5b-full-b4s1024": ("Qwen2.5-0.5B", {}, "full", 4, 1024, {}),
    "qwen2.5-0.5b-lora-b4s1024": ("Qwen2.5-0.5B", {}, "lora", 4, 1024, {}),
    "qwen2.5-0.5b-qlora-b4s1024": ("Qwen2.5-0.5B", {}, "qlora", 4, 1024, {}),
    "smollm2-full-b8s1024-ckpt": ("SmolLM2-135M-Instruct", {}, "full", 8, 1024, {"gradient_checkpointing": True}),
}


def _hf_config(model_name: str, overrides: dict):
    from transformers import AutoConfig

    from core.estimate import catalog_entry

    cfg = dict(catalog_entry(model_name)["config"])
    cfg.update(overrides)
    model_type = cfg.pop("model_type")
    cfg.pop("auto_map", None)
    return cfg, AutoConfig.for_model(model_type, **cfg), model_type


def _storage_bytes(tensors) -> int:
    seen, total = set(), 0
    for t in tensors:
        if t is None or not hasattr(t, "untyped_storage") or t.device.type == "meta":
            continue
        st = t.untyped_storage()
        key = (st.data_ptr(), t.device.type)
        if key in seen:
            continue
        seen.add(key)
        total += st.nbytes()
    return total


def _live_model_tensors(model, optimizer=None):
    out = list(model.parameters()) + list(model.buffers())
    for p in model.parameters():
        qs = getattr(p, "quant_state", None)
        if qs is not None:
            out += [qs.absmax, getattr(qs, "code", None)]
            if getattr(qs, "state2", None) is not None:
                out += [qs.state2.absmax, qs.state2.code]
    for m in model.modules():  # int8 row scales
        w = getattr(m, "weight", None)
        if w is not None and getattr(w, "SCB", None) is not None:
            out.append(w.SCB)
    if optimizer is not None:
        for st in optimizer.state.values():
            out += [v for v in st.values() if hasattr(v, "untyped_storage")]
    return out


def run_one(name: str, spec_tuple, device: str, steps: int) -> dict:
    import torch

    from core.estimate import TrainingPlan, estimate_training_memory, spec_from_config

    model_name, overrides, method, batch, seq, extras = spec_tuple
    raw_cfg, hf_cfg, model_type = _hf_config(model_name, overrides)
    spec = spec_from_config({"model_type": model_type, **raw_cfg}, name)
    attention = extras.get("attention", "sdpa")
    ckpt = bool(extras.get("gradient_checkpointing", False))
    precision = "fp32" if device == "cpu" else "bf16"
    plan = TrainingPlan(method=method, precision=precision, optimizer="adamw", batch_size=batch, seq_len=seq,
                        gradient_checkpointing=ckpt, attention=attention, lora_r=16, lora_targets=("all-linear",),
                        device=device)
    est = estimate_training_memory(spec, plan)

    torch.manual_seed(0)
    from transformers import AutoModelForCausalLM

    hf_cfg._attn_implementation = attention if attention != "flash" else "flash_attention_2"
    dtype = torch.float32 if precision == "fp32" else torch.bfloat16
    tmp = None
    if method in ("qlora", "int8"):
        from transformers import BitsAndBytesConfig

        tmp = tempfile.TemporaryDirectory()
        AutoModelForCausalLM.from_config(hf_cfg, dtype=dtype).save_pretrained(tmp.name)
        qc = (BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                 bnb_4bit_compute_dtype=dtype)
              if method == "qlora" else BitsAndBytesConfig(load_in_8bit=True))
        model = AutoModelForCausalLM.from_pretrained(tmp.name, quantization_config=qc, dtype=dtype,
                                                     device_map={"": 0 if device == "cuda" else "cpu"},
                                                     attn_implementation=hf_cfg._attn_implementation)
    else:
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(hf_cfg, dtype=dtype)
    if method != "full":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear",
                                                 task_type="CAUSAL_LM"))
    if ckpt:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    try:
        opt = torch.optim.AdamW(trainable, lr=1e-5, fused=True)
    except (RuntimeError, TypeError):
        opt = torch.optim.AdamW(trainable, lr=1e-5, foreach=False)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, spec.vocab_size, (batch, seq), generator=g).to(device)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if (device == "cuda" and method != "full")
                else torch.autocast(device, enabled=False))

    def step():
        with autocast:
            loss = model(input_ids=ids, labels=ids).loss  # outputs dropped right away, as in Trainer.compute_loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss)

    started = time.time()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
        measured = torch.cuda.max_memory_allocated()
        method_label = "torch.cuda.max_memory_allocated"
    else:
        from torch.profiler import ProfilerActivity, profile

        baseline = _storage_bytes(_live_model_tensors(model))
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            for _ in range(steps):
                step()
        events = [(e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                  if e.name() == "[memory]" and e.device_type().name == "CPU"]
        events.sort()
        running = peak = 0
        for _, nbytes in events:
            running += nbytes
            peak = max(peak, running)
        measured = baseline + peak
        method_label = "CPU tracked tensors (live model state + profiler allocation events)"
    elapsed = time.time() - started
    err = (est.peak_tensor_bytes - measured) / measured * 100
    if tmp is not None:
        tmp.cleanup()
    return {
        "config": name, "model": model_name, "overrides": overrides, "method": method, "batch": batch, "seq": seq,
        "precision": precision, "attention": attention, "gradient_checkpointing": ckpt, "device": device,
        "params": est.params, "trainable": est.trainable_params,
        "estimate_bytes": est.peak_tensor_bytes, "estimate_phase": est.peak_phase,
        "measured_bytes": int(measured), "error_pct": round(err, 2), "measure": method_label,
        "step_seconds": round(elapsed / steps, 2), "components": est.component_bytes(),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    ap.add_argument("--only", nargs="*", help="config names to run")
    ap.add_argument("--steps", type=int, default=2, help="optimizer steps per config (>=2: step 2 has optimizer state)")
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--_one", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()

    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    configs = dict(CONFIGS)
    if device == "cuda":
        configs.update(CUDA_EXTRA)
    if args._one:
        print(json.dumps(run_one(args._one, configs[args._one], device, args.steps)))
        return 0
    names = args.only or list(configs)
    unknown = [n for n in names if n not in configs]
    if unknown:
        print(f"unknown configs {unknown}; choose from {list(configs)}", file=sys.stderr)
        return 2
    results = []
    print(f"{'config':<28} {'method':<6} {'b×s':>9} {'estimate':>11} {'measured':>11} {'error':>8}  peak phase")
    for name in names:
        proc = subprocess.run([sys.executable, __file__, "--_one", name, "--device", device,
                               "--steps", str(args.steps)],
                              capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        if proc.returncode != 0 or not lines:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            print(f"{name:<28} FAILED: {' | '.join(tail)}")
            results.append({"config": name, "error": " | ".join(tail)})
            continue
        r = json.loads(lines[-1])
        results.append(r)
        print(f"{name:<28} {r['method']:<6} {r['batch']:>3}×{r['seq']:<5} {r['estimate_bytes'] / 2**20:>8.0f} MiB "
              f"{r['measured_bytes'] / 2**20:>7.0f} MiB {r['error_pct']:>+7.1f}%  {r['estimate_phase']}")
        sys.stdout.flush()
    ok = [abs(r["error_pct"]) for r in results if "error_pct" in r]
    if ok:
        print(f"mean |error| {sum(ok) / len(ok):.1f}%, max |error| {max(ok):.1f}% over {len(ok)} configs on {device}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
