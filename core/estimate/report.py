"""The estimate as one report (UI and CLI), the Train tab's pre-flight check, and ``python -m core estimate``."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

from core.data.formats import PREFERENCE_OBJECTIVES
from core.data.templates import TEMPLATES, apply_template, normalise_choice
from core.estimate.device import worker_device
from core.estimate.gpus import DEFAULT_MFU, GPUS, estimate_time_cost, gpu_fit_table, suggest_changes
from core.estimate.lookup import dataset_token_count, load_model_spec
from core.estimate.memory import (
    ATTENTIONS,
    DISTRIBUTED,
    METHODS,
    OPTIMIZERS,
    PRECISIONS,
    TrainingPlan,
    accelerate_style,
    estimate_inference_memory,
    estimate_training_memory,
    per_device_note,
    per_device_peak_bytes,
    resolve_precision,
)
from core.estimate.spec import GIB, EstimateError, ModelSpec, count_parameters
from core.models import load_tokenizer, resolve_model
from core.text import fail, print_json


def estimate_report(spec: ModelSpec, plan: TrainingPlan, *, precision_requested: str = "auto",
                    inference_dtype: Optional[str] = None, inference_tokens: Optional[int] = None,
                    tokens: Optional[int] = None, epochs: float = 1.0, gpu: str = "a100-80", mfu: float = DEFAULT_MFU,
                    price_per_gpu_hour: Optional[float] = None, num_processes: int = 1,
                    distributed: str = "none") -> dict:
    """The whole estimate as a JSON-able dict (stable keys; bytes are ints). ``num_processes`` / ``distributed``:
    the run split over several devices — ``per_device_peak_bytes`` is what each must hold."""
    est = estimate_training_memory(spec, plan)
    try:
        per_device = per_device_peak_bytes(est, distributed, num_processes, spec.num_layers)
    except ValueError as exc:
        raise EstimateError(str(exc)) from None
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
        "num_processes": num_processes,
        "distributed": distributed,
        "per_device_peak_bytes": per_device,
        "per_device_note": per_device_note(distributed, num_processes),
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


@dataclass
class PreflightResult:
    ok: bool
    estimate_bytes: int
    free_bytes: Optional[int]
    device: str
    message: str


def _local_path(ref: str) -> Optional[str]:
    """The folder of a model reference when it is on this machine already (default or a local dir), else None:
    an estimate never downloads a tokenizer."""
    resolved = resolve_model(ref, prepare_default=False)
    if resolved.kind == "hub":
        return None
    path = Path(resolved.path)
    return str(path) if (path / "config.json").is_file() else None


def template_new_tokens(base_model: Optional[str], chat_template: Optional[str]) -> int:
    """How many embedding rows a prompt template makes the worker train (``TrainingPlan.new_tokens``).

    As core.train.model does: the template's tokens missing from the vocabulary, plus — when the base model had no
    chat template of its own — the template tokens it already has (untrained rows, Llama-3 base's ``<|eot_id|>``).
    Exact when the base model is on this machine (its tokenizer is read, nothing downloaded); otherwise a built-in
    template counts all its special tokens and a template copied from another model counts 0. Never raises."""
    try:
        choice = normalise_choice(chat_template)
    except Exception:  # noqa: BLE001 - the estimate must not break on a template question
        return 0
    if choice is None:
        return 0
    fallback = len(TEMPLATES[choice].special_tokens) if choice in TEMPLATES else 0
    try:
        path = _local_path(base_model or "default")
        if path is None or (choice not in TEMPLATES and _local_path(choice) is None):
            return fallback
        tok = load_tokenizer(path)
        base_had_template = bool(getattr(tok, "chat_template", None))
        applied = apply_template(tok, choice if choice in TEMPLATES else _local_path(choice))
        if applied is None:
            return 0
        wanted = applied.new_tokens + ([] if base_had_template else applied.template_tokens)
        return len({int(tok.convert_tokens_to_ids(t)) for t in wanted})
    except Exception:  # noqa: BLE001 - unreadable tokenizer, template error: the worker will say; estimate on
        return fallback


def plan_for_config(config, device: Optional[str] = None, bf16_supported: Optional[bool] = None) -> TrainingPlan:
    """The estimator's plan for a TrainConfig, on the worker's device (probed when not given). Gradient
    checkpointing is taken as configured — the worker honours it for every method (core.train.setup). A prompt
    template (``config.chat_template``) adds its new-token rows (:func:`template_new_tokens`). Preference tuning
    (DPO, ORPO) puts both sequences of each pair through the model in one step: twice the sequences per batch. GRPO
    trains on ``num_generations`` sampled answers per prompt, each the prompt plus up to ``max_completion_length``
    new tokens."""
    if device is None or bf16_supported is None:
        probed, _free, bf16_ok = worker_device()
        device = device or ("cpu" if probed == "cpu" else "cuda")
        bf16_supported = bf16_ok if bf16_supported is None else bf16_supported
    precision = resolve_precision(config.precision, device, bf16_supported)
    objective = getattr(config, "objective", "sft")
    batch, seq_len = config.batch_size, config.max_length
    if objective in PREFERENCE_OBJECTIVES:
        batch *= 2
    elif objective == "grpo":
        batch *= config.num_generations
        seq_len += config.max_completion_length
    return TrainingPlan(
        method=config.method, precision=precision, optimizer="adamw", batch_size=batch, seq_len=seq_len,
        gradient_checkpointing=config.gradient_checkpointing, attention="sdpa",
        lora_r=config.lora_r, lora_targets=tuple(config.lora_target_modules), grad_accum=config.grad_accum,
        device=device,
        new_tokens=template_new_tokens(getattr(config, "base_model", None), getattr(config, "chat_template", None)),
    )


def preflight_check(config, free_bytes: Optional[int] = None) -> PreflightResult:
    """Estimate a TrainConfig's peak (config only, no weights) against the free memory of the worker's device."""
    device, detected_free, bf16_ok = worker_device()
    if free_bytes is None:
        free_bytes = detected_free
    plan = plan_for_config(config, device="cpu" if device == "cpu" else "cuda", bf16_supported=bf16_ok)
    n, how = getattr(config, "num_processes", 1), getattr(config, "distributed", "none")
    try:
        spec = load_model_spec(config.base_model)
        est = estimate_training_memory(spec, plan)
        need = per_device_peak_bytes(est, how, n, spec.num_layers)
    except (EstimateError, ValueError) as exc:
        return PreflightResult(True, 0, free_bytes, device, f"memory estimate unavailable ({exc}); starting anyway")
    if n > 1:
        if device == "cpu":  # CPU processes share the host's memory
            need *= n
            device = f"cpu ({n} processes, {_gb(need // n)} each, {how})"
        else:
            device = f"{device} (per device, {how} over {n})"
    if free_bytes is None:
        return PreflightResult(True, need, None, device,
                               f"estimated peak {need / GIB:.1f} GB; free memory on {device} could not be read")
    if need <= free_bytes:
        return PreflightResult(True, need, free_bytes, device,
                               f"estimated peak {need / GIB:.1f} GB fits the {free_bytes / GIB:.1f} GB free on "
                               f"{device}")
    fixes = suggest_changes(spec, plan, free_bytes)
    return PreflightResult(
        False, need, free_bytes, device,
        f"estimated peak {need / GIB:.1f} GB exceeds the {free_bytes / GIB:.1f} GB free on {device}: "
        + "; or ".join(fixes[:3]),
    )


def _gb(n: Optional[float]) -> str:
    return "—" if n is None else f"{n / GIB:.2f} GB"


PRECISION_SPELLINGS = {"float32": "fp32", "fp32": "fp32", "f32": "fp32", "float": "fp32",
                       "bfloat16": "bf16", "bf16": "bf16", "float16": "fp16", "fp16": "fp16", "f16": "fp16",
                       "half": "fp16", "auto": "auto"}


def precision_arg(text: str) -> str:
    """``--dtype`` as people bring it from torch (``torch.float32``) and ``accelerate estimate-memory``."""
    import argparse

    key = text.strip().lower().removeprefix("torch.")
    if key not in PRECISION_SPELLINGS or PRECISION_SPELLINGS[key] not in PRECISIONS:
        raise argparse.ArgumentTypeError(f"unknown dtype '{text}': use one of {', '.join(PRECISIONS)} "
                                         "(or float32, bfloat16, float16)")
    return PRECISION_SPELLINGS[key]


def register_cli(subparsers) -> None:
    """Add ``estimate`` to an argparse subparsers object (``python -m core estimate --model REF ...``)."""
    p = subparsers.add_parser("estimate", help="memory / GPU fit / time / cost estimate for fine-tuning a model",
                              description="Estimate training and inference memory from a model's config (no weights).")
    p.add_argument("--model", default="default", help="catalog name, 'default', a local model dir or a Hub id")
    p.add_argument("--method", default="lora", choices=list(METHODS))
    p.add_argument("--dtype", "--precision", dest="dtype", default="auto", type=precision_arg,
                   help="auto | fp32 | bf16 | fp16 (also torch's and accelerate's float32 / bfloat16 / float16)")
    p.add_argument("--optimizer", default="adamw", choices=list(OPTIMIZERS))
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--attention", default="sdpa", choices=list(ATTENTIONS))
    p.add_argument("--lora-r", type=int, default=16)
    p.add_argument("--lora-targets", default="all-linear", help="comma-separated module names, or all-linear")
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--new-tokens", type=int, default=None,
                   help="embedding rows a prompt template adds and trains (LoRA/QLoRA: PEFT trainable tokens)")
    p.add_argument("--chat-template", default=None,
                   help="prompt template for a base model (chatml, llama3, mistral, alpaca, or a model to copy "
                        "from): counts its new tokens, as --new-tokens")
    p.add_argument("--tokens", type=int, default=None, help="dataset tokens (for time and cost)")
    p.add_argument("--dataset", default=None, help="Data-tab dataset id: read its token count")
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--gpu", default="a100-80", help="GPU for time/cost: " + ", ".join(g.key for g in GPUS))
    p.add_argument("--mfu", type=float, default=DEFAULT_MFU)
    p.add_argument("--price", type=float, default=None, help="$ per GPU-hour (default: the GPU's on-demand price)")
    p.add_argument("--num-processes", type=int, default=1,
                   help="devices (or CPU processes) training together; the per-device peak follows")
    p.add_argument("--distributed", default="none", choices=list(DISTRIBUTED),
                   help="how several processes share the run: none, ddp (a whole copy each), fsdp (sharded)")
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
            new_tokens=(args.new_tokens if args.new_tokens is not None
                        else template_new_tokens(args.model, args.chat_template)),
        )
        tokens = args.tokens
        if tokens is None and args.dataset:
            tokens = dataset_token_count(args.dataset)
            if tokens is None:
                raise EstimateError(f"dataset {args.dataset} has no token stats yet: compute them in the Data tab "
                                    "or pass --tokens")
        if args.num_processes > 1 and args.distributed == "none":
            raise EstimateError(f"--num-processes {args.num_processes} needs --distributed ddp or fsdp")
        report = estimate_report(spec, plan, precision_requested=args.dtype, tokens=tokens, epochs=args.epochs,
                                 gpu=args.gpu, mfu=args.mfu, price_per_gpu_hour=args.price,
                                 num_processes=args.num_processes, distributed=args.distributed)
    except EstimateError as exc:
        return fail(exc)
    if args.json:
        print_json(report, sort_keys=True)
        return 0
    print(report["architecture"])
    print(f"params {report['params']:,}  trainable {report['trainable_params']:,}  ({plan.method}, {plan.precision}, "
          f"batch {plan.batch_size} × seq {plan.seq_len}{', checkpointing' if plan.gradient_checkpointing else ''}"
          f"{f', {plan.new_tokens} new tokens' if plan.new_tokens else ''})")
    for key, value in report["components"].items():
        print(f"  {key:<24} {_gb(value):>12}")
    print(f"peak {_gb(report['peak_bytes'])} (at: {report['peak_phase']});  inference {_gb(report['inference_bytes'])}")
    if report["num_processes"] > 1:
        print(f"per device {_gb(report['per_device_peak_bytes'])} ({report['per_device_note']})")
    for note in report["notes"]:
        print(f"  note: {note}")
    acc = report["accelerate_style"]
    print(f"accelerate-style: {acc['fp32_gb']:.2f} GB fp32 / {acc['adam_gb']:.2f} GB Adam (ignores {acc['ignores']})")
    for g in report["gpus"]:
        print(f"  {g['name']:<36} {g['verdict']:<6} {_gb(g['peak_bytes']):>10}  {g['advice']}")
    if "time_cost" in report:
        tc = report["time_cost"]
        print(f"time {tc['seconds'] / 3600:.2f} h on {tc['gpus']}× {tc['gpu']}, cost ${tc['cost_usd']:.2f}  "
              f"({tc['formula']})")
    return 0


@dataclass
class DiskPlan:
    """What a training run writes to the workspace at its fullest (checkpoints kept + the one being written, then
    the final adapter / model), from the estimator's parameter counts."""
    need_bytes: int
    checkpoint_bytes: int
    checkpoints: int  # on disk at once at the worst moment
    final_bytes: int
    text: str


def _tokenizer_bytes(base_model: Optional[str]) -> int:
    """The tokenizer files every checkpoint and the final folder carry (5 MB when the model is not on this
    machine)."""
    try:
        path = _local_path(base_model or "default")
    except Exception:  # noqa: BLE001 - an unknown model: the worker reports it
        path = None
    if path is None:
        return 5 * 1024**2
    names = ("tokenizer", "vocab", "merges", "special_tokens", "chat_template", "added_tokens", "spiece")
    return sum(f.stat().st_size for f in Path(path).iterdir() if f.is_file() and f.name.startswith(names))


def disk_plan(config) -> DiskPlan:
    """Bytes a TrainConfig's run writes under ``runs/<id>/`` at its fullest. A checkpoint holds the trainable
    weights (LoRA adapters are saved in fp32; a full fine-tune's weights in its training precision), the optimizer's
    states and the tokenizer; ``save_total_limit`` of them are kept, and the next is written (atomically, beside
    them) before the oldest goes. Raises EstimateError when the model's config cannot be read."""
    spec = load_model_spec(config.base_model)
    est = estimate_training_memory(spec, plan_for_config(config, device="cpu", bf16_supported=False))
    comps = est.component_bytes()
    tok = _tokenizer_bytes(config.base_model)
    if config.method == "full":
        weights = comps.get("weights", 0)
    else:  # LoRA / QLoRA: the adapter (+ any trained token rows), 4 B per trainable parameter
        weights = 4 * est.trainable_params
    small = 1024**2  # trainer state, rng, scheduler, configs, model card
    ckpt = int(weights + comps.get("optimizer_states", 0) + tok + small)
    final = int(weights + tok + small)
    limit = max(1, int(config.save_total_limit or 1))
    if config.save_steps and config.save_steps > 0:
        saves = -(-config.max_steps // config.save_steps) if config.max_steps and config.max_steps > 0 else limit + 1
    else:
        saves = 1  # the end-of-training checkpoint
    at_once = min(saves, limit + 1)
    need = max(at_once * ckpt, min(saves, limit) * ckpt + final)
    text = (f"{at_once} checkpoint(s) of ~{_mb(ckpt)} on disk at once (save_total_limit={limit}, each with the "
            f"optimizer state) and the final {'model' if config.method == 'full' else 'adapter'} of ~{_mb(final)}")
    return DiskPlan(int(need), ckpt, at_once, final, text)


def _mb(n: float) -> str:
    return f"{n / 1024**3:.1f} GB" if n >= 1024**3 else f"{max(1, round(n / 1024**2))} MB"
