"""Training and inference memory of a causal LM from its :class:`ModelSpec`: pure functions, every term shown.

:func:`estimate_training_memory` models one optimizer step as phases (forward, loss, backward, optimizer step). Each
:class:`Component` says how many bytes it holds in each phase; a phase's total is the sum over the components, and
the *peak* is the largest phase (not the sum of everything). :func:`estimate_inference_memory` and
:func:`accelerate_style` (what ``accelerate estimate-memory`` prints) follow. No torch, no database.

Byte conventions: ``*_bytes`` are plain bytes; "GB" shown to people is GiB (2**30), like accelerate and nvidia-smi.

The parts, each importing only the ones above it: ``plan`` (TrainingPlan and the choices it takes), ``components``
(step phases, Component, MemoryEstimate, overhead constants), ``activations`` and ``optimizer`` (their bytes),
``training`` (estimate_training_memory), ``inference`` (estimate_inference_memory, accelerate_style). Their public
names are re-exported here.
"""
from __future__ import annotations

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
    STEP_PHASES,
    Component,
    MemoryEstimate,
    phase_totals,
)
from core.estimate.memory.distributed import DISTRIBUTED, per_device_note, per_device_peak_bytes
from core.estimate.memory.inference import accelerate_style, estimate_inference_memory
from core.estimate.memory.optimizer import BNB_8BIT_OPTIM_BLOCK, BNB_8BIT_OPTIM_MIN_SIZE
from core.estimate.memory.plan import (
    ATTENTIONS,
    DTYPE_BYTES,
    INFERENCE_DTYPES,
    METHOD_LABELS,
    METHODS,
    OPTIMIZER_LABELS,
    OPTIMIZERS,
    PRECISIONS,
    TrainingPlan,
    resolve_precision,
)
from core.estimate.memory.training import estimate_training_memory

__all__ = [
    "DISTRIBUTED", "per_device_note", "per_device_peak_bytes",
    "ALLOCATOR_SLACK_FRACTION", "ATTENTIONS", "BACKWARD", "BACKWARD_END", "BACKWARD_START", "BNB_8BIT_OPTIM_BLOCK",
    "BNB_8BIT_OPTIM_MIN_SIZE", "CUDA_CONTEXT_BYTES", "DTYPE_BYTES", "FORWARD", "INFERENCE_DTYPES", "METHODS",
    "METHOD_LABELS", "NF4_BLOCK", "NF4_DQ_BLOCK", "OPTIMIZERS", "OPTIMIZER_LABELS", "OPTIMIZER_STEP", "PRECISIONS",
    "STEP_PHASES", "Component", "MemoryEstimate", "TrainingPlan", "accelerate_style", "estimate_inference_memory",
    "estimate_training_memory", "phase_totals", "resolve_precision",
]
