"""Estimate tab: will it fit, how long, how much — every memory term shown with its formula.

Binds components to :mod:`core.estimate`; no ML and no SQL here.
"""
from __future__ import annotations

from dataclasses import replace

import gradio as gr

from core import estimate as est
from core.estimate.report import template_new_tokens
from ui.common import md_text, on_processes

GIB = est.GIB
COMPONENT_HEADERS = ["Component", "Bytes", "GB", "Alive during", "Formula"]
PHASE_HEADERS = ["Phase of a step", "Tensor bytes", "GB"]
INFERENCE_HEADERS = ["Component", "Bytes", "GB", "Formula"]
FIT_HEADERS = ["GPU / instance", "GPUs", "Precision", "Peak per GPU (GB)", "Card (GB)", "Fits?",
               "Sharded (FSDP) per GPU", "What to change"]
VERDICT_ICON = {"fits": "fits", "tight": "TIGHT", "no": "NO", None: ""}
NO_DATASET = "(type a token count)"


def _gb(n) -> str:
    return "" if n is None else f"{n / GIB:,.2f}"


def _dataset_choices() -> list[tuple[str, str]]:
    try:
        rows = est.list_datasets_with_tokens()
    except Exception:  # noqa: BLE001 - no database yet: the token box still works
        rows = []
    return [(NO_DATASET, "")] + [(label, str(ds_id)) for label, ds_id, _tokens in rows]


def _template_choices() -> list[tuple[str, str]]:
    """("model's own" + the built-in prompt templates with what they add to the vocabulary, value)."""
    from core.data.templates import TEMPLATES

    out = [("model's own (no new tokens)", "")]
    for t in TEMPLATES.values():
        n = len(t.special_tokens)
        out.append((f"{t.label.split(' (')[0]} ({f'+{n} new tokens' if n else 'no new tokens'})", t.name))
    return out


def _empty():
    return (gr.update(), [], [], [], [], "")


