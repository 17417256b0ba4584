"""What a training run is, as the memory model reads it: the methods, optimizers, precisions and attention kernels it
knows (with their labels), :class:`TrainingPlan`, and the precision 'auto' resolves to on a device.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from core.estimate.spec import EstimateError

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


def _act_bytes(precision: str) -> int:
    return DTYPE_BYTES[precision]
