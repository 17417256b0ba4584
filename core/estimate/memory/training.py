"""Peak memory of one training step (:func:`estimate_training_memory`): weights, adapters, gradients, optimizer
states, activations, logits, backward transients and a template's new-token rows, each a :class:`Component` held
in some phases; the peak is the largest phase, plus the CUDA context and allocator slack on a GPU.
"""
from __future__ import annotations

import math
from dataclasses import replace

from core.estimate.memory.activations import _activation_terms_per_token_layer
from core.estimate.memory.components import (
    ALLOCATOR_SLACK_FRACTION,
    BACKWARD,
    BACKWARD_END,
    BACKWARD_START,
    CUDA_CONTEXT_BYTES,
    FORWARD,
    NF4_BLOCK,
    NF4_DQ_BLOCK,
    OPTIMIZER_STEP,
    Component,
    MemoryEstimate,
    _alive,
    phase_totals,
)
from core.estimate.memory.optimizer import _optimizer_state_bytes
from core.estimate.memory.plan import OPTIMIZER_LABELS, TrainingPlan, _act_bytes
from core.estimate.spec import MIB, ModelSpec, _targeted_linears, count_parameters, param_inventory


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