def run_estimate(catalog_model, model_ref, method, lora_r, lora_targets, optimizer, precision, batch_size, seq_len,
                 gradient_checkpointing, attention, inference_dtype, inference_tokens, dataset_id, tokens, epochs, gpu,
                 mfu, price, prompt_template="", num_processes=1, distributed="none"):
    """All outputs for one click: (summary md, components, phases, inference, fit table, time/cost md).
    ``num_processes`` / ``distributed``: the run split over several devices (ddp / fsdp) — the summary shows what
    each device must hold beside the one-device peak (several processes without a strategy: ddp, as in training)."""
    ref = (model_ref or "").strip() or (catalog_model or "").strip()
    try:
        spec = est.load_model_spec(ref)
        new_tokens = template_new_tokens(ref, prompt_template) if prompt_template else 0
        plan = est.TrainingPlan(
            method=method, precision=est.resolve_precision(precision, "cuda", True), optimizer=optimizer,
            batch_size=_as_int(batch_size, "batch size"), seq_len=_as_int(seq_len, "sequence length"),
            gradient_checkpointing=bool(gradient_checkpointing), attention=attention,
            lora_r=_as_int(lora_r, "LoRA rank"),
            lora_targets=tuple(t.strip() for t in (lora_targets or "all-linear").split(",") if t.strip()),
            new_tokens=new_tokens,
        )
        training = est.estimate_training_memory(spec, plan)
        processes = _as_int(num_processes or 1, "processes")
        strategy = "ddp" if processes > 1 and distributed in (None, "", "none") else (distributed or "none")
        if strategy not in est.DISTRIBUTED:
            raise est.EstimateError(f"distributed must be one of {', '.join(est.DISTRIBUTED)} (got {strategy!r})")
        per_device = (est.per_device_peak_bytes(training, strategy, processes, spec.num_layers) if processes > 1
                      else None)
        without = est.estimate_training_memory(spec, replace(plan, new_tokens=0)) if new_tokens else training
        inference = est.estimate_inference_memory(spec, inference_dtype, plan.batch_size,
                                                  _as_int(inference_tokens or plan.seq_len, "context length"),
                                                  plan.attention)
        fits = est.gpu_fit_table(spec, plan, precision)
        acc = est.accelerate_style(spec)
        counts = est.count_parameters(spec)
        time_md = _time_cost_md(spec, plan, dataset_id, tokens, epochs, gpu, mfu, price)
    except est.EstimateError as exc:
        gr.Warning(str(exc))
        return (f"### ⚠️ Cannot estimate\n{md_text(exc)}", [], [], [], [], "")
    except Exception as exc:  # noqa: BLE001 - never a traceback in the page
        gr.Warning(f"estimate failed: {exc}")
        return (f"### ⚠️ Estimate failed\n{type(exc).__name__}: {md_text(exc)}", [], [], [], [], "")

    moe = (f" · active per token **{counts.active:,}** (experts {counts.experts_active:,} of {counts.experts_total:,})"
           if spec.is_moe else "")
    notes = "".join(f"\n- {n}" for n in training.notes)
    template_md = ""
    if prompt_template:
        how = ("trained as ordinary parameters" if plan.method == "full" else
               "PEFT trainable tokens: merged V×h weight copies and dense V×h gradients each step")
        template_md = (f"**Prompt template** {prompt_template}: "
                       + (f"+{new_tokens} new-token embedding row(s), {how}; peak "
                          f"+{_gb(training.peak_bytes - without.peak_bytes)} GB over no new tokens\n\n"
                          if new_tokens else "no new tokens (the vocabulary has them, or it writes plain text)\n\n"))
    summary = (
        f"### {spec.name}\n{spec.describe()}\n\n"
        f"**Parameters** {counts.total:,}{moe} · embeddings {counts.embeddings:,} · attention {counts.attention:,} · "
        f"MLP {counts.mlp + counts.experts_total:,} · norms {counts.norms:,} · lm_head "
        f"{'tied to the embeddings' if counts.lm_head_tied else f'{counts.lm_head:,}'}\n\n"
        f"**Trainable** {training.trainable_params:,} ({est.METHOD_LABELS[plan.method]}, {plan.precision}, "
        f"batch {plan.batch_size} × {plan.seq_len} tokens"
        f"{', gradient checkpointing' if plan.gradient_checkpointing else ''})\n\n"
        f"{template_md}"
        f"| | GB |\n|---|---:|\n"
        f"| **Training peak (ours)** — at *{training.peak_phase}* | **{_gb(training.peak_bytes)}** |\n"
        f"| ↳ tensors (what `torch.cuda.max_memory_allocated` sees) | {_gb(training.peak_tensor_bytes)} |\n"
        f"| ↳ CUDA context + allocator slack | {_gb(training.overhead_bytes)} |\n"
        + (f"| **Training peak per device** — {est.per_device_note(strategy, processes)} | **{_gb(per_device)}** |\n"
           if per_device is not None else "") +
        f"| accelerate-style: model fp32 | {acc['fp32_gb']:.2f} |\n"
        f"| accelerate-style: training using Adam | {acc['adam_gb']:.2f} |\n"
        f"| Inference ({inference_dtype}) | {_gb(inference.peak_bytes)} |\n\n"
        f"<sub>accelerate-style counts {acc['params_counted']:,} params "
        f"({'with' if acc['includes_lm_head'] else 'without'} the lm_head, as `accelerate estimate-memory` builds "
        f"the model) and ignores {acc['ignores']}.</sub>{notes}"
    )
    components = [[c.label, f"{c.bytes:,}", _gb(c.bytes), c.phases, c.formula] for c in training.components]
    phases = [[("▶ " if k == training.peak_phase else "") + k, f"{v:,}", _gb(v)] for k, v in training.phases.items()]
    inf_rows = [[c.label, f"{c.bytes:,}", _gb(c.bytes), c.formula] for c in inference.components]
    inf_rows.append(["Total", f"{inference.peak_bytes:,}", _gb(inference.peak_bytes), ""])
    fit_rows = [[f.name, f.gpus, f.precision, _gb(f.peak_bytes), f"{est.get_gpu(f.gpu).usable_bytes / GIB:.1f}",
                 VERDICT_ICON[f.verdict],
                 (f"{_gb(f.sharded_peak_bytes)} {VERDICT_ICON[f.sharded_verdict]}" if f.sharded_peak_bytes else ""),
                 f.advice] for f in fits]
    return summary, components, phases, inf_rows, fit_rows, time_md


def _as_int(value, label: str) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise est.EstimateError(f"{label} must be a number (got {value!r})") from None
    if number != int(number) or number < 1:
        raise est.EstimateError(f"{label} must be a whole number of at least 1 (got {value!r})")
    return int(number)


def _time_cost_md(spec, plan, dataset_id, tokens, epochs, gpu, mfu, price) -> str:
    source = "typed"
    count = None
    if dataset_id:
        count = est.dataset_token_count(dataset_id)
        source = f"dataset #{dataset_id}"
        if count is None and not tokens:
            return (f"Dataset #{dataset_id} has no token stats yet: compute them in the Data tab, "
                    "or type a token count.")
    if count is None:
        if not tokens:
            return "Pick a dataset (Data tab) or type a token count to see time and cost."
        count = _as_int(tokens, "token count")
        source = "typed"
    price_value = None if price in (None, "") or float(price) == 0 else float(price)
    tc = est.estimate_time_cost(spec, plan, count, gpu, float(epochs or 1), float(mfu), price_value)
    hours = tc.seconds / 3600
    return (
        f"**{count:,} tokens** ({source}) × {tc.epochs:g} epoch(s) on **{tc.gpus}× {est.get_gpu(tc.gpu).name}**: "
        f"≈ **{hours:,.2f} h**, **${tc.cost_usd:,.2f}**\n\n"
        f"<sub>{tc.formula}. k = {tc.flops_per_token_param} (6 full, 8 full + recompute, ~4 LoRA/QLoRA, 6 with "
        f"recompute); MFU {tc.mfu:.0%} is an assumption — 30–50 % is typical for dense bf16 training, less for QLoRA "
        f"(dequantisation) and short sequences.</sub>"
    )


