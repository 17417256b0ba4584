"""Memory, time and cost estimates for fine-tuning and serving a causal LM: pure functions over a model spec.

Everything here works from a model's *config* (architecture fields) and never loads weights:

* :func:`load_model_spec` turns a reference (catalog name, ``default``, a local dir, a Hub id) into a :class:`ModelSpec`;
  Hub ids fetch only ``config.json`` through :func:`core.models.load_config`; the catalog works offline.
* :func:`param_inventory` lists every parameter tensor the architecture creates (embeddings, attention with GQA,
  MLP, MoE experts, norms, biases, lm_head tied or not); :func:`count_parameters` sums it. The sums match
  ``model.num_parameters()`` exactly for the supported families (llama-like, mixtral, qwen2/3, phi3, phi, gpt2, falcon).
* :func:`estimate_training_memory` models one optimizer step as phases (forward, loss, backward, optimizer step)
  and reports the *peak* (max over phases, not a sum of everything), with every component and its formula.
* :func:`estimate_inference_memory`, :func:`accelerate_style`, :func:`gpu_fit_table`, :func:`estimate_time_cost`.
* :func:`preflight_check` is what the Train tab calls before starting a run; :func:`register_cli` adds
  ``python -m core estimate``.

Byte conventions: ``*_bytes`` are plain bytes; "GB" shown to people is GiB (2**30), like accelerate and nvidia-smi.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Optional

GIB = 1024**3
MIB = 1024**2

CATALOG_PATH = Path(__file__).resolve().parent / "catalog" / "models.json"

METHODS = ("full", "lora", "qlora", "int8")
METHOD_LABELS = {"full": "Full fine-tune", "lora": "LoRA", "qlora": "QLoRA (4-bit NF4)", "int8": "LoRA on 8-bit (LLM.int8)"}
OPTIMIZERS = ("adamw", "adamw_8bit", "paged_adamw", "paged_adamw_8bit", "sgd", "adafactor")
OPTIMIZER_LABELS = {
    "adamw": "AdamW (torch, fused)",
    "adamw_8bit": "8-bit AdamW (bitsandbytes)",
    "paged_adamw": "Paged AdamW 32-bit (bitsandbytes)",
    "paged_adamw_8bit": "Paged AdamW 8-bit (bitsandbytes)",
    "sgd": "SGD (no momentum)",
    "adafactor": "Adafactor (factored, no first moment)",
}
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
ATTENTIONS = ("sdpa", "flash", "eager")
INFERENCE_DTYPES = ("fp32", "fp16", "bf16", "int8", "int4")
DTYPE_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}

# Overheads outside the tensors that torch.cuda.max_memory_allocated sees.
CUDA_CONTEXT_BYTES = 512 * MIB  # CUDA context + cuBLAS/cuDNN handles; 300-900 MiB depending on GPU, driver, torch
ALLOCATOR_SLACK_FRACTION = 0.10  # caching-allocator fragmentation of the per-step tensors (reserved vs allocated)
NF4_BLOCK = 64  # bitsandbytes 4-bit blocksize: one absmax per 64 weights
NF4_DQ_BLOCK = 256  # double quantization: the absmaxes are quantised to 8 bit in blocks of 256
BNB_8BIT_OPTIM_BLOCK = 256  # bitsandbytes blockwise 8-bit optimizer state: one fp32 absmax per 256 values
BNB_8BIT_OPTIM_MIN_SIZE = 4096  # tensors smaller than this keep 32-bit states (bnb min_8bit_size)


class EstimateError(ValueError):
    """Input a person can fix: an unknown architecture field, an unresolvable model, a non-positive size."""


# =====================================================================================================================
# Model spec
# =====================================================================================================================
LLAMA_LIKE = ("llama", "mistral", "mixtral", "qwen2", "qwen3", "phi3", "gemma", "olmo", "granite", "smollm3")
SUPPORTED_FAMILIES = LLAMA_LIKE + ("gpt2", "falcon", "phi")
_NATIVE_ACTS = {"silu", "swish", "gelu", "gelu_pytorch_tanh", "relu", "gelu_fast", "quick_gelu"}


@dataclass(frozen=True)
class ModelSpec:
    """The architecture numbers that memory depends on. Built from a config, never from weights."""

    name: str
    model_type: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    tie_word_embeddings: bool
    family: str = "llama"  # llama | gpt2 | falcon | phi  (the parameter layout)
    max_position_embeddings: int = 0
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    lm_head_bias: bool = False
    qk_norm: bool = False
    fused_qkv: bool = False
    fused_gate_up: bool = False
    norm_kind: str = "rms"  # rms | layernorm
    norms_per_layer: int = 2
    mlp_kind: str = "gated"  # gated (gate, up, down) | plain (fc1, fc2)
    hidden_act: str = "silu"
    parallel_block: bool = False  # attention and MLP read the same normed input (falcon, phi)
    num_experts: int = 0
    experts_per_token: int = 0
    dropout: float = 0.0
    has_auto_model_for_causal_lm: bool = False  # config.auto_map names an AutoModelFor* class (accelerate uses it)
    assumed_layout: bool = False  # unknown model_type estimated as llama-shaped: counts may be off

    @property
    def q_dim(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    def describe(self) -> str:
        attn = "MHA" if self.num_kv_heads == self.num_heads else ("MQA" if self.num_kv_heads == 1 else "GQA")
        moe = f", MoE {self.num_experts} experts (top-{self.experts_per_token})" if self.is_moe else ""
        return (
            f"{self.name}: {self.model_type}, {self.num_layers} layers, hidden {self.hidden_size}, "
            f"{self.num_heads} heads / {self.num_kv_heads} kv heads ({attn}, head dim {self.head_dim}), "
            f"MLP {self.intermediate_size}, vocab {self.vocab_size}{moe}, "
            f"lm_head {'tied' if self.tie_word_embeddings else 'untied'}"
        )


def _get(cfg: dict, *names: str, default: Any = None) -> Any:
    for n in names:
        if n in cfg and cfg[n] is not None:
            return cfg[n]
    return default


def _require_int(cfg: dict, label: str, *names: str, default: Any = None) -> int:
    value = _get(cfg, *names, default=default)
    if value is None:
        raise EstimateError(
            f"the model config has no '{names[0]}' field (also looked for {', '.join(names[1:]) or 'no alias'}): "
            "cannot work out the architecture; pick a catalog model or check config.json"
        )
    try:
        value_int = int(value)
    except (TypeError, ValueError):
        raise EstimateError(f"config field '{names[0]}' must be a whole number (got {value!r})") from None
    if value_int <= 0:
        raise EstimateError(f"config field '{names[0]}' ({label}) must be positive (got {value_int})")
    return value_int


def spec_from_config(config: Any, name: str = "") -> ModelSpec:
    """Build a :class:`ModelSpec` from a transformers config object or a ``config.json`` dict."""
    cfg = config.to_dict() if hasattr(config, "to_dict") else dict(config or {})
    if "hidden_size" not in cfg and "n_embd" not in cfg and isinstance(cfg.get("text_config"), dict):
        cfg = {**cfg["text_config"], "auto_map": cfg.get("auto_map")}
    model_type = str(cfg.get("model_type") or "").lower()
    if not model_type:
        raise EstimateError("the model config has no 'model_type' field; is this a Hugging Face config.json?")
    name = name or cfg.get("_name_or_path") or model_type
    auto_map = cfg.get("auto_map") or {}
    has_auto_lm = isinstance(auto_map, dict) and any(str(k).startswith("AutoModelFor") for k in auto_map)

    if model_type == "gpt2":
        h = _require_int(cfg, "hidden size", "n_embd", "hidden_size")
        heads = _require_int(cfg, "attention heads", "n_head", "num_attention_heads")
        if h % heads:
            raise EstimateError(f"hidden size {h} is not divisible by the {heads} attention heads")
        inner = _get(cfg, "n_inner") or 4 * h
        return ModelSpec(
            name=name, model_type=model_type, family="gpt2",
            vocab_size=_require_int(cfg, "vocabulary size", "vocab_size"),
            hidden_size=h, num_layers=_require_int(cfg, "layers", "n_layer", "num_hidden_layers"),
            num_heads=heads, num_kv_heads=heads, head_dim=h // heads, intermediate_size=int(inner),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", True)),
            max_position_embeddings=_require_int(cfg, "positions", "n_positions", "max_position_embeddings"),
            qkv_bias=True, o_bias=True, mlp_bias=True, fused_qkv=True, norm_kind="layernorm", mlp_kind="plain",
            hidden_act=str(cfg.get("activation_function") or "gelu_new"),
            dropout=float(_get(cfg, "resid_pdrop", default=0.1) or 0.0),
            has_auto_model_for_causal_lm=has_auto_lm,
        )

    h = _require_int(cfg, "hidden size", "hidden_size", "n_embd", "d_model")
    layers = _require_int(cfg, "layers", "num_hidden_layers", "n_layer", "num_layers")
    heads = _require_int(cfg, "attention heads", "num_attention_heads", "n_head")
    vocab = _require_int(cfg, "vocabulary size", "vocab_size")
    head_dim = _get(cfg, "head_dim")
    if head_dim is None:
        if h % heads:
            raise EstimateError(f"hidden size {h} is not divisible by the {heads} attention heads and no head_dim is set")
        head_dim = h // heads
    head_dim = int(head_dim)
    common = dict(name=name, model_type=model_type, vocab_size=vocab, hidden_size=h, num_layers=layers, num_heads=heads,
                  head_dim=head_dim, max_position_embeddings=int(_get(cfg, "max_position_embeddings", default=0) or 0),
                  has_auto_model_for_causal_lm=has_auto_lm)

    if model_type == "falcon":
        new_arch = bool(cfg.get("new_decoder_architecture", False))
        if new_arch:
            kv = int(_get(cfg, "num_kv_heads", default=heads))
            norms = 2 if int(_get(cfg, "num_ln_in_parallel_attn", default=2) or 2) == 2 else 1
        else:
            kv = 1 if cfg.get("multi_query", True) else heads
            norms = 1 if cfg.get("parallel_attn", True) else 2
        bias = bool(cfg.get("bias", False))
        return ModelSpec(
            **common, family="falcon", num_kv_heads=kv,
            intermediate_size=int(_get(cfg, "ffn_hidden_size", default=4 * h)),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", True)),
            qkv_bias=bias, o_bias=bias, mlp_bias=bias, fused_qkv=True, norm_kind="layernorm", norms_per_layer=norms,
            mlp_kind="plain", hidden_act="gelu", parallel_block=bool(cfg.get("parallel_attn", True)) or new_arch,
            dropout=float(_get(cfg, "hidden_dropout", default=0.0) or 0.0),
        )

    if model_type == "phi":
        return ModelSpec(
            **common, family="phi", num_kv_heads=int(_get(cfg, "num_key_value_heads", default=heads)),
            intermediate_size=_require_int(cfg, "MLP size", "intermediate_size"),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            qkv_bias=True, o_bias=True, mlp_bias=True, lm_head_bias=True, qk_norm=bool(cfg.get("qk_layernorm", False)),
            norm_kind="layernorm", norms_per_layer=1, mlp_kind="plain", hidden_act=str(cfg.get("hidden_act") or "gelu_new"),
            parallel_block=True, dropout=float(_get(cfg, "resid_pdrop", default=0.0) or 0.0),
        )

    # llama-like: llama, mistral, mixtral, qwen2, qwen3, phi3, gemma, ... (and unknown types that look like one)
    assumed = model_type not in LLAMA_LIKE
    inter = _require_int(cfg, "MLP size", "intermediate_size", "ffn_dim")
    kv = int(_get(cfg, "num_key_value_heads", default=heads))
    if kv <= 0 or heads % kv:
        raise EstimateError(f"num_key_value_heads={kv} must be positive and divide num_attention_heads={heads}")
    attention_bias = bool(cfg.get("attention_bias", False))
    qkv_bias, o_bias = attention_bias, attention_bias
    if model_type == "qwen2":
        qkv_bias, o_bias = True, False
    experts = 0
    top_k = 0
    if model_type == "mixtral" or (assumed and _get(cfg, "num_local_experts")):
        experts = _require_int(cfg, "experts", "num_local_experts")
        top_k = _require_int(cfg, "experts per token", "num_experts_per_tok", default=2)
    elif assumed and (_get(cfg, "num_experts") or _get(cfg, "n_routed_experts")):
        raise EstimateError(
            f"architecture '{model_type}' is a mixture-of-experts layout the estimator does not know "
            f"(supported: {', '.join(SUPPORTED_FAMILIES)}); pick a catalog model"
        )
    tie_default = model_type in ("gemma",)
    return ModelSpec(
        **common, family="llama", num_kv_heads=kv, intermediate_size=inter,
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", tie_default)),
        qkv_bias=qkv_bias, o_bias=o_bias, mlp_bias=bool(cfg.get("mlp_bias", False)), qk_norm=model_type == "qwen3",
        fused_qkv=model_type == "phi3", fused_gate_up=model_type == "phi3", norm_kind="rms", norms_per_layer=2,
        mlp_kind="gated", hidden_act=str(_get(cfg, "hidden_act", "hidden_activation", default="silu")),
        num_experts=experts, experts_per_token=top_k, assumed_layout=assumed,
    )


# =====================================================================================================================
# Catalog and model references
# =====================================================================================================================
@lru_cache(maxsize=1)
def _catalog() -> tuple[dict, ...]:
    data = json.loads(CATALOG_PATH.read_text(encoding="utf-8"))
    return tuple(data["models"])


def catalog_names() -> list[str]:
    """The built-in offline configs, by display name."""
    return [m["name"] for m in _catalog()]


def catalog_entry(ref: str) -> Optional[dict]:
    key = (ref or "").strip().lower()
    for m in _catalog():
        if key in (m["name"].lower(), m["hub_id"].lower(), m["hub_id"].split("/")[-1].lower()):
            return m
    return None


def load_model_spec(ref: str) -> ModelSpec:
    """A catalog name/Hub id in the catalog (offline), ``default``, a local model dir, or a Hub id (config.json only)."""
    from core.models import DEFAULT_MODEL_NAME, ModelNotFoundError, load_config, resolve_model

    ref = (ref or "").strip()
    if not ref:
        raise EstimateError("choose a model: a catalog entry, 'default', a local model directory or a Hub id")
    entry = catalog_entry(ref)
    if entry is not None:
        return spec_from_config(entry["config"], entry["name"])
    try:
        resolved = resolve_model(ref, prepare_default=False)  # never convert/load weights just to estimate
    except ModelNotFoundError as exc:
        raise EstimateError(str(exc)) from None
    if resolved.kind == "default":
        cfg_file = Path(resolved.path) / "config.json"
        if not cfg_file.is_file():  # not converted yet: the catalog has the same architecture
            entry = catalog_entry(DEFAULT_MODEL_NAME)
            return spec_from_config(entry["config"], entry["name"])
        return spec_from_config(json.loads(cfg_file.read_text(encoding="utf-8")), resolved.display_name)
    if resolved.kind == "local":
        cfg_file = Path(resolved.path) / "config.json"
        if not cfg_file.is_file():
            raise EstimateError(f"{resolved.path} has no config.json (an adapter folder? estimate its base model)")
        try:
            cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise EstimateError(f"{cfg_file} is not valid JSON: {exc}") from None
        return spec_from_config(cfg, resolved.display_name)
    try:
        config = load_config(resolved)  # the real Hub code path: downloads config.json only
    except ModelNotFoundError as exc:
        raise EstimateError(f"{exc} Offline catalog: {', '.join(catalog_names())}.") from None
    except (ValueError, KeyError) as exc:  # e.g. an architecture this transformers does not know
        raise EstimateError(f"could not read the config of '{ref}': {exc}") from None
    return spec_from_config(config, ref)


# =====================================================================================================================
# Parameters
# =====================================================================================================================
@dataclass(frozen=True)
class ParamTensor:
    """One parameter tensor of one layer (``count`` = how many identical copies: usually the layer count)."""

    module: str  # module name a LoRA target would match, e.g. q_proj
    shape: tuple[int, ...]
    count: int
    kind: str  # embedding | pos_embedding | linear | linear_bias | expert | router | norm | lm_head | lm_head_bias
    group: str  # embeddings | attention | mlp | experts | norms | lm_head

    @property
    def numel(self) -> int:
        return math.prod(self.shape) * self.count


def param_inventory(spec: ModelSpec) -> list[ParamTensor]:
    """Every parameter tensor the architecture creates, as (module, shape, count, kind, group)."""
    L, h, V = spec.num_layers, spec.hidden_size, spec.vocab_size
    q, kv, i = spec.q_dim, spec.kv_dim, spec.intermediate_size
    out: list[ParamTensor] = []

    def lin(module: str, n_out: int, n_in: int, bias: bool, group: str) -> None:
        out.append(ParamTensor(module, (n_out, n_in), L, "linear", group))
        if bias:
            out.append(ParamTensor(module, (n_out,), L, "linear_bias", group))

    def norm(module: str, size: int, count: int) -> None:
        out.append(ParamTensor(module, (size,), count, "norm", "norms"))
        if spec.norm_kind == "layernorm":
            out.append(ParamTensor(module, (size,), count, "norm_bias", "norms"))

    out.append(ParamTensor("embed_tokens", (V, h), 1, "embedding", "embeddings"))
    if spec.family == "gpt2":
        out.append(ParamTensor("wpe", (spec.max_position_embeddings, h), 1, "pos_embedding", "embeddings"))
        lin("c_attn", 3 * h, h, True, "attention")
        lin("c_proj", h, h, True, "attention")
        lin("c_fc", i, h, True, "mlp")
        lin("c_proj", h, i, True, "mlp")
        norm("ln", h, 2 * L)
    elif spec.family == "falcon":
        lin("query_key_value", q + 2 * kv, h, spec.qkv_bias, "attention")
        lin("dense", h, q, spec.o_bias, "attention")
        lin("dense_h_to_4h", i, h, spec.mlp_bias, "mlp")
        lin("dense_4h_to_h", h, i, spec.mlp_bias, "mlp")
        norm("input_layernorm", h, spec.norms_per_layer * L)
    elif spec.family == "phi":
        lin("q_proj", q, h, True, "attention")
        lin("k_proj", kv, h, True, "attention")
        lin("v_proj", kv, h, True, "attention")
        lin("dense", h, q, True, "attention")
        lin("fc1", i, h, True, "mlp")
        lin("fc2", h, i, True, "mlp")
        norm("input_layernorm", h, L)
        if spec.qk_norm:
            norm("q_layernorm", spec.head_dim, L)
            norm("k_layernorm", spec.head_dim, L)
    else:
        if spec.fused_qkv:
            lin("qkv_proj", q + 2 * kv, h, spec.qkv_bias, "attention")
        else:
            lin("q_proj", q, h, spec.qkv_bias, "attention")
            lin("k_proj", kv, h, spec.qkv_bias, "attention")
            lin("v_proj", kv, h, spec.qkv_bias, "attention")
        lin("o_proj", h, q, spec.o_bias, "attention")
        if spec.qk_norm:
            norm("q_norm", spec.head_dim, L)
            norm("k_norm", spec.head_dim, L)
        if spec.is_moe:
            E = spec.num_experts
            out.append(ParamTensor("gate", (E, h), L, "router", "mlp"))
            out.append(ParamTensor("experts.gate_up_proj", (E, 2 * i, h), L, "expert", "experts"))
            out.append(ParamTensor("experts.down_proj", (E, h, i), L, "expert", "experts"))
        elif spec.fused_gate_up:
            lin("gate_up_proj", 2 * i, h, spec.mlp_bias, "mlp")
            lin("down_proj", h, i, spec.mlp_bias, "mlp")
        else:
            lin("gate_proj", i, h, spec.mlp_bias, "mlp")
            lin("up_proj", i, h, spec.mlp_bias, "mlp")
            lin("down_proj", h, i, spec.mlp_bias, "mlp")
        norm("layernorm", h, 2 * L)
    norm("final_norm", h, 1)
    if not spec.tie_word_embeddings:
        out.append(ParamTensor("lm_head", (V, h), 1, "lm_head", "lm_head"))
    if spec.lm_head_bias:
        out.append(ParamTensor("lm_head", (V,), 1, "lm_head_bias", "lm_head"))
    return out


@dataclass(frozen=True)
class ParamCounts:
    total: int
    active: int  # per token: MoE counts only experts_per_token experts
    embeddings: int
    attention: int
    mlp: int
    experts_total: int
    experts_active: int
    norms: int
    lm_head: int
    lm_head_tied: bool
    linear: int  # what QLoRA/int8 quantise: the decoder-layer linears + experts (not embeddings, lm_head, norms)

    def as_dict(self) -> dict:
        return asdict(self)


def count_parameters(spec: ModelSpec) -> ParamCounts:
    """Exact parameter count from the architecture (matches ``model.num_parameters()``)."""
    inv = param_inventory(spec)
    by_group: dict[str, int] = {}
    for p in inv:
        by_group[p.group] = by_group.get(p.group, 0) + p.numel
    total = sum(p.numel for p in inv)
    experts_total = by_group.get("experts", 0)
    experts_active = experts_total * spec.experts_per_token // spec.num_experts if spec.is_moe else 0
    return ParamCounts(
        total=total, active=total - experts_total + experts_active,
        embeddings=by_group.get("embeddings", 0), attention=by_group.get("attention", 0), mlp=by_group.get("mlp", 0),
        experts_total=experts_total, experts_active=experts_active, norms=by_group.get("norms", 0),
        lm_head=by_group.get("lm_head", 0), lm_head_tied=spec.tie_word_embeddings,
        linear=sum(p.numel for p in inv if p.kind in ("linear", "expert")),
    )


def _targeted_linears(spec: ModelSpec, targets: Iterable[str]) -> list[ParamTensor]:
    """The linear weights a LoRA target list selects (peft semantics: 'all-linear' = every nn.Linear/Conv1D
    inside the decoder except the output layer; names match the last module-name component)."""
    targets = [t.strip() for t in targets if t and t.strip()]
    if not targets:
        raise EstimateError("LoRA needs at least one target module (or 'all-linear')")
    linears = [p for p in param_inventory(spec) if p.kind in ("linear", "router")]
    if any(t.lower() in ("all-linear", "all_linear", "all") for t in targets):
        return [p for p in linears if p.kind == "linear"] + ([p for p in linears if p.kind == "router"]
                                                               if spec.is_moe and False else [])
    chosen = [p for p in linears if p.module in targets or p.module.split(".")[-1] in targets]
    if not chosen:
        names = sorted({p.module for p in linears})
        raise EstimateError(f"LoRA targets {targets} match no linear layer of {spec.name}; its linears are: {', '.join(names)}")
    return chosen


def count_lora_parameters(spec: ModelSpec, r: int, targets: Iterable[str]) -> int:
    """r·(in + out) per adapted linear (A: r×in, B: out×r), times the layer count."""
    if r < 1:
        raise EstimateError(f"LoRA rank must be at least 1 (got {r})")
    return sum(r * (p.shape[0] + p.shape[1]) * p.count for p in _targeted_linears(spec, targets))


# =====================================================================================================================
# Training memory
# =====================================================================================================================
@dataclass(frozen=True)
class TrainingPlan:
    method: str = "lora"  # full | lora | qlora | int8
    precision: str = "bf16"  # fp32 | bf16 | fp16 (resolve 'auto' with resolve_precision first)
    optimizer: str = "adamw"
    batch_size: int = 1
    seq_len: int = 512
    gradient_checkpointing: bool = False
    attention: str = "sdpa"  # sdpa | flash | eager
    lora_r: int = 16
    lora_targets: tuple[str, ...] = ("all-linear",)
    grad_accum: int = 1
    double_quant: bool = True  # QLoRA: bnb_4bit_use_double_quant
    device: str = "cuda"  # cuda | cpu (CPU: no CUDA context, allocator slack not modelled)

    def validated(self) -> "TrainingPlan":
        if self.method not in METHODS:
            raise EstimateError(f"method must be one of {', '.join(METHODS)} (got '{self.method}')")
        if self.optimizer not in OPTIMIZERS:
            raise EstimateError(f"optimizer must be one of {', '.join(OPTIMIZERS)} (got '{self.optimizer}')")
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise EstimateError(f"precision must be fp32, bf16 or fp16 (got '{self.precision}'; resolve 'auto' first)")
        if self.attention not in ATTENTIONS:
            raise EstimateError(f"attention must be one of {', '.join(ATTENTIONS)} (got '{self.attention}')")
        for label, value in (("batch size", self.batch_size), ("sequence length", self.seq_len),
                             ("gradient accumulation", self.grad_accum), ("LoRA rank", self.lora_r)):
            if not isinstance(value, int) or value < 1:
                raise EstimateError(f"{label} must be a whole number of at least 1 (got {value!r})")
        return replace(self, lora_targets=tuple(self.lora_targets))


def resolve_precision(precision: str, device: str = "cuda", bf16_supported: bool = True) -> str:
    """'auto' follows the device: bf16 where supported, fp16 on older GPUs (T4, V100), fp32 on CPU."""
    if precision and precision != "auto":
        return precision
    if device == "cpu":
        return "fp32"
    return "bf16" if bf16_supported else "fp16"


@dataclass
class Component:
    key: str
    label: str
    bytes: int
    formula: str
    phases: str = ""  # when it is alive, e.g. "all" or "forward/backward"

    @property
    def gib(self) -> float:
        return self.bytes / GIB


@dataclass
class MemoryEstimate:
    components: list[Component]
    phases: dict[str, int]  # phase name -> tensor bytes alive at that phase's peak
    peak_phase: str
    peak_tensor_bytes: int  # comparable with torch.cuda.max_memory_allocated
    overhead_bytes: int  # CUDA context + allocator slack
    peak_bytes: int  # what the GPU must have free
    params: int
    trainable_params: int
    notes: list[str] = field(default_factory=list)

    def component_bytes(self) -> dict[str, int]:
        return {c.key: int(c.bytes) for c in self.components}


def _act_bytes(precision: str) -> int:
    return DTYPE_BYTES[precision]


def _activation_terms_per_token_layer(spec: ModelSpec, plan: TrainingPlan, adapted: set[str]) -> list[tuple[str, float, str]]:
    """Bytes saved for backward per token per decoder layer, as (label, bytes, formula) terms.

    Derived from what autograd keeps in the HF implementations (no dropout unless the config has one):
    norms keep an fp32 copy of their input; a linear keeps its input only when its weight is trainable (full
    fine-tuning) or it carries a LoRA adapter; SDPA/flash keep q, k, v, the output and a per-head logsumexp;
    eager attention also keeps the softmax probabilities (the s² term); gated MLPs keep gate, act, up and their product.
    """
    a = _act_bytes(plan.precision)
    h, q, kv, i = spec.hidden_size, spec.q_dim, spec.kv_dim, spec.intermediate_size
    full = plan.method == "full"
    terms: list[tuple[str, float, str]] = []

    def linear_inputs(module_groups: list[tuple[list[str], int]]) -> tuple[float, str]:
        """Inputs kept by linears: full FT keeps each distinct input once; LoRA keeps one per adapted module
        (peft casts the input to the fp32 adapter dtype; under 16-bit autocast each module gets its own copy)."""
        total, parts = 0.0, []
        for modules, width in module_groups:
            if full:
                total += a * width
                parts.append(f"{a}·{width}")
            else:
                n = sum(1 for m in modules if m in adapted)
                if n == 0:
                    continue
                copies = 1 if a == 4 else n
                total += a * width * copies + 4 * plan.lora_r * n
                parts.append(f"{copies}×{a}·{width} + {n}×4·r")
        return total, " + ".join(parts) or "0 (frozen linears keep no input)"

    # --- norms
    n_norms = spec.norms_per_layer
    if spec.norm_kind == "rms":
        per = 4 * h + 4 + (a * h if full else 0)
        terms.append(("norms", n_norms * per, f"{n_norms}×(4·h fp32 input + 4 rsqrt{' + a·h normed (weight grad)' if full else ''})"))
    else:
        per = a * h + 8
        terms.append(("norms", n_norms * per, f"{n_norms}×(a·h input + 8 mean/rstd)"))

    # --- attention
    if spec.family == "gpt2":
        qkv_mods, o_mods = ["c_attn"], ["c_proj"]
    elif spec.family == "falcon":
        qkv_mods, o_mods = ["query_key_value"], ["dense"]
    elif spec.fused_qkv:
        qkv_mods, o_mods = ["qkv_proj"], ["o_proj"]
    else:
        qkv_mods, o_mods = ["q_proj", "k_proj", "v_proj"], ["o_proj"] if spec.family != "phi" else ["dense"]
    if spec.family == "phi":
        qkv_mods = ["q_proj", "k_proj", "v_proj"]
    if spec.family == "gpt2":
        mlp_in_mods, mlp_out_mods = ["c_fc"], ["c_proj"]
    elif spec.family == "falcon":
        mlp_in_mods, mlp_out_mods = ["dense_h_to_4h"], ["dense_4h_to_h"]
    elif spec.family == "phi":
        mlp_in_mods, mlp_out_mods = ["fc1"], ["fc2"]
    elif spec.fused_gate_up:
        mlp_in_mods, mlp_out_mods = ["gate_up_proj"], ["down_proj"]
    else:
        mlp_in_mods, mlp_out_mods = ["gate_proj", "up_proj"], ["down_proj"]

    if spec.parallel_block:
        groups = [(qkv_mods + mlp_in_mods, h), (o_mods, q)]
    else:
        groups = [(qkv_mods, h), (o_mods, q), (mlp_in_mods, h)]
    lin_bytes, lin_formula = linear_inputs(groups)
    terms.append(("linear inputs", lin_bytes, lin_formula))

    repeat_kv = plan.attention == "eager"
    k_width = q if repeat_kv else kv
    if plan.attention == "eager":
        s = plan.seq_len
        probs = spec.num_heads * s * (4 + (a if a != 4 else 0))
        terms.append(("attention q,k,v (k,v repeated to all heads)", a * (q + 2 * k_width), f"{a}·(q_dim + 2·q_dim)"))
        terms.append(("eager softmax probabilities (s² term)", probs,
                      f"heads·s·(4 fp32 softmax{' + a cast' if a != 4 else ''}) = {spec.num_heads}·{s}·{4 + (a if a != 4 else 0)}"))
    else:
        terms.append(("attention q,k,v,out + logsumexp", a * (2 * q + 2 * kv) + 4 * spec.num_heads,
                      f"{a}·(2·q_dim + 2·kv_dim) + 4·heads"))

    # --- MLP
    if spec.is_moe:
        k = spec.experts_per_token
        moe = k * (a * (2 * h + 4 * i)) + 4 * spec.num_experts * 2
        terms.append((f"MoE experts (top-{k} per token)", moe, f"{k}×{a}·(2·h + 4·i) + router 8·E"))
    elif spec.mlp_kind == "gated":
        n = 4 if (full or any(m in adapted for m in mlp_out_mods)) else 3
        if not full and any(m in adapted for m in mlp_out_mods) and a != 4:
            n = 4  # down_proj's adapter gets its own (cast) copy of the product
        terms.append(("gated MLP (gate, act, up, product)", a * n * i, f"{n}·{a}·i"))
    else:
        act_saved = 1 if spec.hidden_act in _NATIVE_ACTS else 4  # python GELU (gelu_new) keeps x, tanh, 0.5x, 1+tanh
        kept_out = 1 if (full or any(m in adapted for m in mlp_out_mods)) else 0
        n = act_saved + kept_out
        terms.append(("MLP (fc1 out, activation)", a * n * i, f"{n}·{a}·i ({spec.hidden_act})"))
    if spec.dropout > 0:
        terms.append(("dropout masks", 2 * h, "2 residual dropouts × h bytes (bool mask)"))
    return terms


def _optimizer_state_bytes(plan: TrainingPlan, trainable: list[tuple[tuple[int, ...], int]], param_bytes: int) -> tuple[int, str]:
    """State bytes for the trainable tensors [(shape, count)]."""
    opt = plan.optimizer
    n_params = sum(math.prod(s) * c for s, c in trainable)
    if opt == "sgd":
        return 0, "0 (SGD without momentum keeps no state)"
    if opt in ("adamw", "paged_adamw"):
        paged = " (paged: can spill to CPU RAM under pressure)" if opt == "paged_adamw" else ""
        b = param_bytes if opt == "adamw" else 4
        return 2 * b * n_params, f"2 states (m, v) × {b} B × {n_params:,} trainable{paged}"
    if opt in ("adamw_8bit", "paged_adamw_8bit"):
        total = 0
        for shape, count in trainable:
            n = math.prod(shape)
            if n >= BNB_8BIT_OPTIM_MIN_SIZE:
                total += count * 2 * (n + 4 * math.ceil(n / BNB_8BIT_OPTIM_BLOCK))
            else:
                total += count * 2 * 4 * n
        return total, (f"2 states × (1 B + 4 B per {BNB_8BIT_OPTIM_BLOCK}-block absmax); tensors under "
                       f"{BNB_8BIT_OPTIM_MIN_SIZE} values keep fp32 states")
    if opt == "adafactor":
        total = 0
        for shape, count in trainable:
            if len(shape) >= 2:
                lead = math.prod(shape[:-2])
                total += count * 4 * lead * (shape[-2] + shape[-1])
            else:
                total += count * 4 * math.prod(shape)
        return total, "factored second moment: 4·(rows + cols) per matrix, 4·n per vector; no first moment"
    raise EstimateError(f"unknown optimizer '{opt}'")


def estimate_training_memory(spec: ModelSpec, plan: TrainingPlan) -> MemoryEstimate:
    """Peak memory of one training step: max over forward / loss / backward / optimizer-step phases."""
    plan = plan.validated()
    counts = count_parameters(spec)
    inv = param_inventory(spec)
    a = _act_bytes(plan.precision)
    cb = a  # compute dtype bytes for frozen/base weights
    T = plan.batch_size * plan.seq_len  # tokens per micro-batch
    L, V, h, i = spec.num_layers, spec.vocab_size, spec.hidden_size, spec.intermediate_size
    comps: list[Component] = []
    notes: list[str] = []
    if spec.assumed_layout:
        notes.append(f"'{spec.model_type}' is not a known architecture: estimated as Llama-shaped, counts may be off")

    # --- weights
    linear_params = counts.linear
    other_params = counts.total - linear_params
    if plan.method == "full":
        if plan.precision == "fp16":
            weight_bytes = 4 * counts.total
            weight_formula = "4 B × params (fp32 master weights; fp16 autocast)"
        else:
            weight_bytes = a * counts.total
            weight_formula = f"{a} B × {counts.total:,} params ({plan.precision})"
    elif plan.method == "lora":
        weight_bytes = cb * counts.total
        weight_formula = f"{cb} B × {counts.total:,} frozen params ({plan.precision})"
    elif plan.method == "qlora":
        per = 0.5 + (1 / NF4_BLOCK + 4 / (NF4_BLOCK * NF4_DQ_BLOCK) if plan.double_quant else 4 / NF4_BLOCK)
        weight_bytes = int(linear_params * per) + cb * other_params
        weight_formula = (f"{linear_params:,} linear params × {per:.4f} B (NF4 0.5 B + "
                          f"{'double-quantised absmax 1/64 + 4/16384' if plan.double_quant else 'fp32 absmax 4/64'}) "
                          f"+ {other_params:,} embeddings/lm_head/norms × {cb} B")
    else:  # int8
        rows = sum(p.shape[0] * p.count * (math.prod(p.shape[:-2]) if len(p.shape) > 2 else 1)
                   for p in inv if p.kind in ("linear", "expert"))
        weight_bytes = linear_params + 4 * rows + cb * other_params
        weight_formula = f"{linear_params:,} linear params × 1 B + 4 B per output row (SCB) + {other_params:,} other × {cb} B"
    comps.append(Component("weights", "Model weights", int(weight_bytes), weight_formula, "all"))

    # --- trainable params
    adapted: set[str] = set()
    if plan.method == "full":
        trainable = counts.total
        trainable_shapes = [(p.shape, p.count) for p in inv]
        train_param_bytes = 4 if plan.precision in ("fp32", "fp16") else a
    else:
        targets = _targeted_linears(spec, plan.lora_targets)
        adapted = {p.module for p in targets}
        trainable = sum(plan.lora_r * (p.shape[0] + p.shape[1]) * p.count for p in targets)
        trainable_shapes = []
        for p in targets:
            trainable_shapes += [((plan.lora_r, p.shape[1]), p.count), ((p.shape[0], plan.lora_r), p.count)]
        train_param_bytes = 4  # peft keeps adapter weights in fp32 (autocast_adapter_dtype)
        comps.append(Component("adapter_weights", f"LoRA adapter weights (r={plan.lora_r})", 4 * trainable,
                               f"4 B × r·(in + out) per adapted linear = 4 × {trainable:,}", "all"))
    if plan.method == "full" and plan.precision == "fp16":
        comps.append(Component("autocast_weight_copies", "fp16 autocast weight copies", 2 * linear_params,
                               "2 B × linear params (cast once per forward, kept for backward)", "forward/backward"))

    # --- gradients
    grad_bytes = train_param_bytes * trainable
    comps.append(Component("gradients", "Gradients", int(grad_bytes),
                           f"{train_param_bytes} B × {trainable:,} trainable params", "backward end → optimizer step"))

    # --- optimizer
    opt_bytes, opt_formula = _optimizer_state_bytes(plan, trainable_shapes, train_param_bytes)
    comps.append(Component("optimizer_states", f"Optimizer states ({OPTIMIZER_LABELS[plan.optimizer]})", int(opt_bytes),
                           opt_formula, "all (after the first step)"))

    # --- activations
    terms = _activation_terms_per_token_layer(spec, plan, adapted)
    per_token_layer = sum(t[1] for t in terms)
    per_layer_formula = " + ".join(f"{t[0]}: {t[2]}" for t in terms)
    full_layer_acts = per_token_layer * T
    if spec.family == "gpt2":
        head_in = a * h  # final LN input/output
    else:
        head_in = 4 * h + (a * h if (plan.method == "full" or a != 4) else 0)
    head_in += a * h if plan.method == "full" or a != 4 else 0  # lm_head input (kept when lm_head trainable / cast)
    final_acts = head_in * T
    eager_mask = plan.batch_size * plan.seq_len**2 * a if plan.attention == "eager" else 0
    if plan.gradient_checkpointing:
        saved = L * a * h * T + final_acts + eager_mask
        act_formula = (f"checkpointed: L·a·h·tokens = {L}·{a}·{h}·{T} (layer inputs) + final norm/lm_head input; "
                       f"one layer is recomputed in backward ({per_token_layer:,.0f} B/token)")
        recompute = full_layer_acts
    else:
        saved = L * full_layer_acts + final_acts + eager_mask
        act_formula = f"L × tokens × ({per_layer_formula}) per token-layer = {L}·{T}·{per_token_layer:,.0f} B"
        recompute = 0
    comps.append(Component("activations", "Activations kept for backward", int(saved), act_formula, "forward → backward"))
    if recompute:
        comps.append(Component("recompute", "Recomputed layer (checkpointing)", int(recompute),
                               f"one layer's activations: tokens·{per_token_layer:,.0f} B", "backward"))
    if eager_mask:
        notes.append("eager attention materialises the b·s² mask and per-layer heads·s² probabilities")

    # --- logits / cross-entropy
    ce_fwd = (a + (4 if a != 4 else 0) + 4) * V * T
    ce_bwd = 12 * V * T
    comps.append(Component("logits_loss", "Logits + cross-entropy peak", int(ce_bwd),
                           f"12·b·s·V = 12·{T}·{V}: fp32 log-softmax output + its gradient + the logits gradient "
                           f"(forward holds {a + (4 if a != 4 else 0) + 4}·b·s·V)", "loss forward/backward"))

    # --- transients in backward: a layer's input/output grads and the largest op's grad workspace
    mlp_width = i * (spec.experts_per_token if spec.is_moe else 1)
    bwd_transient = a * T * (3 * mlp_width + 3 * h)
    if plan.method in ("qlora", "int8"):
        largest = max((p.shape[0] * p.shape[1] for p in inv if p.kind == "linear"), default=0)
        bwd_transient += cb * largest
        notes.append("QLoRA/8-bit dequantise one weight at a time to the compute dtype (counted as a transient)")
    # tied embeddings (full FT): the embedding's dense gradient meets the lm_head's already-accumulated one, and the
    # sum is a third V·h tensor for a moment at the very end of backward
    tied_grad_sum = 2 * train_param_bytes * V * h if (plan.method == "full" and spec.tie_word_embeddings) else 0
    if tied_grad_sum:
        comps.append(Component("tied_embedding_grad_sum", "Tied embedding gradient accumulation", int(tied_grad_sum),
                               f"2·{train_param_bytes}·V·h: embedding grad + lm_head grad + their sum, end of backward",
                               "backward end"))
    comps.append(Component("transient", "Backward workspace (largest op)", int(bwd_transient),
                           f"{a}·tokens·(3·i + 3·h): grads of the MLP intermediates and of the residual stream"
                           + (" + one dequantised weight" if plan.method in ("qlora", "int8") else ""), "backward"))

    # --- phases (tensor bytes); optimizer states exist during fwd/bwd from step 2 on
    adapter = 4 * trainable if plan.method != "full" else 0
    autocast_copies = 2 * linear_params if (plan.method == "full" and plan.precision == "fp16") else 0
    base = weight_bytes + adapter + opt_bytes
    carried_grads = grad_bytes if plan.grad_accum > 1 else 0  # grads from earlier micro-batches
    head_grad = train_param_bytes * V * h if plan.method == "full" else 0
    phases = {
        "forward (end, loss computed)": base + autocast_copies + carried_grads + saved + ce_fwd,
        "backward start (loss gradient)": base + autocast_copies + carried_grads + saved + ce_bwd,
        "backward (lm_head / first layers)": base + autocast_copies + carried_grads + saved + (4 + a) * V * T
        + head_grad + bwd_transient + recompute,
        "backward end (all gradients)": base + autocast_copies + grad_bytes + tied_grad_sum
        + (L * a * h * T if plan.gradient_checkpointing else 0) + recompute + bwd_transient,
        "optimizer step": base + grad_bytes,
    }
    peak_phase = max(phases, key=phases.get)
    peak_tensor = int(phases[peak_phase])
    overhead = 0
    if plan.device != "cpu":
        persistent = weight_bytes + adapter + opt_bytes
        slack = int(ALLOCATOR_SLACK_FRACTION * max(peak_tensor - persistent, 0) + 0.02 * persistent)
        comps.append(Component("cuda_context", "CUDA context", CUDA_CONTEXT_BYTES,
                               "fixed ~512 MiB (context, cuBLAS/cuDNN handles; 300-900 MiB in practice)", "all"))
        comps.append(Component("allocator_slack", "Allocator slack", slack,
                               f"{ALLOCATOR_SLACK_FRACTION:.0%} of the per-step (non-persistent) tensors + 2% of weights "
                               "and optimizer states (caching-allocator fragmentation)", "at peak"))
        overhead = CUDA_CONTEXT_BYTES + slack
    if plan.optimizer.startswith("paged"):
        notes.append("paged optimizers can move states to CPU RAM under pressure: the peak may fit a little above the card")
    if spec.is_moe:
        notes.append(f"MoE: all {spec.num_experts} experts are stored; compute uses {spec.experts_per_token} per token")
    return MemoryEstimate(
        components=comps, phases={k: int(v) for k, v in phases.items()}, peak_phase=peak_phase,
        peak_tensor_bytes=peak_tensor, overhead_bytes=int(overhead), peak_bytes=int(peak_tensor + overhead),
        params=counts.total, trainable_params=int(trainable), notes=notes,
    )


# =====================================================================================================================
# Inference memory
# =====================================================================================================================
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


# =====================================================================================================================
# accelerate estimate-memory, reproduced
# =====================================================================================================================
def accelerate_style(spec: ModelSpec) -> dict:
    """What ``accelerate estimate-memory`` prints: fp32 size of the model accelerate builds (``AutoModel`` — no lm_head —
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


# =====================================================================================================================
# GPUs: fit table, time and cost
# =====================================================================================================================
@dataclass(frozen=True)
class Gpu:
    key: str
    name: str
    memory_gb: float  # marketing size
    usable_bytes: int  # what torch reports as total on the card
    tflops_16: float  # peak dense bf16/fp16 tensor TFLOPs
    tflops_32: float  # peak dense fp32 (TF32 where available) TFLOPs
    bf16: bool
    count: int = 1
    price_per_gpu_hour: float = 0.0  # on-demand USD (indicative; editable in the UI)
    instance: str = ""


GPUS: tuple[Gpu, ...] = (
    Gpu("t4", "NVIDIA T4 16 GB", 16, 15_828_320_256, 65, 8.1, False, 1, 0.53, "g4dn.xlarge"),
    Gpu("l4", "NVIDIA L4 24 GB", 24, 23_034_724_352, 121, 60, True, 1, 0.80, "g6.xlarge"),
    Gpu("a10g", "NVIDIA A10G 24 GB", 24, 23_609_475_072, 70, 35, True, 1, 1.01, "g5.xlarge"),
    Gpu("a100-40", "NVIDIA A100 40 GB", 40, 42_298_834_944, 312, 156, True, 1, 4.10, "p4d (per GPU)"),
    Gpu("a100-80", "NVIDIA A100 80 GB", 80, 85_051_572_224, 312, 156, True, 1, 5.12, "p4de (per GPU)"),
    Gpu("h100", "NVIDIA H100 80 GB", 80, 84_929_347_584, 989, 494, True, 1, 12.29, "p5 (per GPU)"),
    Gpu("h200", "NVIDIA H200 141 GB", 141, 150_754_820_096, 989, 494, True, 1, 13.0, "p5e (per GPU)"),
    Gpu("g4dn.12xlarge", "AWS g4dn.12xlarge (4× T4 16 GB)", 16, 15_828_320_256, 65, 8.1, False, 4, 0.98, "g4dn.12xlarge"),
    Gpu("p3.2xlarge", "AWS p3.2xlarge (1× V100 16 GB)", 16, 16_935_682_048, 125, 15.7, False, 1, 3.06, "p3.2xlarge"),
    Gpu("p3.8xlarge", "AWS p3.8xlarge (4× V100 16 GB)", 16, 16_935_682_048, 125, 15.7, False, 4, 3.06, "p3.8xlarge"),
    Gpu("p3.16xlarge", "AWS p3.16xlarge (8× V100 16 GB)", 16, 16_935_682_048, 125, 15.7, False, 8, 3.06, "p3.16xlarge"),
    Gpu("p4d.24xlarge", "AWS p4d.24xlarge (8× A100 40 GB)", 40, 42_298_834_944, 312, 156, True, 8, 4.10, "p4d.24xlarge"),
    Gpu("p5.48xlarge", "AWS p5.48xlarge (8× H100 80 GB)", 80, 84_929_347_584, 989, 494, True, 8, 12.29, "p5.48xlarge"),
)
FIT_MARGIN = 0.90  # under 90 % of the card: "fits"; 90-100 %: "tight"


def get_gpu(key: str) -> Gpu:
    for g in GPUS:
        if g.key == key or g.name == key:
            return g
    raise EstimateError(f"unknown GPU '{key}'; choose one of {', '.join(g.key for g in GPUS)}")


def _verdict(need: int, have: int) -> str:
    if need <= FIT_MARGIN * have:
        return "fits"
    if need <= have:
        return "tight"
    return "no"


def _plan_for_gpu(plan: TrainingPlan, gpu: Gpu, precision: str) -> TrainingPlan:
    p = precision if precision != "auto" else resolve_precision("auto", "cuda", gpu.bf16)
    if p == "bf16" and not gpu.bf16:
        p = "fp16"  # the worker falls back to fp16 where bf16 is unsupported
    return replace(plan, precision=p, device="cuda")


def _sharded_peak(est: MemoryEstimate, n: int) -> int:
    """FSDP/ZeRO-3 over n GPUs: weights, gradients and optimizer states are sharded; activations are not."""
    comp = est.component_bytes()
    shardable = comp.get("weights", 0) + comp.get("adapter_weights", 0) + comp.get("optimizer_states", 0) + comp.get("gradients", 0)
    rest = est.peak_tensor_bytes - (shardable - comp.get("gradients", 0))  # peak phase usually has no full grads
    return int(shardable / n + max(rest, 0) + est.overhead_bytes)


def suggest_changes(spec: ModelSpec, plan: TrainingPlan, capacity_bytes: int) -> list[str]:
    """Single changes (then a few combinations) that bring the peak under the capacity, cheapest first."""
    options: list[tuple[str, TrainingPlan]] = []
    if not plan.gradient_checkpointing:
        options.append(("enable gradient checkpointing", replace(plan, gradient_checkpointing=True)))
    if plan.batch_size > 1:
        options.append((f"batch size 1 with gradient accumulation ×{plan.batch_size * plan.grad_accum}",
                        replace(plan, batch_size=1, grad_accum=plan.batch_size * plan.grad_accum)))
    if plan.method == "full":
        options.append(("use LoRA instead of full fine-tuning", replace(plan, method="lora")))
        if plan.optimizer == "adamw":
            options.append(("use 8-bit AdamW", replace(plan, optimizer="adamw_8bit")))
    if plan.method in ("full", "lora", "int8"):
        options.append(("use QLoRA (4-bit base weights)", replace(plan, method="qlora")))
    if plan.attention == "eager":
        options.append(("use sdpa/flash attention instead of eager", replace(plan, attention="sdpa")))
    found = []
    for label, p in options:
        try:
            if estimate_training_memory(spec, p).peak_bytes <= FIT_MARGIN * capacity_bytes:
                found.append(label)
        except EstimateError:
            continue
    if found:
        return found
    # combinations, greedily
    combo, labels = plan, []
    for label, _ in options:
        trial = {
            "enable gradient checkpointing": lambda q: replace(q, gradient_checkpointing=True),
            "use QLoRA (4-bit base weights)": lambda q: replace(q, method="qlora"),
            "use LoRA instead of full fine-tuning": lambda q: replace(q, method="lora") if q.method == "full" else q,
            "use sdpa/flash attention instead of eager": lambda q: replace(q, attention="sdpa"),
        }.get(label)
        if label.startswith("batch size 1"):
            trial = lambda q: replace(q, batch_size=1, grad_accum=q.batch_size * q.grad_accum)  # noqa: E731
        if label == "use 8-bit AdamW":
            trial = lambda q: replace(q, optimizer="adamw_8bit")  # noqa: E731
        if trial is None:
            continue
        combo = trial(combo)
        labels.append(label)
        if estimate_training_memory(spec, combo).peak_bytes <= FIT_MARGIN * capacity_bytes:
            return [" + ".join(labels)]
    shorter = replace(combo, seq_len=max(8, plan.seq_len // 2))
    if estimate_training_memory(spec, shorter).peak_bytes <= FIT_MARGIN * capacity_bytes:
        return [" + ".join(labels + [f"sequence length {shorter.seq_len}"])]
    return ["does not fit even with checkpointing, QLoRA and batch size 1: shard over more GPUs (FSDP/ZeRO-3)"]


@dataclass
class GpuFit:
    gpu: str
    name: str
    gpus: int
    memory_gb: float
    precision: str
    peak_bytes: int
    verdict: str  # fits | tight | no
    sharded_peak_bytes: Optional[int]  # per GPU under FSDP/ZeRO-3 (multi-GPU instances)
    sharded_verdict: Optional[str]
    advice: str

    def as_dict(self) -> dict:
        return asdict(self)


def gpu_fit_table(spec: ModelSpec, plan: TrainingPlan, precision: str = "auto", gpus: Iterable[Gpu] = GPUS) -> list[GpuFit]:
    """For each GPU/instance: the per-GPU peak, fits/tight/no, and what to change when it does not fit."""
    rows: list[GpuFit] = []
    cache: dict[str, MemoryEstimate] = {}
    for gpu in gpus:
        p = _plan_for_gpu(plan, gpu, precision)
        est = cache.get(p.precision) or estimate_training_memory(spec, p)
        cache[p.precision] = est
        verdict = _verdict(est.peak_bytes, gpu.usable_bytes)
        sharded = sharded_verdict = None
        if gpu.count > 1:
            sharded = _sharded_peak(est, gpu.count)
            sharded_verdict = _verdict(sharded, gpu.usable_bytes)
        if verdict == "fits":
            advice = f"{est.peak_bytes / GIB:.1f} of {gpu.usable_bytes / GIB:.1f} GiB"
        elif verdict == "tight":
            advice = "at the edge: expect OOM on long rows; " + "; or ".join(suggest_changes(spec, p, gpu.usable_bytes)[:2])
        else:
            advice = "; or ".join(suggest_changes(spec, p, gpu.usable_bytes)[:3])
            if sharded_verdict in ("fits", "tight"):
                advice = (f"{'fits' if sharded_verdict == 'fits' else 'tight'} sharded over {gpu.count} GPUs "
                          f"(FSDP/ZeRO-3: {sharded / GIB:.1f} GiB per GPU)")
        rows.append(GpuFit(gpu.key, gpu.name, gpu.count, gpu.memory_gb, p.precision, est.peak_bytes, verdict,
                           sharded, sharded_verdict, advice))
    return rows


DEFAULT_MFU = 0.35


@dataclass
class TimeCost:
    tokens: int
    epochs: float
    flops: float
    flops_per_token_param: int  # k in k·N·tokens
    params_for_flops: int  # active params (MoE)
    gpu: str
    gpus: int
    peak_tflops: float
    mfu: float
    seconds: float
    price_per_gpu_hour: float
    cost_usd: float
    formula: str

    def as_dict(self) -> dict:
        return asdict(self)


def flops_multiplier(method: str, gradient_checkpointing: bool) -> int:
    """k in FLOPs ≈ k·N·tokens: 6 full (2 forward + 4 backward), 8 with recompute; LoRA skips the weight gradients:
    ~4 (+2 with recompute)."""
    if method == "full":
        return 8 if gradient_checkpointing else 6
    return 6 if gradient_checkpointing else 4


def estimate_time_cost(spec: ModelSpec, plan: TrainingPlan, tokens: int, gpu: Gpu | str, epochs: float = 1.0,
                       mfu: float = DEFAULT_MFU, price_per_gpu_hour: Optional[float] = None) -> TimeCost:
    """Wall time and cost: k·N·tokens·epochs / (GPUs · peak dense TFLOPs · MFU), × $/GPU-hour."""
    gpu = get_gpu(gpu) if isinstance(gpu, str) else gpu
    if not isinstance(tokens, (int, float)) or tokens <= 0:
        raise EstimateError(f"token count must be positive (got {tokens!r}); pick a dataset or type a token count")
    if not epochs or epochs <= 0:
        raise EstimateError(f"epochs must be positive (got {epochs!r})")
    if not 0 < mfu <= 1:
        raise EstimateError(f"MFU must be between 0 and 1 (got {mfu!r}); 0.3-0.5 is typical")
    price = gpu.price_per_gpu_hour if price_per_gpu_hour is None else float(price_per_gpu_hour)
    if price < 0:
        raise EstimateError(f"price per GPU-hour must not be negative (got {price})")
    n = count_parameters(spec).active
    k = flops_multiplier(plan.method, plan.gradient_checkpointing)
    flops = float(k) * n * tokens * epochs
    prec = plan.precision if plan.precision != "auto" else resolve_precision("auto", "cuda", gpu.bf16)
    peak = gpu.tflops_32 if prec == "fp32" else gpu.tflops_16
    seconds = flops / (gpu.count * peak * 1e12 * mfu)
    cost = seconds / 3600 * price * gpu.count
    formula = (f"{k}·N·tokens·epochs = {k}·{n:,}·{int(tokens):,}·{epochs:g} = {flops:.3g} FLOPs; "
               f"÷ ({gpu.count} × {peak:g} TFLOPs × MFU {mfu:.0%}) = {seconds / 3600:.2f} h; "
               f"× {gpu.count} GPU × ${price:.2f}/GPU-h")
    return TimeCost(int(tokens), float(epochs), flops, k, n, gpu.key, gpu.count, peak, mfu, seconds, price, cost, formula)


def dataset_token_count(dataset_id: int | str) -> Optional[int]:
    """``total_tokens`` from a Data-tab dataset's stored token stats; None when they were not computed."""
    from core.data import DatasetError, get_dataset

    try:
        row = get_dataset(dataset_id)
    except DatasetError as exc:
        raise EstimateError(f"{exc}; pick one from the Data tab") from None
    stats = (row.meta or {}).get("token_stats") or {}
    total = stats.get("total_tokens")
    return int(total) if isinstance(total, (int, float)) and total > 0 else None


def list_datasets_with_tokens() -> list[tuple[str, int, Optional[int]]]:
    """(label, id, total_tokens or None) for every stored dataset, newest first."""
    from sqlmodel import select

    from core.config import db_session
    from storage import Dataset

    out = []
    with db_session() as session:
        for row in session.exec(select(Dataset).order_by(Dataset.id.desc())).all():
            stats = (row.meta or {}).get("token_stats") or {}
            total = stats.get("total_tokens")
            total = int(total) if isinstance(total, (int, float)) and total > 0 else None
            label = f"#{row.id} {row.name or row.source} ({row.rows} rows" + (f", {total:,} tokens)" if total else ")")
            out.append((label, int(row.id), total))
    return out


# =====================================================================================================================
# One call for the CLI and the UI
# =====================================================================================================================
def estimate_report(spec: ModelSpec, plan: TrainingPlan, *, precision_requested: str = "auto",
                    inference_dtype: Optional[str] = None, inference_tokens: Optional[int] = None,
                    tokens: Optional[int] = None, epochs: float = 1.0, gpu: str = "a100-80", mfu: float = DEFAULT_MFU,
                    price_per_gpu_hour: Optional[float] = None) -> dict:
    """The whole estimate as a JSON-able dict (stable keys; bytes are ints)."""
    est = estimate_training_memory(spec, plan)
    inf_dtype = inference_dtype or ("fp32" if plan.precision == "fp32" else "bf16")
    inf = estimate_inference_memory(spec, inf_dtype, plan.batch_size, inference_tokens or plan.seq_len, plan.attention,
                                    plan.device)
    counts = count_parameters(spec)
    report = {
        "model": spec.name,
        "architecture": spec.describe(),
        "params": counts.total,
        "active_params": counts.active,
        "param_breakdown": counts.as_dict(),
        "trainable_params": est.trainable_params,
        "plan": {**asdict(plan), "lora_targets": list(plan.lora_targets), "precision_requested": precision_requested},
        "components": est.component_bytes(),
        "formulas": {c.key: c.formula for c in est.components},
        "phases": est.phases,
        "peak_phase": est.peak_phase,
        "peak_tensor_bytes": est.peak_tensor_bytes,
        "peak_bytes": est.peak_bytes,
        "inference_dtype": inf_dtype,
        "inference_components": inf.component_bytes(),
        "inference_bytes": inf.peak_bytes,
        "accelerate_style": accelerate_style(spec),
        "gpus": [g.as_dict() for g in gpu_fit_table(spec, plan, precision_requested)],
        "notes": est.notes,
    }
    if tokens:
        report["time_cost"] = estimate_time_cost(spec, plan, tokens, gpu, epochs, mfu, price_per_gpu_hour).as_dict()
    return report


# =====================================================================================================================
# Pre-flight check (Train tab)
# =====================================================================================================================
@dataclass
class PreflightResult:
    ok: bool
    estimate_bytes: int
    free_bytes: Optional[int]
    device: str
    message: str


def _worker_device() -> tuple[str, Optional[int], bool]:
    """(device label, free bytes or None, bf16 supported) for the device a training worker would use."""
    try:
        import torch

        if torch.cuda.is_available():
            idx = torch.cuda.current_device()
            free, _total = torch.cuda.mem_get_info(idx)
            name = torch.cuda.get_device_name(idx)
            return f"cuda:{idx} ({name})", int(free), bool(torch.cuda.is_bf16_supported())
    except Exception:  # noqa: BLE001 - a broken driver must not stop the check; fall back to CPU
        pass
    try:
        import psutil

        return "cpu", int(psutil.virtual_memory().available), False
    except Exception:  # noqa: BLE001
        return "cpu", None, False


def preflight_check(config, free_bytes: Optional[int] = None) -> PreflightResult:
    """Estimate a TrainConfig's peak (config only, no weights) against the free memory of the worker's device."""
    device, detected_free, bf16_ok = _worker_device()
    if free_bytes is None:
        free_bytes = detected_free
    is_cpu = device == "cpu"
    precision = resolve_precision(config.precision, "cpu" if is_cpu else "cuda", bf16_ok)
    plan = TrainingPlan(
        method=config.method, precision=precision, optimizer="adamw", batch_size=config.batch_size,
        seq_len=config.max_length, gradient_checkpointing=config.gradient_checkpointing, attention="sdpa",
        lora_r=config.lora_r, lora_targets=tuple(config.lora_target_modules), grad_accum=config.grad_accum,
        device="cpu" if is_cpu else "cuda",
    )
    try:
        spec = load_model_spec(config.base_model)
        est = estimate_training_memory(spec, plan)
    except EstimateError as exc:
        return PreflightResult(True, 0, free_bytes, device, f"memory estimate unavailable ({exc}); starting anyway")
    need = est.peak_bytes
    if free_bytes is None:
        return PreflightResult(True, need, None, device,
                               f"estimated peak {need / GIB:.1f} GB; free memory on {device} could not be read")
    if need <= free_bytes:
        return PreflightResult(True, need, free_bytes, device,
                               f"estimated peak {need / GIB:.1f} GB fits the {free_bytes / GIB:.1f} GB free on {device}")
    fixes = suggest_changes(spec, plan, free_bytes)
    return PreflightResult(
        False, need, free_bytes, device,
        f"estimated peak {need / GIB:.1f} GB exceeds the {free_bytes / GIB:.1f} GB free on {device}: "
        + "; or ".join(fixes[:3]),
    )


# =====================================================================================================================
# CLI: python -m core estimate ...
# =====================================================================================================================
def _gb(n: Optional[float]) -> str:
    return "—" if n is None else f"{n / GIB:.2f} GB"


def register_cli(subparsers) -> None:
    """Add ``estimate`` to an argparse subparsers object (``python -m core estimate --model REF ...``)."""
    p = subparsers.add_parser("estimate", help="memory / GPU fit / time / cost estimate for fine-tuning a model",
                              description="Estimate training and inference memory from a model's config (no weights).")
    p.add_argument("--model", default="default", help="catalog name, 'default', a local model dir or a Hub id")
    p.add_argument("--method", default="lora", choices=list(METHODS))
    p.add_argument("--dtype", "--precision", dest="dtype", default="auto", choices=list(PRECISIONS))
    p.add_argument("--optimizer", default="adamw", choices=list(OPTIMIZERS))
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--attention", default="sdpa", choices=list(ATTENTIONS))
    p.add_argument("--lora-r", type=int, default=16)
    p.add_argument("--lora-targets", default="all-linear", help="comma-separated module names, or all-linear")
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--tokens", type=int, default=None, help="dataset tokens (for time and cost)")
    p.add_argument("--dataset", default=None, help="Data-tab dataset id: read its token count")
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--gpu", default="a100-80", help="GPU for time/cost: " + ", ".join(g.key for g in GPUS))
    p.add_argument("--mfu", type=float, default=DEFAULT_MFU)
    p.add_argument("--price", type=float, default=None, help="$ per GPU-hour (default: the GPU's on-demand price)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run_cli)


def run_cli(args) -> int:
    try:
        spec = load_model_spec(args.model)
        precision = resolve_precision(args.dtype, "cuda", True)
        plan = TrainingPlan(
            method=args.method, precision=precision, optimizer=args.optimizer, batch_size=args.batch_size,
            seq_len=args.seq_len, gradient_checkpointing=args.gradient_checkpointing, attention=args.attention,
            lora_r=args.lora_r, lora_targets=tuple(t.strip() for t in args.lora_targets.split(",")),
            grad_accum=args.grad_accum,
        )
        tokens = args.tokens
        if tokens is None and args.dataset:
            tokens = dataset_token_count(args.dataset)
            if tokens is None:
                raise EstimateError(f"dataset {args.dataset} has no token stats yet: compute them in the Data tab "
                                    "or pass --tokens")
        report = estimate_report(spec, plan, precision_requested=args.dtype, tokens=tokens, epochs=args.epochs,
                                 gpu=args.gpu, mfu=args.mfu, price_per_gpu_hour=args.price)
    except EstimateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
        return 0
    print(report["architecture"])
    print(f"params {report['params']:,}  trainable {report['trainable_params']:,}  ({plan.method}, {plan.precision}, "
          f"batch {plan.batch_size} × seq {plan.seq_len}{', checkpointing' if plan.gradient_checkpointing else ''})")
    for key, value in report["components"].items():
        print(f"  {key:<24} {_gb(value):>12}")
    print(f"peak {_gb(report['peak_bytes'])} (at: {report['peak_phase']});  inference {_gb(report['inference_bytes'])}")
    acc = report["accelerate_style"]
    print(f"accelerate-style: {acc['fp32_gb']:.2f} GB fp32 / {acc['adam_gb']:.2f} GB Adam (ignores {acc['ignores']})")
    for g in report["gpus"]:
        print(f"  {g['name']:<36} {g['verdict']:<6} {_gb(g['peak_bytes']):>10}  {g['advice']}")
    if "time_cost" in report:
        tc = report["time_cost"]
        print(f"time {tc['seconds'] / 3600:.2f} h on {tc['gpus']}× {tc['gpu']}, cost ${tc['cost_usd']:.2f}  ({tc['formula']})")
    return 0


if __name__ == "__main__":  # pragma: no cover - convenience
    parser = argparse.ArgumentParser(prog="python -m core.estimate")
    register_cli(parser.add_subparsers(dest="command", required=True))
    ns = parser.parse_args()
    raise SystemExit(ns.func(ns))
