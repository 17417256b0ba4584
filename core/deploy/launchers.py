"""Serve a merged model folder (or a base model + LoRA adapters) on a GPU host with TGI or vLLM.

Both engines answer the OpenAI Messages API (``/v1/chat/completions``). This module turns a :class:`ServeSpec` into
the exact ``docker run`` argument list for each (a list, never a shell string), sizes the token limits from this
repo's inference-memory estimate (``core.estimate``), writes the settings for three managed clouds (text only, no
cloud calls), and — where a Docker engine answers — starts, inspects and stops the container through the ``docker``
Python SDK, which is imported lazily so that everything else works without it.

What was checked, and where (so the flags below are not guesses):

* TGI 3.3.7 (tag ``v3.3.7`` of github.com/huggingface/text-generation-inference): ``launcher/src/main.rs`` and
  ``docs/source/reference/launcher.md`` define ``--model-id``, ``--max-input-tokens``, ``--max-total-tokens``,
  ``--max-batch-prefill-tokens``, ``--num-shard``, ``--dtype {float16,bfloat16}`` ("cannot be used with
  --quantize"), ``--quantize bitsandbytes-nf4`` and ``--lora-adapters`` (env ``LORA_ADAPTERS``, comma-separated,
  ``name=/local/path`` for a local adapter: ``server/text_generation_server/utils/adapter.py``); the launcher refuses
  ``max_input_tokens >= max_total_tokens``, and the v3 router refuses ``max_batch_prefill_tokens < max_input_tokens``
  unless chunking is supported (``backends/v3/src/main.rs``). The image sets ``PORT=80`` (``Dockerfile``); the
  README runs it with ``--gpus all --shm-size 1g -p 8080:80``. For chat requests TGI uses the ``model`` field as
  the adapter id unless it is ``"tgi"``, and an unknown id falls back to the base model (``router/src/server.rs``,
  ``flash_causal_lm.py``: ``ADAPTER_TO_INDEX.get(adapter_id, 0)``) — so TGI answers any model name.
* vLLM (github.com/vllm-project/vllm): the ``vllm/vllm-openai`` image's entrypoint is ``vllm serve`` (``docker/
  Dockerfile``) and the model is its positional argument — ``--model`` still parses but logs "the --model option will
  be removed in a future version" (``vllm/utils/argparse_utils.py``), so it is not used here. ``--lora-modules``
  takes ``name=path`` items after one flag (``vllm/entrypoints/openai/cli_args.py``); ``--max-lora-rank`` must be one
  of 1, 8, 16, 32, 64, 128, 256, 320, 512 and ``--max-loras`` defaults to 1 (``vllm/config/lora.py``); the API port
  is 8000; ``docs/deployment/docker.md`` runs the image with ``--ipc=host`` (or ``--shm-size``). Since v0.28.0
  bitsandbytes lives in the out-of-tree ``vllm-bnb-plugin`` (vllm PR #43529), which the stock image does not ship.
* Clouds: huggingface_hub 2.4.0 ``HfApi.create_inference_endpoint`` (custom image ``{"url", "port", "healthRoute"}``,
  ``env`` with ``MODEL_ID=/repository``; Inference Endpoints mount the repository at ``/repository``); sagemaker
  2.257.7 ``image_uri_config/huggingface-llm.json`` (newest TGI DLC version ``3.3.6``) and TGI's
  ``sagemaker-entrypoint.sh`` (``HF_MODEL_ID`` → ``MODEL_ID``, ``SM_NUM_GPUS`` → ``NUM_SHARD``, ``HF_MODEL_QUANTIZE``
  → ``QUANTIZE``, other launcher env such as ``MAX_INPUT_TOKENS`` pass through; SageMaker puts model data under
  ``/opt/ml/model``); github.com/huggingface/Google-Cloud-Containers (TGI DLC entrypoint downloads
  ``AIP_STORAGE_URI`` and sets ``MODEL_ID``; ``aiplatform.Model.upload(artifact_uri=..., serving_container_image_uri=
  ..., serving_container_environment_variables=..., serving_container_ports=[8080])``; ``MESSAGES_API_ENABLED=true``
  for the Messages API).

A token value never appears in an argument list or in the settings text: ``-e HF_TOKEN`` passes it by name.
"""
from __future__ import annotations

import json
import math
import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

TGI_IMAGE = "ghcr.io/huggingface/text-generation-inference:3.3.7"
# vLLM 0.31.0 (released 2026-10-05): the newest release whose image tag is widely confirmed in public deployments;
# PyPI lists later versions, but their image tags could not be confirmed here. The default tag is built for CUDA 13
# (NVIDIA driver >= 580); hosts with older drivers need the ``-cu129`` variant (some report it broken at import).
VLLM_IMAGE = "vllm/vllm-openai:v0.31.0"
# The newest Hugging Face LLM (TGI) DLC version the SageMaker SDK knows (sagemaker 2.257.7: "3.3" -> "3.3.6").
SAGEMAKER_TGI_VERSION = "3.3.6"
# The newest Hugging Face TGI DLC for Vertex AI found published (TGI 3.0.1).
VERTEX_TGI_IMAGE = ("us-docker.pkg.dev/deeplearning-platform-release/gcr.io/"
                    "huggingface-text-generation-inference-cu124.3-0.ubuntu2204.py311")
DOCKER_SDK_PIN = "docker==7.2.0"
DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"

TARGETS = ("tgi", "vllm")
CLOUD_TARGETS = ("hf_endpoints", "sagemaker", "vertex")
CONTAINER_MODEL_DIR = "/data/model"
CONTAINER_LORA_DIR = "/data/lora"
TGI_CONTAINER_PORT = 80
VLLM_CONTAINER_PORT = 8000
GPU_MEMORY_UTILIZATION = 0.90  # vLLM's --gpu-memory-utilization, and the share of each card the sizing may plan for
MIN_SERVE_TOKENS = 2048  # below this (or the model's context, if shorter) the model "does not fit" for chat
DEFAULT_CONTEXT = 4096  # when a config has no max_position_embeddings
GENERATION_RESERVE = 1024  # tokens kept for the answer: max_input = max_total - min(1024, max_total // 4)
PREFILL_HEADROOM = 50  # TGI's documented default: max_batch_prefill_tokens = max_input_tokens + 50
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