def build_tab() -> None:
    """The Estimate tab's components and wiring (called inside ``with gr.Tab("Estimate"):``)."""
    gr.Markdown("Will it fit, how long, how much — before spending money. Every term below is shown with its formula; "
                "nothing loads model weights (Hub ids fetch only `config.json`).")
    with gr.Row():
        catalog = gr.Dropdown(["default"] + est.catalog_names(), value="default", label="Model (offline catalog)",
                              allow_custom_value=False, scale=2)
        model_ref = gr.Textbox(label="…or a Hub id / local folder",
                               placeholder="e.g. Qwen/Qwen2.5-1.5B or /models/my-llm", scale=3)
    with gr.Row():
        method = gr.Radio([(est.METHOD_LABELS[m], m) for m in est.METHODS], value="lora", label="Method")
        optimizer = gr.Dropdown([(est.OPTIMIZER_LABELS[o], o) for o in est.OPTIMIZERS], value="adamw",
                                label="Optimizer")
        precision = gr.Dropdown(list(est.PRECISIONS), value="auto", label="Precision (auto: bf16, fp16 on T4/V100)")
    with gr.Row():
        lora_r = gr.Number(16, label="LoRA rank r", precision=0)
        lora_targets = gr.Textbox("all-linear", label="LoRA target modules (comma-separated)")
        batch_size = gr.Number(4, label="Batch size (per GPU)", precision=0)
        seq_len = gr.Number(1024, label="Sequence length", precision=0)
    with gr.Row():
        checkpointing = gr.Checkbox(False, label="Gradient checkpointing")
        attention = gr.Radio(list(est.ATTENTIONS), value="sdpa", label="Attention")
        inference_dtype = gr.Dropdown(list(est.INFERENCE_DTYPES), value="bf16", label="Inference dtype")
        inference_tokens = gr.Number(4096, label="Inference context (tokens)", precision=0)
        prompt_template = gr.Dropdown(_template_choices(), value="", label="Prompt template (base models)",
                                      info="a template's new tokens grow the vocabulary; LoRA trains their rows "
                                           "with PEFT trainable tokens")
    with gr.Row():
        num_processes = gr.Number(1, label="Processes (devices)", precision=0, minimum=1,
                                  info="one per GPU (CPU processes on a host without one)")
        distributed = gr.Radio(list(est.DISTRIBUTED), value="none", label="Distributed",
                               info="ddp: a whole copy per device; fsdp: sharded (less memory per device)")
    with gr.Accordion("Time and cost", open=True):
        with gr.Row():
            dataset = gr.Dropdown(_dataset_choices(), value="", label="Dataset (Data tab)", scale=3)
            refresh = gr.Button("↻", scale=0, min_width=40)
            tokens = gr.Number(None, label="…or tokens per epoch", precision=0)
            epochs = gr.Number(1, label="Epochs")
        with gr.Row():
            gpu = gr.Dropdown([(g.name, g.key) for g in est.GPUS], value="a100-80", label="GPU for time/cost")
            mfu = gr.Slider(0.05, 0.8, value=est.DEFAULT_MFU, step=0.01, label="MFU assumption")
            price = gr.Number(None, label="$ per GPU-hour (0: on-demand list price)")
    go = gr.Button("Estimate", variant="primary")
    summary = gr.Markdown()
    time_cost = gr.Markdown()
    with gr.Accordion("Training memory components (formula per term)", open=True):
        components = gr.Dataframe(headers=COMPONENT_HEADERS, wrap=True, interactive=False)
        phases = gr.Dataframe(headers=PHASE_HEADERS, interactive=False,
                              label="Peak = the largest of these phases, not the sum of the components")
    with gr.Accordion("GPU fit", open=True):
        fit = gr.Dataframe(headers=FIT_HEADERS, wrap=True, interactive=False)
    with gr.Accordion("Inference memory", open=False):
        inference = gr.Dataframe(headers=INFERENCE_HEADERS, wrap=True, interactive=False)

    inputs = [catalog, model_ref, method, lora_r, lora_targets, optimizer, precision, batch_size, seq_len,
              checkpointing, attention, inference_dtype, inference_tokens, dataset, tokens, epochs, gpu, mfu, price,
              prompt_template, num_processes, distributed]
    outputs = [summary, components, phases, inference, fit, time_cost]
    go.click(run_estimate, inputs, outputs)
    num_processes.change(on_processes, [num_processes, distributed], [distributed], show_progress="hidden")
    refresh.click(refresh_datasets, dataset, dataset)
    return refresh_datasets, [dataset], [dataset]  # app.py runs it when a page (or the tab) opens: never stale


def refresh_datasets(current: str | None = None):
    """The Dataset list as the database has it now (a reload, an import elsewhere); the choice stays if listed."""
    choices = _dataset_choices()
    keep = current if current in {v for _, v in choices} else ""
    return gr.update(choices=choices, value=keep)
