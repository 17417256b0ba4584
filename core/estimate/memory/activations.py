"""Activations a training step keeps for backward: the bytes per token per decoder layer, term by term, for the
model's architecture, the method (full / LoRA) and the attention kernel.
"""
from __future__ import annotations

from core.estimate.memory.plan import TrainingPlan, _act_bytes
from core.estimate.spec import _NATIVE_ACTS, ModelSpec


def _activation_terms_per_token_layer(spec: ModelSpec, plan: TrainingPlan,
                                      adapted: set[str]) -> list[tuple[str, float, str]]:
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
        extra = " + a·h normed (weight grad)" if full else ""
        terms.append(("norms", n_norms * per, f"{n_norms}×(4·h fp32 input + 4 rsqrt{extra})"))
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
                      f"heads·s·(4 fp32 softmax{' + a cast' if a != 4 else ''}) = "
                      f"{spec.num_heads}·{s}·{4 + (a if a != 4 else 0)}"))
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