# Cloud instance suggestions per catalog GPU (core.estimate.gpus keys). Seen in the docs above: ml.g5.xlarge,
# nvidia-a10g / nvidia-l4 (HF endpoints), g2-standard-4 + NVIDIA_L4 (Vertex). The rest follow each cloud's naming;
# check availability and quota before deploying.
_HF_INSTANCE = {"t4": "nvidia-t4", "l4": "nvidia-l4", "a10g": "nvidia-a10g", "a100-80": "nvidia-a100",
                "h100": "nvidia-h100"}
_SAGEMAKER_INSTANCE = {
    "t4": {1: "ml.g4dn.xlarge", 4: "ml.g4dn.12xlarge"},
    "l4": {1: "ml.g6.xlarge", 4: "ml.g6.12xlarge", 8: "ml.g6.48xlarge"},
    "a10g": {1: "ml.g5.xlarge", 4: "ml.g5.12xlarge", 8: "ml.g5.48xlarge"},
    "a100-40": {8: "ml.p4d.24xlarge"}, "a100-80": {8: "ml.p4de.24xlarge"}, "h100": {8: "ml.p5.48xlarge"},
}
_VERTEX_MACHINE = {
    "t4": ("NVIDIA_TESLA_T4", {1: "n1-standard-8", 2: "n1-standard-16", 4: "n1-standard-32"}),
    "l4": ("NVIDIA_L4", {1: "g2-standard-4", 2: "g2-standard-24", 4: "g2-standard-48", 8: "g2-standard-96"}),
    "a100-40": ("NVIDIA_TESLA_A100", {1: "a2-highgpu-1g", 2: "a2-highgpu-2g", 4: "a2-highgpu-4g",
                                      8: "a2-highgpu-8g"}),
    "a100-80": ("NVIDIA_A100_80GB", {1: "a2-ultragpu-1g", 2: "a2-ultragpu-2g", 4: "a2-ultragpu-4g",
                                     8: "a2-ultragpu-8g"}),
    "h100": ("NVIDIA_H100_80GB", {8: "a3-highgpu-8g"}),
}


class LaunchError(ValueError):
    """Something a person can fix before serving: a bad setting, a model that does not fit, no Docker engine."""


@dataclass(frozen=True)
class ServeSpec:
    """What to serve and where: one merged model folder (or a base model plus LoRA adapter folders) on a GPU host."""

    model_dir: str  # host folder holding the merged model (or the base model when serving adapters)
    served_name: str  # the model name clients send (vLLM --served-model-name; TGI answers any)
    port: int = 8080  # host port
    gpu: str | None = None  # a GPU of the Estimate tab's catalog ("A10G 24GB", "L4", "A100 80GB", a key like "a10g")
    num_gpus: int = 1
    max_input_tokens: int | None = None  # None: sized from the estimate (see size_for_gpu)
    max_total_tokens: int | None = None
    quantize_4bit: bool = False  # TGI --quantize bitsandbytes-nf4; vLLM --quantization bitsandbytes (see below)
    lora_adapters: tuple[tuple[str, str], ...] = ()  # (name, host adapter folder) for multi-LoRA serving
    hf_token_env: bool = False  # pass HF_TOKEN from the host env by NAME only (never its value)


# ---- sizing ------------------------------------------------------------------------------------------------------

def _gpu_key(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower().replace("nvidia", ""))


def _find_gpu(name: str):
    """The catalog GPU for a key ("a10g"), a catalog name ("NVIDIA A10G 24 GB") or a loose one ("A10G 24GB", "L4")."""
    from core.estimate.gpus import GPUS

    wanted = _gpu_key(name)
    for g in GPUS:
        if wanted in (_gpu_key(g.key), _gpu_key(g.name)):
            return g
    raise LaunchError(f"unknown GPU '{name}': choose one of {', '.join(g.name for g in GPUS)}")


def _read_config(model_dir: str) -> dict | None:
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise LaunchError(f"{path} is not readable JSON ({exc}); re-export the model folder") from None


def _model_spec(model_dir: str):
    from core.estimate.spec import EstimateError, spec_from_config

    cfg = _read_config(model_dir)
    if cfg is None:
        raise LaunchError(f"{model_dir} has no config.json, so the token limits cannot be sized: export the merged "
                          "model there, or set max_input_tokens and max_total_tokens yourself")
    try:
        return spec_from_config(cfg, Path(model_dir).name or "model"), cfg
    except EstimateError as exc:
        raise LaunchError(f"cannot size {model_dir}: {exc}") from None


def _serve_dtype(cfg: dict | None, gpu) -> str:
    """The 16-bit dtype both engines are told to use: the checkpoint's when it is 16-bit, bf16 for fp32 checkpoints;
    fp16 on cards without bf16 (T4, V100)."""
    stored = str((cfg or {}).get("dtype") or (cfg or {}).get("torch_dtype") or "").lower()
    if gpu is not None and not gpu.bf16:
        return "float16"
    return "float16" if stored in ("float16", "fp16", "half") else "bfloat16"


def _context_length(spec) -> int:
    return int(spec.max_position_embeddings or DEFAULT_CONTEXT)


