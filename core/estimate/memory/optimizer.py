"""Optimizer state bytes for the trainable tensors: AdamW (32-bit, paged), bitsandbytes' blockwise 8-bit AdamW,
SGD without momentum, Adafactor's factored second moment.
"""
from __future__ import annotations

import math

from core.estimate.memory.plan import TrainingPlan
from core.estimate.spec import EstimateError

BNB_8BIT_OPTIM_BLOCK = 256  # bitsandbytes blockwise 8-bit optimizer state: one fp32 absmax per 256 values
BNB_8BIT_OPTIM_MIN_SIZE = 4096  # tensors smaller than this keep 32-bit states (bnb min_8bit_size)


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
