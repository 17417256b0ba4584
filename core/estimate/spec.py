"""A model's architecture as numbers: :class:`ModelSpec` from a config, every parameter tensor, exact counts.

Pure: no torch, no database, no network. Counts match ``model.num_parameters()`` exactly for the supported families
(llama-like, mixtral, qwen2/3, phi3, phi, gpt2, falcon).
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

GIB = 1024**3
MIB = 1024**2


class EstimateError(ValueError):
    """Input a person can fix: an unknown architecture field, an unresolvable model, a non-positive size."""


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
            raise EstimateError(f"hidden size {h} is not divisible by the {heads} attention heads and no head_dim "
                                "is set")
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
            norm_kind="layernorm", norms_per_layer=1, mlp_kind="plain",
            hidden_act=str(cfg.get("hidden_act") or "gelu_new"),
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
        # MoE routers and experts are not nn.Linear modules in transformers' MoE layers: all-linear adapts neither
        return [p for p in linears if p.kind == "linear"]
    chosen = [p for p in linears if p.module in targets or p.module.split(".")[-1] in targets]
    if not chosen:
        names = sorted({p.module for p in linears})
        raise EstimateError(f"LoRA targets {targets} match no linear layer of {spec.name}; its linears are: "
                            f"{', '.join(names)}")
    return chosen


def count_lora_parameters(spec: ModelSpec, r: int, targets: Iterable[str]) -> int:
    """r·(in + out) per adapted linear (A: r×in, B: out×r), times the layer count."""
    if r < 1:
        raise EstimateError(f"LoRA rank must be at least 1 (got {r})")
    return sum(r * (p.shape[0] + p.shape[1]) * p.count for p in _targeted_linears(spec, targets))