def _limits_for(total: int) -> tuple[int, int]:
    """(max_input_tokens, max_total_tokens): leave room for the answer (1,024 tokens or a quarter of the window)."""
    return total - max(1, min(GENERATION_RESERVE, total // 4)), total


def _gib(n: float) -> str:
    return f"{n / 1024**3:.1f} GiB"


class _Sizer:
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
    same = _Sizer(spec, cfg_dtype, quantize_4bit)
    out: list[str] = []
    bigger = next((g for g in singles if g.usable_bytes > gpu.usable_bytes and same.fits(g, n, context)), None)
    if bigger is not None:
        out.append(f"a bigger GPU ({bigger.name}{f' × {n}' if n > 1 else ''})")
    more = next((m for m in (2, 4, 8) if m > n and same.fits(gpu, m, context)), None)
    if more is not None:
        out.append(f"more GPUs (num_gpus={more} × {gpu.name})")
    if not quantize_4bit:
        four = _Sizer(spec, cfg_dtype, True)
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
    spec, cfg = _model_spec(model_dir)
    card = _find_gpu(gpu) if gpu else None
    if card is not None and card.count > 1 and num_gpus > card.count:
        raise LaunchError(f"{card.name} has {card.count} GPUs; num_gpus={num_gpus} is more than that")
    dtype = _serve_dtype(cfg, card)
    precision = "4-bit NF4" if quantize_4bit else dtype
    sizer = _Sizer(spec, dtype, quantize_4bit)
    context = _context_length(spec)
    ctx_note = ("" if spec.max_position_embeddings
                else f" (no max_position_embeddings in config.json: assumed {context})")
    out = {"weights_bytes": int(sizer.weights), "kv_bytes_per_token": int(sizer.kv_per_token),
           "gpu_bytes": card.usable_bytes if card else None, "dtype": "nf4" if quantize_4bit else dtype,
           "context_length": context, "num_gpus": num_gpus, "gpu": card.name if card else None}
    head = (f"{spec.name} ({precision}) needs {_gib(sizer.weights)} of weights and "
            f"{sizer.kv_per_token / 1024:.1f} KiB of KV cache per token")
    if num_gpus > 1 and spec.num_heads % num_gpus:
        splits = [d for d in (1, 2, 3, 4, 6, 8) if spec.num_heads % d == 0]
        inp, tot = _limits_for(context)
        out.update(max_input_tokens=inp, max_total_tokens=tot, fits=False, need_bytes=None,
                   why=f"{spec.name} has {spec.num_heads} attention heads, which do not split over {num_gpus} GPUs "
                       f"(tensor parallelism): use num_gpus in {', '.join(map(str, splits))}")
        return out
    if card is None:
        inp, tot = _limits_for(context)
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
        inp, tot = _limits_for(total)
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
    inp, tot = _limits_for(context)
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


# ---- argument lists ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Plan:
    """One container, engine-neutral: what both the ``docker run`` list and the SDK call are built from."""

    engine: str
    image: str
    name: str
    container_port: int
    host_port: int
    mounts: tuple[tuple[str, str], ...]  # (host folder, container folder), read-only
    env_names: tuple[str, ...]  # passed by name from the host environment
    server_args: tuple[str, ...]
    ipc_host: bool = False  # vLLM: --ipc host; TGI: --shm-size 1g


def _check_spec(spec: ServeSpec) -> None:
    if not isinstance(spec.model_dir, str) or not spec.model_dir.strip():
        raise LaunchError("model_dir is empty: choose the merged model folder (or the base model folder)")
    if not spec.served_name or any(c.isspace() for c in spec.served_name) or len(spec.served_name) > 200:
        raise LaunchError(f"served name {spec.served_name!r} must be a non-empty name without spaces (clients send it "
                          "as the OpenAI 'model' field)")
    if not isinstance(spec.port, int) or not 1 <= spec.port <= 65535:
        raise LaunchError(f"port must be a whole number between 1 and 65535 (got {spec.port!r})")
    if not isinstance(spec.num_gpus, int) or spec.num_gpus < 1:
        raise LaunchError(f"num_gpus must be a whole number of at least 1 (got {spec.num_gpus!r})")
    seen: set[str] = set()
    for item in spec.lora_adapters:
        if not (isinstance(item, tuple | list) and len(item) == 2):
            raise LaunchError(f"each LoRA adapter is a (name, folder) pair (got {item!r})")
        name, folder = item
        if not isinstance(name, str) or not _NAME.match(name):
            raise LaunchError(f"LoRA adapter name {name!r} must start with a letter or digit and use only letters, "
                              "digits, '.', '_' and '-' (it becomes a path and the 'model' clients send)")
        if name in seen:
            raise LaunchError(f"two LoRA adapters are named '{name}': give each a distinct name")
        seen.add(name)
        if not isinstance(folder, str) or not folder.strip():
            raise LaunchError(f"LoRA adapter '{name}' has no folder")
    for folder in [spec.model_dir] + [f for _, f in spec.lora_adapters]:
        if ":" in folder:
            raise LaunchError(f"folder {folder!r} contains ':', which docker -v cannot mount: move or rename it")


def _host_path(folder: str) -> str:
    """Absolute, as ``docker -v`` needs (a relative name would be taken for a named volume)."""
    return os.path.abspath(os.path.expanduser(folder))


def _limits(spec: ServeSpec, cfg: dict | None) -> tuple[int, int]:
    """(max_input_tokens, max_total_tokens): the spec's, else sized from the estimate; checked against each other and
    against the model's context length."""
    inp, tot = spec.max_input_tokens, spec.max_total_tokens
    for label, value in (("max_input_tokens", inp), ("max_total_tokens", tot)):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise LaunchError(f"{label} must be a whole number of at least 1 (got {value!r})")
    if inp is None or tot is None:
        sized = size_for_gpu(spec.model_dir, spec.gpu, spec.num_gpus, spec.quantize_4bit)
        if tot is None:
            tot = sized["max_total_tokens"]
        if inp is None:
            inp = _limits_for(tot)[0]
    if inp >= tot:
        raise LaunchError(f"max_input_tokens ({inp}) must be smaller than max_total_tokens ({tot}): the difference is "
                          "what the model may generate")
    context = (cfg or {}).get("max_position_embeddings")
    if isinstance(context, int) and context > 0 and tot > context:
        raise LaunchError(f"max_total_tokens ({tot}) is longer than the model's context ({context} tokens, "
                          "max_position_embeddings): lower it")
    return inp, tot


def _check_heads(cfg: dict | None, n: int) -> None:
    heads = (cfg or {}).get("num_attention_heads")
    if n > 1 and isinstance(heads, int) and heads % n:
        raise LaunchError(f"the model has {heads} attention heads, which do not split over {n} GPUs (tensor "
                          f"parallelism): choose num_gpus among {[d for d in range(1, 9) if heads % d == 0]}")


def _adapter_rank(folder: str) -> int | None:
    """The LoRA rank from ``adapter_config.json`` (the largest of ``r`` and any ``rank_pattern``), if readable here."""
    try:
        cfg = json.loads((Path(folder) / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    ranks = [cfg.get("r")] + list((cfg.get("rank_pattern") or {}).values())
    ranks = [int(r) for r in ranks if isinstance(r, int | float) and r > 0]
    return max(ranks) if ranks else None


def _container_name(engine: str, spec: ServeSpec) -> str:
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", spec.served_name).strip("-.")[:60] or "model"
    return f"fts-{engine}-{slug}-{spec.port}"


def _mounts(spec: ServeSpec) -> tuple[tuple[str, str], ...]:
    return ((_host_path(spec.model_dir), CONTAINER_MODEL_DIR),) + tuple(
        (_host_path(folder), f"{CONTAINER_LORA_DIR}/{name}") for name, folder in spec.lora_adapters)


def _tgi_plan(spec: ServeSpec) -> _Plan:
    _check_spec(spec)
    cfg = _read_config(spec.model_dir)
    _check_heads(cfg, spec.num_gpus)
    inp, tot = _limits(spec, cfg)
    card = _find_gpu(spec.gpu) if spec.gpu else None
    args = ["--model-id", CONTAINER_MODEL_DIR,
            "--max-input-tokens", str(inp), "--max-total-tokens", str(tot),
            # the v3 router refuses a prefill budget below max_input_tokens (when it cannot chunk); TGI's docs give
            # max_input_tokens + 50 as the intended default
            "--max-batch-prefill-tokens", str(min(inp + PREFILL_HEADROOM, tot)),
            # explicit: without it TGI shards over every GPU it sees (--gpus all)
            "--num-shard", str(spec.num_gpus)]
    if spec.quantize_4bit:
        args += ["--quantize", "bitsandbytes-nf4"]  # --dtype cannot be combined with --quantize
    else:
        args += ["--dtype", _serve_dtype(cfg, card)]
    if spec.lora_adapters:
        args += ["--lora-adapters", ",".join(f"{n}={CONTAINER_LORA_DIR}/{n}" for n, _ in spec.lora_adapters)]
    return _Plan("tgi", TGI_IMAGE, _container_name("tgi", spec), TGI_CONTAINER_PORT, spec.port, _mounts(spec),
                 ("HF_TOKEN",) if spec.hf_token_env else (), tuple(args))


def _vllm_plan(spec: ServeSpec, image: str = VLLM_IMAGE) -> _Plan:
    _check_spec(spec)
    cfg = _read_config(spec.model_dir)
    _check_heads(cfg, spec.num_gpus)
    if spec.quantize_4bit and image == VLLM_IMAGE:
        raise LaunchError(
            f"4-bit on the fly needs bitsandbytes, which vLLM moved into the separate vllm-bnb-plugin in v0.28; the "
            f"stock {VLLM_IMAGE} image does not ship it. Serve with TGI (quantize_4bit works there), or build an "
            f"image FROM {VLLM_IMAGE} with `pip install --no-deps vllm-bnb-plugin` and pass it as image=...")
    _inp, tot = _limits(spec, cfg)
    card = _find_gpu(spec.gpu) if spec.gpu else None
    args = [CONTAINER_MODEL_DIR,  # positional: `vllm serve <model>` (--model is deprecated there)
            "--served-model-name", spec.served_name,
            "--max-model-len", str(tot),
            "--gpu-memory-utilization", f"{GPU_MEMORY_UTILIZATION:.2f}",
            "--dtype", _serve_dtype(cfg, card)]
    if spec.num_gpus > 1:
        args += ["--tensor-parallel-size", str(spec.num_gpus)]
    if spec.quantize_4bit:
        args += ["--quantization", "bitsandbytes"]
    if spec.lora_adapters:
        ranks = [r for r in (_adapter_rank(f) for _, f in spec.lora_adapters) if r]
        args += ["--enable-lora", "--max-loras", str(len(spec.lora_adapters))]
        if ranks:
            rank = next((r for r in VLLM_LORA_RANKS if r >= max(ranks)), None)
            if rank is None:
                raise LaunchError(f"LoRA rank {max(ranks)} is above vLLM's largest --max-lora-rank (512)")
            args += ["--max-lora-rank", str(rank)]
        # recent vLLM looks a request's model up among the LoRA names before the base name, so an adapter named like
        # the served model answers that name
        args += ["--lora-modules", *(f"{n}={CONTAINER_LORA_DIR}/{n}" for n, _ in spec.lora_adapters)]
    return _Plan("vllm", image, _container_name("vllm", spec), VLLM_CONTAINER_PORT, spec.port, _mounts(spec),
                 ("HF_TOKEN",) if spec.hf_token_env else (), tuple(args), ipc_host=True)


def _docker_args(plan: _Plan) -> list[str]:
    args = ["docker", "run", "-d", "--gpus", "all"]
    args += ["--ipc", "host"] if plan.ipc_host else ["--shm-size", "1g"]
    args += ["-p", f"{plan.host_port}:{plan.container_port}"]
    for host, inside in plan.mounts:
        args += ["-v", f"{host}:{inside}:ro"]
    args += ["--name", plan.name]
    for name in plan.env_names:
        args += ["-e", name]  # by name: docker copies the value from the caller's environment
    return args + [plan.image, *plan.server_args]


def tgi_docker_args(spec: ServeSpec) -> list[str]:
    """The exact ``docker run`` list for TGI 3.3.7 serving ``spec`` (detached, all GPUs visible, ``--num-shard`` of
    them used, the model and each adapter mounted read-only)."""
    return _docker_args(_tgi_plan(spec))


def vllm_docker_args(spec: ServeSpec, image: str = VLLM_IMAGE) -> list[str]:
    """The exact ``docker run`` list for vLLM's OpenAI server serving ``spec``. ``image`` may name an image built on
    :data:`VLLM_IMAGE` with the vllm-bnb-plugin, which ``quantize_4bit`` needs."""
    return _docker_args(_vllm_plan(spec, image))


def docker_command_text(args: list[str]) -> str:
    """One copy-paste shell line for the page (``shlex.split`` of it gives ``args`` back)."""
    return shlex.join(args)


# ---- cloud settings ------------------------------------------------------------------------------------------------

def _cloud_limits(spec: ServeSpec) -> tuple[int, int, dict | None, object | None]:
    _check_spec(spec)
    cfg = _read_config(spec.model_dir)
    card = _find_gpu(spec.gpu) if spec.gpu else None
    inp, tot = _limits(spec, cfg)
    return inp, tot, cfg, card


def _suggest_gpu(spec: ServeSpec):
    """The GPU to suggest: the spec's, else the smallest single catalog GPU the model fits on (None if unknown)."""
    if spec.gpu:
        return _find_gpu(spec.gpu)
    from core.estimate.gpus import GPUS

    try:
        model, cfg = _model_spec(spec.model_dir)
    except LaunchError:
        return None
    sizer = _Sizer(model, _serve_dtype(cfg, None), spec.quantize_4bit)
    context = _context_length(model)
    for g in sorted((g for g in GPUS if g.count == 1), key=lambda g: g.usable_bytes):
        if sizer.fits(g, spec.num_gpus, context):
            return g
    return None


def _pick(table: dict[int, str], n: int) -> str | None:
    return next((table[k] for k in sorted(table) if k >= n), None)


def _tgi_env(spec: ServeSpec, inp: int, tot: int, cfg: dict | None, card, hub_adapters: bool) -> dict[str, str]:
    env = {"MAX_INPUT_TOKENS": str(inp), "MAX_TOTAL_TOKENS": str(tot),
           "MAX_BATCH_PREFILL_TOKENS": str(min(inp + PREFILL_HEADROOM, tot))}
    if spec.quantize_4bit:
        env["QUANTIZE"] = "bitsandbytes-nf4"
    else:
        env["DTYPE"] = _serve_dtype(cfg, card)
    if spec.lora_adapters and hub_adapters:
        env["LORA_ADAPTERS"] = ",".join(f"<hub-namespace>/{n}" for n, _ in spec.lora_adapters)
    return env


def _py_dict(d: dict[str, str], indent: str, extra: tuple[str, ...] = ()) -> str:
    lines = [f"{indent}    {json.dumps(k)}: {json.dumps(v)}," for k, v in d.items()]
    lines += [f"{indent}    {x}," for x in extra]
    return "{\n" + "\n".join(lines) + f"\n{indent}}}"


def _adapter_lines(spec: ServeSpec) -> list[str]:
    if not spec.lora_adapters:
        return []
    lines = ["# LoRA adapters: TGI downloads the LORA_ADAPTERS from the Hub at start; push each adapter folder first:"]
    lines += [f"#   hf upload <hub-namespace>/{n} {shlex.quote(_host_path(f))} ." for n, f in spec.lora_adapters]
    lines += ["# Clients pick one by sending model=\"<hub-namespace>/<adapter>\"; any other name gets the base model."]
    return lines


def _hf_endpoints_text(spec: ServeSpec) -> str:
    inp, tot, cfg, card = _cloud_limits(spec)
    gpu = card or _suggest_gpu(spec)
    instance = _HF_INSTANCE.get(gpu.key) if gpu else None
    size = {1: "x1", 2: "x2", 4: "x4", 8: "x8"}.get(spec.num_gpus, f"x{spec.num_gpus}")
    env = {"MODEL_ID": "/repository", **_tgi_env(spec, inp, tot, cfg, gpu, True),
           "NUM_SHARD": str(spec.num_gpus)}
    repo = f"<hub-namespace>/{spec.served_name}"
    lines = [
        "# Hugging Face Inference Endpoints: custom container running TGI (settings only; nothing was created).",
        f"# 1. Push the merged model folder to a private Hub repo:  hf upload {repo} "
        f"{shlex.quote(_host_path(spec.model_dir))} .",
        "# 2. New endpoint from that repo -> Container type: Custom ->",
        f"#      image: {TGI_IMAGE}",
        f"#      port: {TGI_CONTAINER_PORT}    health route: /health",
        f"#      instance: {instance or '<a GPU instance>'} {size}"
        + (f" ({spec.num_gpus} × {gpu.name})" if gpu else "")
        + "  (check HfApi().list_inference_endpoints_hardware() for what your namespace offers)",
        "#      environment variables:",
        *[f"#        {k}={v}" for k, v in env.items()],
    ]
    if spec.hf_token_env:
        lines.append("#      secret: HF_TOKEN (add it under Secrets in the endpoint form; never as a plain env var)")
    lines += _adapter_lines(spec)
    lines += [
        "# The same with huggingface_hub (>= 2.4):",
        "from huggingface_hub import HfApi",
        "",
        "endpoint = HfApi().create_inference_endpoint(",
        f"    {json.dumps(re.sub(r'[^a-z0-9-]+', '-', spec.served_name.lower()).strip('-')[:32] or 'tgi-endpoint')},",
        f"    repository={json.dumps(repo)},",
        '    framework="pytorch",',
        '    task="text-generation",',
        '    accelerator="gpu",',
        '    vendor="aws",',
        '    region="us-east-1",',
        '    type="protected",',
        f"    instance_size={json.dumps(size)},",
        f"    instance_type={json.dumps(instance or '<instance-type>')},",
        f'    custom_image={{"url": {json.dumps(TGI_IMAGE)}, "port": {TGI_CONTAINER_PORT}, "healthRoute": "/health"}},',
        f"    env={_py_dict(env, '    ')},",
    ]
    if spec.hf_token_env:
        lines.append('    secrets={"HF_TOKEN": os.environ["HF_TOKEN"]},  # read here by name, never written down')
    lines += [")", "endpoint.wait()",
              'print(endpoint.url + "/v1/chat/completions")  # the OpenAI Messages API']
    if spec.hf_token_env:
        lines.insert(lines.index("from huggingface_hub import HfApi"), "import os")
    return "\n".join(lines) + "\n"


def _sagemaker_text(spec: ServeSpec) -> str:
    inp, tot, cfg, card = _cloud_limits(spec)
    gpu = card or _suggest_gpu(spec)
    if gpu is not None and gpu.count > 1 and gpu.instance:
        instance = "ml." + gpu.instance
    else:
        instance = _pick(_SAGEMAKER_INSTANCE.get(gpu.key, {}), spec.num_gpus) if gpu else None
    env = {"HF_MODEL_ID": "/opt/ml/model", "SM_NUM_GPUS": str(spec.num_gpus),
           **_tgi_env(spec, inp, tot, cfg, gpu, True)}
    if "QUANTIZE" in env:  # the SageMaker entrypoint maps HF_MODEL_QUANTIZE to QUANTIZE
        env["HF_MODEL_QUANTIZE"] = env.pop("QUANTIZE")
    extra = ('"HF_TOKEN": os.environ["HF_TOKEN"]',) if spec.hf_token_env else ()
    s3 = f"s3://<bucket>/{spec.served_name}/"
    lines = [
        f"# Amazon SageMaker: Hugging Face LLM DLC (TGI {SAGEMAKER_TGI_VERSION}) (a snippet; nothing was created).",
        '# pip install "sagemaker>=2.257,<3"',
        f"# 1. Upload the merged model folder uncompressed:  aws s3 sync "
        f"{shlex.quote(_host_path(spec.model_dir))} {s3}",
        *_adapter_lines(spec),
    ]
    if spec.hf_token_env:
        lines.append("import os")
        lines.append("")
    lines += [
        "import sagemaker",
        "from sagemaker.huggingface import HuggingFaceModel, get_huggingface_llm_image_uri",
        "",
        "role = sagemaker.get_execution_role()  # or the ARN of a role with SageMaker and S3 access",
        f'image_uri = get_huggingface_llm_image_uri("huggingface", version={json.dumps(SAGEMAKER_TGI_VERSION)})',
        "model = HuggingFaceModel(",
        "    role=role,",
        "    image_uri=image_uri,",
        f'    model_data={{"S3DataSource": {{"S3Uri": {json.dumps(s3)}, "S3DataType": "S3Prefix", '
        '"CompressionType": "None"}},',
        f"    env={_py_dict(env, '    ', extra)},",
        ")",
        "predictor = model.deploy(",
        "    initial_instance_count=1,",
        f"    instance_type={json.dumps(instance or '<ml.instance-type>')},"
        + (f"  # {spec.num_gpus} × {gpu.name}; check your quota" if gpu else ""),
        "    container_startup_health_check_timeout=900,",
        ")",
        '# TGI answers chat requests on /invocations: predictor.predict({"messages": [...], "max_tokens": 256})',
    ]
    return "\n".join(lines) + "\n"


def _vertex_text(spec: ServeSpec) -> str:
    inp, tot, cfg, card = _cloud_limits(spec)
    gpu = card or _suggest_gpu(spec)
    key = gpu.key if gpu is not None else ""
    if key == "a10g":  # no A10G on Google Cloud: the L4 has the same 24 GB
        key = "l4"
    accel, machines = _VERTEX_MACHINE.get(key, (None, {}))
    machine = _pick(machines, spec.num_gpus)
    env = {"NUM_SHARD": str(spec.num_gpus), **_tgi_env(spec, inp, tot, cfg, gpu, True),
           "MESSAGES_API_ENABLED": "true"}
    extra = ('"HF_TOKEN": os.environ["HF_TOKEN"]',) if spec.hf_token_env else ()
    gs = f"gs://<bucket>/{spec.served_name}"
    lines = [
        "# Google Cloud Vertex AI: Hugging Face TGI DLC (TGI 3.0.1) (a snippet; nothing was created).",
        "# pip install google-cloud-aiplatform",
        f"# 1. Upload the merged model folder:  gcloud storage cp --recursive "
        f"{shlex.quote(_host_path(spec.model_dir) + '/*')} {gs}/",
        "#    (the container downloads artifact_uri into /tmp/model and serves it: MODEL_ID is set for you)",
        *_adapter_lines(spec),
    ]
    if spec.hf_token_env:
        lines.append("import os")
        lines.append("")
    lines += [
        "from google.cloud import aiplatform",
        "",
        'aiplatform.init(project="<project-id>", location="us-central1")',
        "model = aiplatform.Model.upload(",
        f"    display_name={json.dumps(spec.served_name)},",
        f"    artifact_uri={json.dumps(gs)},",
        f"    serving_container_image_uri={json.dumps(VERTEX_TGI_IMAGE)},",
        f"    serving_container_environment_variables={_py_dict(env, '    ', extra)},",
        "    serving_container_ports=[8080],",
        ")",
        "model.wait()",
        "endpoint = model.deploy(",
        f"    machine_type={json.dumps(machine or '<machine-type>')},",
        f"    accelerator_type={json.dumps(accel or '<ACCELERATOR_TYPE>')},",
        f"    accelerator_count={spec.num_gpus},"
        + ("  # check your GPU quota in the region" if accel else ""),
        ")",
    ]
    return "\n".join(lines) + "\n"


def cloud_settings(spec: ServeSpec, target: str) -> str:
    """Settings text for a managed cloud (``hf_endpoints`` | ``sagemaker`` | ``vertex``), each TGI-based: the image,
    the launcher environment (limits sized like :func:`tgi_docker_args`), an instance suggestion and a Python snippet
    that is valid Python. Nothing is sent anywhere; a token is only ever referred to by name."""
    builders = {"hf_endpoints": _hf_endpoints_text, "sagemaker": _sagemaker_text, "vertex": _vertex_text}
    if target not in builders:
        raise LaunchError(f"cloud target must be one of {', '.join(CLOUD_TARGETS)} (got {target!r})")
    return builders[target](spec)


# ---- docker SDK --------------------------------------------------------------------------------------------------

def _docker_address() -> str:
    return os.environ.get("DOCKER_HOST") or DEFAULT_DOCKER_HOST


def docker_engine() -> tuple[object | None, str]:
    """``(client, "")`` when a Docker engine answers a ping (``DOCKER_HOST`` or the local socket), else ``(None,
    reason)`` with the reason worded for a person."""
    try:
        import docker
        from docker.errors import DockerException
        from requests.exceptions import RequestException
    except ImportError:
        return None, f"the docker Python SDK is not installed (pip install {DOCKER_SDK_PIN})"
    address = _docker_address()
    try:
        client = docker.from_env(timeout=10)
        client.ping()
    except (DockerException, RequestException, OSError) as exc:
        return None, (f"no Docker engine reachable at {address}: {exc}; run the command on a GPU host with Docker "
                      "and the NVIDIA Container Toolkit")
    return client, ""


def _engine_host() -> str:
    """Where the published port answers: the DOCKER_HOST machine for tcp:// or ssh:// engines, else this one."""
    address = _docker_address()
    if address.startswith(("tcp://", "ssh://")):
        return urlparse(address).hostname or "127.0.0.1"
    return "127.0.0.1"


# ---- images: pulled with progress, or a one-line why and how to load one on an offline host ------------------------

def image_registry(image: str) -> str:
    """Where an image reference is pulled from: its registry host (``ghcr.io``), Docker Hub (``docker.io``) when the
    reference names none."""
    first, _, rest = image.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        return first
    return "docker.io"


def _repo_and_tag(image: str) -> tuple[str, str]:
    if "@" in image:  # pinned by digest
        repo, digest = image.split("@", 1)
        return repo, digest
    last = image.rsplit("/", 1)[-1]
    if ":" in last:
        repo, tag = image.rsplit(":", 1)
        return repo, tag
    return image, "latest"


def pull_failure(image: str, raw) -> str:
    """One line for an image that could not be pulled: which image, from where, why (in words, not the engine's
    500), and how to load it on a host without access to the registry."""
    registry = image_registry(image)
    text = " ".join(str(raw or "").split())
    low = text.lower()
    if any(k in low for k in ("no such host", "name resolution", "temporary failure in name", "server misbehaving",
                              "could not resolve")):
        why = f"{registry} cannot be resolved from the Docker host (no network or no DNS there)"
    elif any(k in low for k in ("i/o timeout", "timeout", "deadline exceeded")):
        why = f"{registry} did not answer in time"
    elif any(k in low for k in ("connection refused", "network is unreachable", "no route to host")):
        why = f"{registry} is unreachable from the Docker host"
    elif any(k in low for k in ("unauthorized", "denied", "authentication required")):
        why = f"{registry} refused access (docker login {registry} on the Docker host)"
    elif "manifest unknown" in low or "not found" in low:
        why = f"{registry} has no image or tag by that name"
    else:
        why = text[-160:] or "the engine gave no reason"
    tar = re.sub(r"[^A-Za-z0-9._-]+", "-", image.rsplit("/", 1)[-1]) + ".tar"
    return (f"the image {image} could not be pulled from {registry}: {why}. To load it on a host without access to "
            f"{registry}: on a machine with access run docker pull {image} && docker save {image} -o {tar}, copy "
            f"{tar} over, then docker load -i {tar}")


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.0f} MB"


class PullProgress:
    """Folds the engine's pull events (one per layer and state) into one line: bytes downloaded of the layers' sizes
    known so far, and layers done."""

    DONE = ("Pull complete", "Already exists")

    def __init__(self, image: str):
        self.image = image
        self.layers: dict[str, dict] = {}

    def add(self, event: dict) -> None:
        lid = event.get("id")
        status = str(event.get("status") or "")
        if not lid or lid == _repo_and_tag(self.image)[1] or status.startswith(("Pulling from", "Digest", "Status")):
            return
        layer = self.layers.setdefault(lid, {"current": 0, "total": 0, "done": False})
        detail = event.get("progressDetail") or {}
        if status == "Downloading" and detail.get("total"):
            layer["current"], layer["total"] = int(detail.get("current") or 0), int(detail["total"])
        elif status in ("Download complete", "Verifying Checksum", "Extracting") and layer["total"]:
            layer["current"] = layer["total"]
        if status in self.DONE:
            layer["done"] = True
            layer["current"] = layer["total"]

    def line(self) -> str:
        got = sum(v["current"] for v in self.layers.values())
        size = sum(v["total"] for v in self.layers.values())
        done = sum(v["done"] for v in self.layers.values())
        where = f"pulling {self.image} from {image_registry(self.image)}"
        if not size:
            return f"{where}: asking the registry" + (f" ({len(self.layers)} layers)" if self.layers else "")
        layers = f"{done} of {len(self.layers)} layers done"
        if any(not v["total"] and not v["done"] for v in self.layers.values()):  # some sizes not known yet
            return f"{where}: {_gb(got)} of at least {_gb(size)}, {layers}"
        return f"{where}: {_gb(got)} of {_gb(size)} ({100 * got / size:.0f} %), {layers}"


def ensure_image(client, image: str, on_progress=None, every_s: float = 1.0) -> bool:
    """Pull ``image`` unless the engine has it, calling ``on_progress(line)`` at most every ``every_s`` seconds and
    once at the end. Returns whether it pulled; raises :class:`LaunchError` with :func:`pull_failure`'s line."""
    from docker.errors import APIError, DockerException, ImageNotFound
    from requests.exceptions import RequestException

    try:
        client.images.get(image)
        return False
    except ImageNotFound:
        pass
    except (APIError, DockerException, RequestException) as exc:
        raise LaunchError(f"the Docker engine could not look up {image}: {' '.join(str(exc).split())[:200]}") from None
    import threading

    repo, tag = _repo_and_tag(image)
    progress = PullProgress(image)
    lock, done = threading.Lock(), threading.Event()
    said = [""]

    def report() -> None:  # the newest state, when it changed (events come in bursts; a burst's end is reported too)
        with lock:
            line = progress.line()
        if line != said[0]:
            said[0] = line
            on_progress(line)

    flusher = None
    if on_progress:
        report()

        def flush() -> None:
            while not done.wait(every_s):
                report()

        flusher = threading.Thread(target=flush, daemon=True, name="fts-pull-progress")
        flusher.start()
    try:
        for event in client.api.pull(repo, tag=tag, stream=True, decode=True):
            if not isinstance(event, dict):
                continue
            if event.get("error") or event.get("errorDetail"):
                raise LaunchError(pull_failure(image, event.get("error") or event.get("errorDetail")))
            with lock:
                progress.add(event)
    except APIError as exc:
        raise LaunchError(pull_failure(image, getattr(exc, "explanation", None) or exc)) from None
    except (DockerException, RequestException) as exc:
        raise LaunchError(pull_failure(image, exc)) from None
    finally:
        done.set()
        if flusher is not None:
            flusher.join(timeout=5)  # its last word comes before the pull's end
    try:
        client.images.get(image)
    except (ImageNotFound, APIError, DockerException, RequestException):
        raise LaunchError(pull_failure(image, "the pull ended but the engine does not have the image")) from None
    if on_progress:
        on_progress(f"pulled {image} ({_gb(sum(v['total'] for v in progress.layers.values()))})")
    return True


def launch_container(spec: ServeSpec, target: str, image: str | None = None, *, on_progress=None,
                     proceed=None) -> dict:
    """Start ``target`` (``tgi`` | ``vllm``) for ``spec`` through the docker SDK, detached, with every GPU visible.
    The first launch pulls the image (TGI is ~10 GB) and blocks until it has, reporting ``on_progress(line)``;
    ``proceed()`` is asked after the pull (False: stop there, nothing started). Returns ``{"container_id", "name",
    "url"}`` (url ends in ``/v1``); raises :class:`LaunchError` — with the command to run on a GPU host when no
    engine answers, with one line saying which image could not be pulled from where and how to load it offline."""
    if target not in TARGETS:
        raise LaunchError(f"target must be one of {', '.join(TARGETS)} (got {target!r})")
    plan = _tgi_plan(spec) if target == "tgi" else _vllm_plan(spec, image or VLLM_IMAGE)
    command = docker_command_text(_docker_args(plan))
    client, reason = docker_engine()
    if client is None:
        raise LaunchError(f"{reason}:\n{command}")
    environment = {}
    for name in plan.env_names:
        value = os.environ.get(name)
        if not value:
            raise LaunchError(f"{name} is to be passed to the container but is not set in this process's environment:"
                              f" export {name} before starting the studio, or untick it")
        environment[name] = value  # sent to the engine only, never written down
    from docker.errors import APIError, DockerException, ImageNotFound
    from docker.types import DeviceRequest

    ensure_image(client, plan.image, on_progress)
    if proceed is not None and not proceed():
        raise LaunchError("stopped before the container started")

    kwargs = dict(command=list(plan.server_args), detach=True, name=plan.name,
                  device_requests=[DeviceRequest(count=-1, capabilities=[["gpu"]])],  # = --gpus all
                  volumes={host: {"bind": inside, "mode": "ro"} for host, inside in plan.mounts},
                  ports={f"{plan.container_port}/tcp": plan.host_port}, environment=environment)
    if plan.ipc_host:
        kwargs["ipc_mode"] = "host"
    else:
        kwargs["shm_size"] = "1g"
    try:
        container = client.containers.run(plan.image, **kwargs)
    except ImageNotFound as exc:  # the engine lost it between the pull and the start
        raise LaunchError(f"{pull_failure(plan.image, getattr(exc, 'explanation', None) or exc)}\n"
                          f"the command:\n{command}") from None
    except APIError as exc:
        text = str(exc)
        if "Conflict" in text or getattr(exc, "status_code", None) == 409:
            hint = f"a container named {plan.name} exists already: stop it (docker rm -f {plan.name}) or change port"
        elif "capabilities" in text and "gpu" in text:
            hint = "the engine has no GPU support: install the NVIDIA Container Toolkit on the host and restart Docker"
        elif "port is already allocated" in text or "address already in use" in text:
            hint = f"host port {plan.host_port} is in use: choose another port"
        else:
            hint = "the engine refused the container"
        raise LaunchError(f"{hint} ({text.splitlines()[0][:300]}); the command:\n{command}") from None
    except DockerException as exc:
        raise LaunchError(f"the Docker engine failed: {exc}; the command:\n{command}") from None
    return {"container_id": container.id, "name": container.name,
            "url": f"http://{_engine_host()}:{plan.host_port}/v1"}


def container_status(container_id: str) -> str | None:
    """The container's state (``running``, ``exited``, ``created``, ...); ``"removed"`` when the engine no longer
    knows it; None when no engine answers (nothing can be said)."""
    client, _reason = docker_engine()
    if client is None or not container_id:
        return None
    from docker.errors import DockerException, NotFound
    from requests.exceptions import RequestException

    try:
        return str(client.containers.get(container_id).status)
    except NotFound:
        return "removed"
    except (DockerException, RequestException):
        return None


def stop_container(container_id: str) -> None:
    """Stop the container (kept, so its logs can still be read); nothing to do if the engine no longer knows it."""
    client, reason = docker_engine()
    if client is None:
        raise LaunchError(f"{reason}; stop it on the GPU host with: docker stop {container_id}")
    from docker.errors import DockerException, NotFound
    from requests.exceptions import RequestException

    try:
        client.containers.get(container_id).stop(timeout=30)
    except NotFound:
        return
    except (DockerException, RequestException) as exc:
        raise LaunchError(f"could not stop container {container_id[:12]}: {exc}") from None
