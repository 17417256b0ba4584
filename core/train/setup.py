"""What a run will actually do on this device, as pure functions of (TrainConfig, DevicePlan).

:func:`trainer_arguments` builds the keyword arguments of TRL's ``SFTConfig``; :func:`effective_setup` the facts a
person should see (logged in one line when the worker starts). Both are pure, so a table test can walk methods ×
devices × precisions without a GPU — which is how "QLoRA silently ignores gradient checkpointing" stays fixed.
"""
from __future__ import annotations

from dataclasses import dataclass

from core.train.config import TrainConfig
from core.train.device import DevicePlan
from core.train.distributed import distributed_arguments

PACKED_ATTENTION = "fts_packed_sdpa"  # core.train.attention.ATTN_IMPLEMENTATION (kept import-free here)
NO_SAVE_STEPS = 10**9


def attention_implementation(config: TrainConfig) -> str:
    """Padding-free batches: causal SDPA per packed example; otherwise plain SDPA with a padding mask."""
    return PACKED_ATTENTION if config.packing and config.objective != "grpo" else "sdpa"  # GRPO: padded, sampled


def load_dtype_name(plan: DevicePlan) -> str:
    """Weights load in the compute precision, except fp16 AMP, which needs fp32 master weights."""
    return "fp32" if plan.precision == "fp16" else plan.precision


def lora_targets_text(config: TrainConfig) -> str:
    if config.method == "full":
        return "-"
    return ",".join(config.lora_target_modules)


@dataclass(frozen=True)
class EffectiveSetup:
    method: str
    device: str
    precision: str
    load_dtype: str
    gradient_checkpointing: bool
    packing: bool
    attention: str
    lora_targets: str
    lora_r: int | None
    quantization: str
    prompt_template: str = "model's own"
    trained_token_rows: int = 0
    objective: str = "sft"

    def line(self) -> str:
        lora = f", LoRA r={self.lora_r} on {self.lora_targets}" if self.lora_r else ""
        rows = ""
        if self.trained_token_rows:
            rows = (f" + {self.trained_token_rows} new-token embedding row(s) trained"
                    + (" (whole model trained)" if self.method == "full" else " (PEFT trainable tokens)"))
        return (f"effective setup: objective {self.objective}, method {self.method}, device {self.device}, "
                f"precision {self.precision} "
                f"(weights loaded {self.load_dtype}{', ' + self.quantization if self.quantization else ''}), "
                f"gradient checkpointing {'on' if self.gradient_checkpointing else 'off'}, "
                f"packing {'on' if self.packing else 'off'}, attention {self.attention}{lora}, "
                f"prompt template {self.prompt_template}{rows}")


def effective_setup(config: TrainConfig, plan: DevicePlan, trained_token_rows: int = 0) -> EffectiveSetup:
    return EffectiveSetup(
        method=config.method,
        device=plan.description,
        precision=plan.precision,
        load_dtype=load_dtype_name(plan),
        gradient_checkpointing=config.gradient_checkpointing,
        packing=config.packing and config.objective != "grpo",
        attention=attention_implementation(config),
        lora_targets=lora_targets_text(config),
        lora_r=None if config.method == "full" else config.lora_r,
        quantization="4-bit NF4 base (bitsandbytes)" if config.method == "qlora" else "",
        prompt_template=config.chat_template or "model's own",
        trained_token_rows=trained_token_rows,
        objective=(config.objective if config.objective == "sft" else
                   f"{config.objective} (beta {config.beta:g}"
                   + (f", {config.preference_loss} loss, reference = the model at step 0)"
                      if config.objective == "dpo" else ", no reference)")),
    )


def trainer_arguments(config: TrainConfig, plan: DevicePlan, *, output_dir: str, has_eval: bool,
                      fsdp_layers: list[str] | None = None) -> dict:
    """Keyword arguments for ``trl.SFTConfig``. Checkpoint rotation is ours (complete checkpoints only), so
    ``save_total_limit`` stays off here. Several processes: the strategy's own (core.train.distributed;
    ``fsdp_layers``: the decoder-layer classes FSDP wraps)."""
    return dict(
        **distributed_arguments(config, fsdp_layers),
        output_dir=output_dir,
        num_train_epochs=config.num_epochs,
        max_steps=config.max_steps,
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum,
        learning_rate=config.learning_rate,
        lr_scheduler_type=config.lr_scheduler,
        warmup_steps=config.warmup_ratio,
        weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm,
        bf16=plan.precision == "bf16",
        fp16=plan.precision == "fp16",
        use_cpu=plan.device == "cpu",
        # transformers 5 calls it activation checkpointing (gradient_checkpointing is its deprecated alias, and TRL's
        # SFTConfig defaults that alias to True: set the real name explicitly, always)
        activation_checkpointing=config.gradient_checkpointing,
        # non-reentrant: works with frozen embeddings (LoRA/QLoRA) without forcing input gradients
        activation_checkpointing_kwargs={"use_reentrant": False} if config.gradient_checkpointing else None,
        seed=config.seed,
        logging_steps=config.logging_steps,
        save_strategy="steps",
        save_steps=config.save_steps if config.save_steps > 0 else NO_SAVE_STEPS,
        save_total_limit=None,
        eval_strategy="steps" if has_eval and config.eval_steps > 0 else "no",
        eval_steps=config.eval_steps or None,
        report_to=[],
        dataloader_num_workers=0,
        remove_unused_columns=False,
        dataset_kwargs={"skip_prepare_dataset": True},
        max_length=None,
        padding_free=False,  # we pass our own padding-free collator (TRL refuses custom collators with it on)
        # length grouping reads an input_ids column; a preference example holds two sequences
        train_sampling_strategy=("group_by_length" if config.group_by_length and not config.packing
                                 and config.objective == "sft" else "random"),
        disable_tqdm=True,
    )
