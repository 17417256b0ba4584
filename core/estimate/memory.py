"""Training and inference memory of a causal LM from its :class:`ModelSpec`: pure functions, every term shown.

:func:`estimate_training_memory` models one optimizer step as phases (forward, loss, backward, optimizer step). Each
:class:`Component` says how many bytes it holds in each phase; a phase's total is the sum over the components, and
the *peak* is the largest phase (not the sum of everything). :func:`estimate_inference_memory` and
:func:`accelerate_style` (what ``accelerate estimate-memory`` prints) follow. No torch, no database.

Byte conventions: ``*_bytes`` are plain bytes; "GB" shown to people is GiB (2**30), like accelerate and nvidia-smi.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from core.estimate.spec import (
    _NATIVE_ACTS,
    GIB,
    MIB,
    EstimateError,
    ModelSpec,
    _targeted_linears,
    count_parameters,
    param_inventory,
)

METHODS = ("full", "lora", "qlora", "int8")
METHOD_LABELS = {"full": "Full fine-tune", "lora": "LoRA", "qlora": "QLoRA (4-bit NF4)",
                 "int8": "LoRA on 8-bit (LLM.int8)"}
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
    # embedding rows a prompt template adds / trains (core.data.templates): they grow the vocabulary; LoRA/QLoRA
    # train them with PEFT trainable tokens (core.train.model), a full fine-tune as ordinary parameters
    new_tokens: int = 0

    def validated(self) -> TrainingPlan:
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
        if not isinstance(self.new_tokens, int) or isinstance(self.new_tokens, bool) or self.new_tokens < 0:
            raise EstimateError(f"new tokens must be a whole number of at least 0 (got {self.new_tokens!r})")
        return replace(self, lora_targets=tuple(self.lora_targets))


def resolve_precision(precision: str, device: str = "cuda", bf16_supported: bool = True) -> str:
    """'auto' follows the device: bf16 where supported, fp16 on older GPUs (T4, V100), fp32 on CPU."""
    if precision and precision != "auto":
        return precision
    if device == "cpu":
        return "fp32"
    return "bf16" if bf16_supported else "fp16"


FORWARD = "forward (end, loss computed)"
BACKWARD_START = "backward start (loss gradient)"
BACKWARD = "backward (lm_head / first layers)"
BACKWARD_END = "backward end (all gradients)"
OPTIMIZER_STEP = "optimizer step"
STEP_PHASES = (FORWARD, BACKWARD_START, BACKWARD, BACKWARD_END, OPTIMIZER_STEP)


@dataclass
class Component:
    key: str
    label: str
    bytes: int  # the most it holds at any phase (what the table shows)
    formula: str
    phases: str = ""  # when it is alive, in words, e.g. "all" or "forward/backward"
    by_phase: dict[str, float] = field(default_factory=dict)  # bytes it holds in each step phase (tensors only)

    @property
    def gib(self) -> float:
        return self.bytes / GIB


def _alive(value: float, *phases: str) -> dict[str, float]:
    return dict.fromkeys(phases or STEP_PHASES, value)


def phase_totals(components: list[Component]) -> dict[str, int]:
    """Tensor bytes alive in each phase = the sum over the components of what each holds then."""
    return {p: int(sum(c.by_phase.get(p, 0) for c in components)) for p in STEP_PHASES}


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


def _optimizer_state_bytes(plan: TrainingPlan, trainable: list[tuple[tuple[int, ...], int]],
                           param_bytes: int) -> tuple[int, str]:
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
    n_new = plan.new_tokens
    base_vocab = spec.vocab_size
    if n_new:  # the template's tokens grow the vocabulary (core.data.templates.grow_vocab): V rows → V + n
        spec = replace(spec, vocab_size=spec.vocab_size + n_new)
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
        weight_formula = (f"{linear_params:,} linear params × 1 B + 4 B per output row (SCB) + {other_params:,} "
                          f"other × {cb} B")
    comps.append(Component("weights", "Model weights", int(weight_bytes), weight_formula, "all",
                           _alive(weight_bytes)))

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
                               f"4 B × r·(in + out) per adapted linear = 4 × {trainable:,}", "all",
                               _alive(4 * trainable)))
    if plan.method == "full" and plan.precision == "fp16":
        comps.append(Component("autocast_weight_copies", "fp16 autocast weight copies", 2 * linear_params,
                               "2 B × linear params (cast once per forward, kept for backward)", "forward/backward",
                               _alive(2 * linear_params, FORWARD, BACKWARD_START, BACKWARD, BACKWARD_END)))

    # --- gradients
    grad_bytes = train_param_bytes * trainable
    carried_grads = grad_bytes if plan.grad_accum > 1 else 0  # grads from earlier micro-batches
    head_grad = train_param_bytes * V * h if plan.method == "full" else 0  # lm_head's, first in backward
    comps.append(Component("gradients", "Gradients", int(grad_bytes),
                           f"{train_param_bytes} B × {trainable:,} trainable params", "backward end → optimizer step",
                           {FORWARD: carried_grads, BACKWARD_START: carried_grads, BACKWARD: carried_grads,
                            BACKWARD_END: grad_bytes, OPTIMIZER_STEP: grad_bytes}))
    if head_grad:
        comps.append(Component("lm_head_grad", "lm_head gradient (first in backward)", int(head_grad),
                               f"{train_param_bytes}·V·h = {train_param_bytes}·{V}·{h}: computed before the layers' "
                               "gradients (a fresh tensor even when earlier micro-batches' are carried)", "backward",
                               _alive(head_grad, BACKWARD)))

    # --- optimizer
    opt_bytes, opt_formula = _optimizer_state_bytes(plan, trainable_shapes, train_param_bytes)
    # optimizer states exist during forward/backward too, from the second step on
    comps.append(Component("optimizer_states", f"Optimizer states ({OPTIMIZER_LABELS[plan.optimizer]})", int(opt_bytes),
                           opt_formula, "all (after the first step)", _alive(opt_bytes)))

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
    # checkpointing keeps the layer inputs until the end of backward; without it everything is freed by then
    kept_to_end = L * a * h * T if plan.gradient_checkpointing else 0
    comps.append(Component("activations", "Activations kept for backward", int(saved), act_formula,
                           "forward → backward",
                           {**_alive(saved, FORWARD, BACKWARD_START, BACKWARD), BACKWARD_END: kept_to_end}))
    if recompute:
        comps.append(Component("recompute", "Recomputed layer (checkpointing)", int(recompute),
                               f"one layer's activations: tokens·{per_token_layer:,.0f} B", "backward",
                               _alive(recompute, BACKWARD, BACKWARD_END)))
    if eager_mask:
        notes.append("eager attention materialises the b·s² mask and per-layer heads·s² probabilities")

    # --- logits / cross-entropy
    ce_fwd = (a + (4 if a != 4 else 0) + 4) * V * T
    ce_bwd = 12 * V * T
    comps.append(Component("logits_loss", "Logits + cross-entropy peak", int(ce_bwd),
                           f"12·b·s·V = 12·{T}·{V}: fp32 log-softmax output + its gradient + the logits gradient "
                           f"(forward holds {a + (4 if a != 4 else 0) + 4}·b·s·V)", "loss forward/backward",
                           {FORWARD: ce_fwd, BACKWARD_START: ce_bwd, BACKWARD: (4 + a) * V * T}))

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
                               "backward end", _alive(tied_grad_sum, BACKWARD_END)))
    comps.append(Component("transient", "Backward workspace (largest op)", int(bwd_transient),
                           f"{a}·tokens·(3·i + 3·h): grads of the MLP intermediates and of the residual stream"
                           + (" + one dequantised weight" if plan.method in ("qlora", "int8") else ""), "backward",
                           _alive(bwd_transient, BACKWARD, BACKWARD_END)))

    # --- new-token embedding rows (a prompt template's special tokens)
    token_params = 0
    if n_new and plan.method == "full":
        rows = n_new * h * (1 if spec.tie_word_embeddings else 2)
        per = (weight_bytes + grad_bytes + opt_bytes) / max(counts.total, 1)
        notes.append(f"{n_new} new token(s) grow the vocabulary {base_vocab:,} → {V:,} (at most): {rows:,} embedding"
                     f"{'' if spec.tie_word_embeddings else ' + lm_head'} parameters trained like the rest "
                     f"(≈{rows * per / MIB:,.1f} MiB of weights, gradients and optimizer states, counted above)")
    elif n_new:
        token_comps, token_params = _trainable_tokens_components(spec, plan, n_new, cb, T)
        comps += token_comps
        copies = ("the tied embedding for the embedding and for the lm_head" if spec.tie_word_embeddings
                  else "the embedding and of the lm_head")
        notes.append(f"{n_new} new-token row(s) (counted as growing the vocabulary {base_vocab:,} → {V:,}; a "
                     "template token the vocabulary already has is trained in place); PEFT trainable tokens "
                     f"train just those rows but build a merged V×h copy of {copies} every step, and a dense V×h "
                     "gradient for each (the lm_head's is one more b·s·V·h matmul per step)")

    # --- phases: each phase's total is the sum of what the components hold then
    phases = phase_totals(comps)
    peak_phase = max(phases, key=phases.get)
    peak_tensor = phases[peak_phase]
    overhead = 0
    if plan.device != "cpu":
        persistent = weight_bytes + (4 * trainable if plan.method != "full" else 0) + opt_bytes
        slack = int(ALLOCATOR_SLACK_FRACTION * max(peak_tensor - persistent, 0) + 0.02 * persistent)
        comps.append(Component("cuda_context", "CUDA context", CUDA_CONTEXT_BYTES,
                               "fixed ~512 MiB (context, cuBLAS/cuDNN handles; 300-900 MiB in practice)", "all"))
        comps.append(Component("allocator_slack", "Allocator slack", slack,
                               f"{ALLOCATOR_SLACK_FRACTION:.0%} of the per-step (non-persistent) tensors + 2% of "
                               "weights and optimizer states (caching-allocator fragmentation)", "at peak"))
        overhead = CUDA_CONTEXT_BYTES + slack
    if plan.optimizer.startswith("paged"):
        notes.append("paged optimizers can move states to CPU RAM under pressure: the peak may fit a little above "
                     "the card")
    if spec.is_moe:
        notes.append(f"MoE: all {spec.num_experts} experts are stored; compute uses {spec.experts_per_token} per token")
    return MemoryEstimate(
        components=comps, phases=phases, peak_phase=peak_phase,
        peak_tensor_bytes=peak_tensor, overhead_bytes=int(overhead), peak_bytes=int(peak_tensor + overhead),
        params=counts.total, trainable_params=int(trainable + token_params), notes=notes,
    )


def _trainable_tokens_components(spec: ModelSpec, plan: TrainingPlan, n_new: int, cb: int,
                                 tokens: int) -> tuple[list[Component], int]:
    """What PEFT's trainable tokens (``LoraConfig(trainable_token_indices=...)``, peft/tuners/trainable_tokens) hold,
    for LoRA/QLoRA/int8 runs whose template adds tokens (the worker targets the input embedding, and the lm_head
    when untied; with tied weights PEFT wraps the lm_head with a tied copy of the embedding's adapter).

    Each wrapped layer's forward builds ``W = base.weight.index_copy(0, rows, delta)``: a full V×h copy in the
    weight dtype. The embedding's is used by ``F.embedding`` and freed at once, but its backward produces a dense
    V×h gradient for W (end of backward) before ``index_copy``'s backward keeps the n rows. The lm_head's copy is
    saved by ``F.linear`` for backward (forward → lm_head backward), as is the lm_head's input (its weight now needs
    a gradient), and the lm_head backward adds a dense V×h gradient next to it. The n×h delta rows (one set per
    adapter: 1 tied, 2 untied) are fp32 (peft upcasts adapter weights) with an fp32 copy of the originals, an fp32
    gradient and the optimizer's states. Returns (components, trainable delta parameters)."""
    V, h = spec.vocab_size, spec.hidden_size
    a = _act_bytes(plan.precision)
    sets = 1 if spec.tie_word_embeddings else 2
    delta = n_new * h * sets
    opt, _ = _optimizer_state_bytes(plan, [((n_new, h), sets)], 4)
    kept = 4 * delta + 4 * delta + opt  # fp32 delta + fp32 originals buffer + states
    grads = 4 * delta
    carried = grads if plan.grad_accum > 1 else 0
    rows_comp = Component(
        "new_token_rows", f"New-token embedding rows ({n_new} tokens, trainable tokens)", int(kept + grads),
        f"{n_new}·h·{sets} set{'s' if sets > 1 else ''} ({'tied' if sets == 1 else 'embedding + lm_head'}) = "
        f"{delta:,} fp32 values × (4 B delta + 4 B originals + 4 B grad) + {opt:,} B optimizer states",
        "all (gradient from backward on)",
        {FORWARD: kept + carried, BACKWARD_START: kept + carried, BACKWARD: kept + grads,
         BACKWARD_END: kept + grads, OPTIMIZER_STEP: kept + grads})
    merged = cb * V * h
    head_input = a * h * tokens if a == 4 else 0  # under autocast the cast input copy is already counted
    merged_comp = Component(
        "new_token_merged_copies", "Trainable-tokens merged V×h weight copies + dense V×h gradients",
        int(2 * merged + head_input),
        f"{cb}·V·h = {cb}·{V}·{h} per copy: the lm_head's merged copy is saved forward → lm_head backward "
        f"(2 copies with its dense gradient then); the embedding's dense gradient at the end of backward"
        + (f"; + lm_head input {a}·h·tokens kept for its weight gradient" if head_input else ""),
        "forward → backward",
        {FORWARD: merged + head_input, BACKWARD_START: merged + head_input, BACKWARD: 2 * merged + head_input,
         BACKWARD_END: merged})
    return [rows_comp, merged_comp], delta


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
