"""Memory for generation (:func:`estimate_inference_memory`: weights by dtype, KV cache, prefill transients) and what
``accelerate estimate-memory`` prints for the same model (:func:`accelerate_style`), to compare with.
"""
from __future__ import annotations

import math

from core.estimate.memory.components import CUDA_CONTEXT_BYTES, NF4_BLOCK, NF4_DQ_BLOCK, Component, MemoryEstimate
from core.estimate.memory.plan import DTYPE_BYTES, INFERENCE_DTYPES
from core.estimate.spec import GIB, EstimateError, ModelSpec, count_parameters, param_inventory


def estimate_inference_memory(spec: ModelSpec, dtype: str = "bf16", batch_size: int = 1, context_tokens: int = 2048,
                              attention: str = "sdpa", device: str = "cuda") -> MemoryEstimate:
    """Weights by dtype + KV cache + prefill transients (+ CUDA context) for generation."""
    if dtype not in INFERENCE_DTYPES:
        raise EstimateError(f"inference dtype must be one of {', '.join(INFERENCE_DTYPES)} (got '{dtype}')")
    for label, value in (("batch size", batch_size), ("context length", context_tokens)):
        if not isinstance(value, int) or value < 1:
            raise EstimateError(f"{label} must be a whole number of at least 1 (got {value!r})")
    counts = count_parameters(spec)
    inv = param_inventory(spec)
    other = counts.total - counts.linear
    a = 4 if dtype == "fp32" else 2  # compute / KV dtype
    if dtype in ("fp32", "fp16", "bf16"):
        w = DTYPE_BYTES[dtype] * counts.total
        wf = f"{DTYPE_BYTES[dtype]} B × {counts.total:,} params"
    elif dtype == "int8":
        rows = sum(p.shape[0] * p.count * (math.prod(p.shape[:-2]) if len(p.shape) > 2 else 1)
                   for p in inv if p.kind in ("linear", "expert"))
        w = counts.linear + 4 * rows + 2 * other
        wf = f"{counts.linear:,} linear × 1 B + 4 B/row scales + {other:,} other × 2 B"
    else:
        per = 0.5 + 1 / NF4_BLOCK + 4 / (NF4_BLOCK * NF4_DQ_BLOCK)
        w = int(counts.linear * per) + 2 * other
        wf = f"{counts.linear:,} linear × {per:.4f} B (NF4 + double-quantised absmax) + {other:,} other × 2 B"
    kv = 2 * spec.num_layers * spec.num_kv_heads * spec.head_dim * a * batch_size * context_tokens
    kvf = (f"2·L·kv_heads·head_dim·bytes·batch·tokens = 2·{spec.num_layers}·{spec.num_kv_heads}·{spec.head_dim}·{a}·"
           f"{batch_size}·{context_tokens}")
    T = batch_size * context_tokens
    mlp_width = spec.intermediate_size * (spec.experts_per_token if spec.is_moe else 1)
    act = a * T * (3 * mlp_width + 2 * spec.hidden_size) + 4 * batch_size * spec.vocab_size
    actf = f"prefill: {a}·tokens·(3·i + 2·h) (one layer's MLP) + fp32 logits of the last position 4·b·V"
    if attention == "eager":
        act += batch_size * spec.num_heads * context_tokens**2 * (4 + a)
        actf += " + eager scores b·heads·s²·(4 + a)"
    comps = [
        Component("weights", f"Weights ({dtype})", int(w), wf, "all"),
        Component("kv_cache", "KV cache", int(kv), kvf, "generation"),
        Component("activations", "Transient activations", int(act), actf, "prefill"),
    ]
    tensor = int(w + kv + act)
    overhead = 0
    if device != "cpu":
        comps.append(Component("cuda_context", "CUDA context", CUDA_CONTEXT_BYTES, "fixed ~512 MiB", "all"))
        overhead = CUDA_CONTEXT_BYTES
    return MemoryEstimate(components=comps, phases={"generation": tensor}, peak_phase="generation",
                          peak_tensor_bytes=tensor, overhead_bytes=overhead, peak_bytes=tensor + overhead,
                          params=counts.total, trainable_params=0)


def accelerate_style(spec: ModelSpec) -> dict:
    """What ``accelerate estimate-memory`` prints: fp32 size of the model accelerate builds (``AutoModel`` — no
    lm_head —
    unless the config's auto_map names an ``AutoModelFor*`` class) and 'Training using Adam' = 4 × that (fp32 row)."""
    counts = count_parameters(spec)
    n = counts.total if spec.has_auto_model_for_causal_lm else counts.total - counts.lm_head
    total = 4 * n
    rows = {}
    for dtype, div in (("float32", 1), ("float16", 2), ("int8", 4), ("int4", 8)):
        train = 4 * total if dtype == "float32" else (2 * total if dtype == "float16" else None)
        rows[dtype] = {"total_bytes": total / div, "training_adam_bytes": train}
    return {
        "params_counted": n,
        "includes_lm_head": spec.has_auto_model_for_causal_lm or counts.lm_head == 0,
        "fp32_bytes": total,
        "fp32_gb": round(total / GIB, 2),
        "adam_bytes": 4 * total,
        "adam_gb": round(4 * total / GIB, 2),
        "rows": rows,
        "ignores": "activations, batch size, sequence length, LoRA/QLoRA, the logits peak, KV cache, CUDA context",
    }
