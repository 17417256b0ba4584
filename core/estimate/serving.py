"""How much a GPU holds when serving a model: token limits for TGI / vLLM sized from this repo's inference-memory
estimate (:func:`core.estimate.memory.estimate_inference_memory`), from the model's config.json only (never its
weights). core.deploy's container plans and cloud settings use it; it imports nothing above the estimate floor.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

GPU_MEMORY_UTILIZATION = 0.90  # vLLM's --gpu-memory-utilization, and the share of each card the sizing may plan for
MIN_SERVE_TOKENS = 2048  # below this (or the model's context, if shorter) the model "does not fit" for chat
DEFAULT_CONTEXT = 4096  # when a config has no max_position_embeddings
GENERATION_RESERVE = 1024  # tokens kept for the answer: max_input = max_total - min(1024, max_total // 4)


class LaunchError(ValueError):
    """Something a person can fix before serving: a bad setting, a model that does not fit, no Docker engine.
    Defined here, where sizing raises it; core.deploy's container plans and the Docker engine calls raise the same
    class, so one ``except LaunchError`` covers them all."""


def _gpu_key(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower().replace("nvidia", ""))


def find_gpu(name: str):
    """The catalog GPU for a key ("a10g"), a catalog name ("NVIDIA A10G 24 GB") or a loose one ("A10G 24GB", "L4")."""
    from core.estimate.gpus import GPUS

    wanted = _gpu_key(name)
    for g in GPUS:
        if wanted in (_gpu_key(g.key), _gpu_key(g.name)):
            return g
    raise LaunchError(f"unknown GPU '{name}': choose one of {', '.join(g.name for g in GPUS)}")


def read_model_config(model_dir: str) -> dict | None:
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise LaunchError(f"{path} is not readable JSON ({exc}); re-export the model folder") from None


def model_spec(model_dir: str):
    from core.estimate.spec import EstimateError, spec_from_config

    cfg = read_model_config(model_dir)
    if cfg is None:
        raise LaunchError(f"{model_dir} has no config.json, so the token limits cannot be sized: export the merged "
                          "model there, or set max_input_tokens and max_total_tokens yourself")
    try:
        return spec_from_config(cfg, Path(model_dir).name or "model"), cfg
    except EstimateError as exc:
        raise LaunchError(f"cannot size {model_dir}: {exc}") from None


def serve_dtype(cfg: dict | None, gpu) -> str:
    """The 16-bit dtype both engines are told to use: the checkpoint's when it is 16-bit, bf16 for fp32 checkpoints;
    fp16 on cards without bf16 (T4, V100)."""
    stored = str((cfg or {}).get("dtype") or (cfg or {}).get("torch_dtype") or "").lower()
    if gpu is not None and not gpu.bf16:
        return "float16"
    return "float16" if stored in ("float16", "fp16", "half") else "bfloat16"


def context_length(spec) -> int:
    return int(spec.max_position_embeddings or DEFAULT_CONTEXT)


def limits_for(total: int) -> tuple[int, int]:
    """(max_input_tokens, max_total_tokens): leave room for the answer (1,024 tokens or a quarter of the window)."""
    return total - max(1, min(GENERATION_RESERVE, total // 4)), total


def _gib(n: float) -> str:
    return f"{n / 1024**3:.1f} GiB"


class ServingSizer:
    """Per-GPU memory for one request of T tokens: (weights + KV cache + prefill activations) / GPUs + CUDA context,
    from ``core.estimate.memory.estimate_inference_memory`` (weights by dtype, KV cache 2·L·kv_heads·head_dim·bytes
    per token). Tensor parallelism splits weights and KV cache over the GPUs."""

    def __init__(self, spec, dtype_label: str, quantize_4bit: bool):
        from core.estimate.memory import estimate_inference_memory

        self.spec = spec
        self.est_dtype = "int4" if quantize_4bit else ("bf16" if dtype_label == "bfloat16" else "fp16")
        self._estimate = estimate_inference_memory
        one = estimate_inference_memory(spec, self.est_dtype, 1, 1).component_bytes()
        self.weights = one["weights"]
        self.kv_per_token = one["kv_cache"]

    def per_gpu(self, tokens: int, n: int) -> int:
        est = self._estimate(self.spec, self.est_dtype, 1, max(1, int(tokens)))
        return int(math.ceil(est.peak_tensor_bytes / n)) + est.overhead_bytes

    def max_tokens(self, cap_bytes: float, n: int, context: int) -> int:
        """The longest single request that fits under cap_bytes per GPU (0 when not even one token does)."""
        if self.per_gpu(context, n) <= cap_bytes:
            return context
        lo, hi = 0, context
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.per_gpu(mid, n) <= cap_bytes:
                lo = mid
            else:
                hi = mid - 1
        return lo

    def fits(self, gpu, n: int, context: int) -> bool:
        if n > 1 and self.spec.num_heads % n:
            return False
        need = min(context, MIN_SERVE_TOKENS)
        return self.per_gpu(need, n) <= GPU_MEMORY_UTILIZATION * gpu.usable_bytes


def _what_to_change(spec, cfg_dtype: str, gpu, n: int, quantize_4bit: bool, context: int) -> list[str]:
    """Single changes (a bigger GPU, more GPUs, 4-bit), then 4-bit combined with one of the others, that make it fit."""
    from core.estimate.gpus import GPUS

    singles = sorted((g for g in GPUS if g.count == 1), key=lambda g: g.usable_bytes)
    same = ServingSizer(spec, cfg_dtype, quantize_4bit)
    out: list[str] = []
    bigger = next((g for g in singles if g.usable_bytes > gpu.usable_bytes and same.fits(g, n, context)), None)
    if bigger is not None:
        out.append(f"a bigger GPU ({bigger.name}{f' × {n}' if n > 1 else ''})")
    more = next((m for m in (2, 4, 8) if m > n and same.fits(gpu, m, context)), None)
    if more is not None:
        out.append(f"more GPUs (num_gpus={more} × {gpu.name})")
    if not quantize_4bit:
        four = ServingSizer(spec, cfg_dtype, True)
        if four.fits(gpu, n, context):
            out.append(f"4-bit weights (quantize_4bit=True, {_gib(four.weights)} of weights) on this GPU")
        else:
            g4 = next((g for g in singles if g.usable_bytes > gpu.usable_bytes and four.fits(g, n, context)), None)
            m4 = next((m for m in (2, 4, 8) if m > n and four.fits(gpu, m, context)), None)
            if g4 is not None:
                out.append(f"4-bit weights (quantize_4bit=True) on one {g4.name}")
            if m4 is not None:
                out.append(f"4-bit weights (quantize_4bit=True) with num_gpus={m4}")
    return out


def size_for_gpu(model_dir: str, gpu: str | None, num_gpus: int = 1, quantize_4bit: bool = False) -> dict:
    """Token limits for serving ``model_dir`` on ``num_gpus`` × ``gpu``, from the model's config (never its weights).

    ``max_total_tokens`` is the longest request that fits with one request in flight — what both engines require at
    start (TGI: ``max_total_tokens <= max_batch_total_tokens``; vLLM: KV cache for ``max_model_len``) — capped by the
    model's ``max_position_embeddings``; memory left over serves concurrent requests. The plan uses 90 % of each card
    (vLLM's ``--gpu-memory-utilization``). Returns ``{"max_input_tokens", "max_total_tokens", "weights_bytes",
    "kv_bytes_per_token", "gpu_bytes" (usable bytes of one card, None without a GPU), "fits", "why"}`` plus
    ``"dtype"``, ``"context_length"``, ``"need_bytes"`` (per GPU at max_total_tokens). When it does not fit,
    ``fits`` is False, ``why`` says what to change, and the limits are the model's own (for the command text)."""
    if not isinstance(num_gpus, int) or num_gpus < 1:
        raise LaunchError(f"num_gpus must be a whole number of at least 1 (got {num_gpus!r})")
    spec, cfg = model_spec(model_dir)
    card = find_gpu(gpu) if gpu else None
    if card is not None and card.count > 1 and num_gpus > card.count:
        raise LaunchError(f"{card.name} has {card.count} GPUs; num_gpus={num_gpus} is more than that")
    dtype = serve_dtype(cfg, card)
    precision = "4-bit NF4" if quantize_4bit else dtype
    sizer = ServingSizer(spec, dtype, quantize_4bit)
    context = context_length(spec)
    ctx_note = ("" if spec.max_position_embeddings
                else f" (no max_position_embeddings in config.json: assumed {context})")
    out = {"weights_bytes": int(sizer.weights), "kv_bytes_per_token": int(sizer.kv_per_token),
           "gpu_bytes": card.usable_bytes if card else None, "dtype": "nf4" if quantize_4bit else dtype,
           "context_length": context, "num_gpus": num_gpus, "gpu": card.name if card else None}
    head = (f"{spec.name} ({precision}) needs {_gib(sizer.weights)} of weights and "
            f"{sizer.kv_per_token / 1024:.1f} KiB of KV cache per token")
    if num_gpus > 1 and spec.num_heads % num_gpus:
        splits = [d for d in (1, 2, 3, 4, 6, 8) if spec.num_heads % d == 0]
        inp, tot = limits_for(context)
        out.update(max_input_tokens=inp, max_total_tokens=tot, fits=False, need_bytes=None,
                   why=f"{spec.name} has {spec.num_heads} attention heads, which do not split over {num_gpus} GPUs "
                       f"(tensor parallelism): use num_gpus in {', '.join(map(str, splits))}")
        return out
    if card is None:
        inp, tot = limits_for(context)
        out.update(max_input_tokens=inp, max_total_tokens=tot, fits=True, need_bytes=sizer.per_gpu(tot, num_gpus),
                   why=f"{head}; no GPU chosen, so max_total_tokens is the model's context length ({context:,}"
                       f"{ctx_note}): pick a GPU to check that it fits")
        return out
    cap = GPU_MEMORY_UTILIZATION * card.usable_bytes
    where = f"{num_gpus} × {card.name}" if num_gpus > 1 else f"one {card.name}"
    best = sizer.max_tokens(cap, num_gpus, context)
    need_min = min(context, MIN_SERVE_TOKENS)
    if best >= need_min:
        total = context if best >= context else max(need_min, best // 256 * 256)
        inp, tot = limits_for(total)
        need = sizer.per_gpu(tot, num_gpus)
        if total == context:
            why = (f"{head}: {_gib(need)} per GPU for one {tot:,}-token request, of {_gib(cap)} usable (90 %) on "
                   f"{where}; max_total_tokens is the model's context length ({context:,}{ctx_note}), the rest of "
                   "the memory serves concurrent requests")
        else:
            why = (f"{head}: the model allows {context:,} tokens but {where} holds one request of {tot:,} tokens "
                   f"({_gib(need)} of {_gib(cap)} usable per GPU), so max_total_tokens is {tot:,}; a bigger GPU or "
                   "more GPUs allow longer requests")
        out.update(max_input_tokens=inp, max_total_tokens=tot, fits=True, need_bytes=need, why=why)
        return out
    inp, tot = limits_for(context)
    weights_per_gpu = sizer.weights / num_gpus
    if weights_per_gpu >= cap:
        problem = f"{_gib(weights_per_gpu)} of weights per GPU alone, more than the {_gib(cap)} usable (90 %)"
    else:
        problem = (f"{_gib(sizer.per_gpu(need_min, num_gpus))} per GPU for one {need_min:,}-token request, more than "
                   f"the {_gib(cap)} usable (90 %)")
    fixes = _what_to_change(spec, dtype, card, num_gpus, quantize_4bit, context)
    advice = ("To serve it, use " + "; or ".join(fixes) + ".") if fixes else (
        "It does not fit even on 8 of the largest GPUs in the catalog with 4-bit weights: choose a smaller model.")
    out.update(max_input_tokens=inp, max_total_tokens=tot, fits=False, need_bytes=sizer.per_gpu(need_min, num_gpus),
               why=f"{spec.name} ({precision}) does not fit on {where}: it needs {problem}. {advice}")
    return out
