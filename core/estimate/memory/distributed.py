"""Per-device peak of a training step split over several processes (one per GPU, or CPU processes): what each
device must hold under DDP or FSDP, from the one-process :class:`MemoryEstimate`. Pure functions.

* ``none`` / one process: the estimate as it is.
* ``ddp``: every device holds the whole model, its gradients and optimizer states, and its own micro-batch's
  activations; DDP adds its gradient buckets (a flat copy of the trainable parameters' gradients, reduced across
  the devices while the backward runs).
* ``fsdp`` (FSDP2, full shard): weights, trainable weights, gradients and optimizer states are split over the N
  devices; each device gathers one decoder layer's weights whole for its forward / backward, and the next one ahead
  (prefetch); activations are its own micro-batch's, not split.
"""
from __future__ import annotations

from core.estimate.memory.components import MemoryEstimate

DISTRIBUTED = ("none", "ddp", "fsdp")
SHARDED = ("weights", "adapter_weights", "optimizer_states", "gradients")
GATHERED_LAYERS = 2  # the layer being computed and the one prefetched


def per_device_peak_bytes(est: MemoryEstimate, distributed: str, processes: int, num_layers: int) -> int:
    """Bytes one device needs at the step's peak when ``processes`` devices train together as ``distributed``
    says (``none``: one process — the estimate's own peak)."""
    if distributed not in DISTRIBUTED:
        raise ValueError(f"distributed must be one of {', '.join(DISTRIBUTED)} (got '{distributed}')")
    if not isinstance(processes, int) or processes < 1:
        raise ValueError(f"processes must be a whole number of at least 1 (got {processes!r})")
    comp = est.component_bytes()
    if distributed == "none" or processes == 1:
        return est.peak_bytes
    if distributed == "ddp":
        return est.peak_bytes + comp.get("gradients", 0)
    shardable = sum(comp.get(k, 0) for k in SHARDED)
    # the peak phase holds the gradients only in part (they are the backward's product): shard what it holds
    grads_at_peak = 0 if est.peak_phase.startswith("forward") else comp.get("gradients", 0)
    rest = est.peak_tensor_bytes - (shardable - comp.get("gradients", 0) + grads_at_peak)
    gathered = GATHERED_LAYERS * comp.get("weights", 0) // max(1, num_layers)
    return int((shardable - comp.get("gradients", 0) + grads_at_peak) / processes + max(rest, 0) + gathered
               + est.overhead_bytes)


def per_device_note(distributed: str, processes: int) -> str:
    if distributed == "none" or processes == 1:
        return "one process"
    if distributed == "ddp":
        return f"DDP over {processes}: a whole copy per device + gradient buckets"
    return (f"FSDP over {processes}: weights, gradients and optimizer states / {processes}, + {GATHERED_LAYERS} "
            "decoder layers gathered whole")
