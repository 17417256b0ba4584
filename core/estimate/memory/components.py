"""The vocabulary of a memory estimate: the phases of one optimizer step, a :class:`Component` (the bytes it holds in
each phase, with its formula), :class:`MemoryEstimate`, and the byte constants outside the model's own tensors
(CUDA context, allocator slack) and of bitsandbytes' 4-bit layout.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from core.estimate.spec import GIB, MIB

# Overheads outside the tensors that torch.cuda.max_memory_allocated sees.
CUDA_CONTEXT_BYTES = 512 * MIB  # CUDA context + cuBLAS/cuDNN handles; 300-900 MiB depending on GPU, driver, torch
ALLOCATOR_SLACK_FRACTION = 0.10  # caching-allocator fragmentation of the per-step tensors (reserved vs allocated)
NF4_BLOCK = 64  # bitsandbytes 4-bit blocksize: one absmax per 64 weights
NF4_DQ_BLOCK = 256  # double quantization: the absmaxes are quantised to 8 bit in blocks of 256

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
