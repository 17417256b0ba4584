"""A training run in several processes (DDP / FSDP2), as the worker sees it: which rank this is, the threads each
rank gets on a CPU, the trainer arguments of each strategy, the steps all ranks take together (a stop, a
checkpoint, the final save).

Ranks are started by core.runs.ranks with the variables ``torch.distributed`` reads; accelerate (through the
Trainer) joins them into one process group (gloo on a CPU, NCCL on GPUs). FSDP goes through accelerate's FSDP
plugin, built by transformers from ``fsdp_config``: FSDP2 (``fully_shard``), full shard (parameters resharded after
the forward), auto-wrapped by decoder layer, checkpoints sharded (``SHARDED_STATE_DICT``: each rank writes its
shard of the weights and of the optimizer state); the final adapter/model is gathered whole and written by rank 0.
"""
from __future__ import annotations

import os


def world_size() -> int:
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def rank() -> int:
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def threads_per_rank(cores: int, processes: int) -> int:
    """CPU threads each of ``processes`` ranks gets on ``cores`` cores: their share, at least one (more threads
    than cores and the ranks' OpenMP threads spin at every barrier, and crawl)."""
    return max(1, cores // max(1, processes))


def host_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def limit_rank_threads() -> int | None:
    """On a CPU, each rank of a multi-process run takes its share of its node's cores (the ranks on this node:
    ``LOCAL_WORLD_SIZE``), or the CPUs its launcher reserved for it (``FTS_RANK_THREADS``: a Ray bundle's); returns
    the threads set (None: one process, or GPUs)."""
    n = world_size()
    if n <= 1:
        return None
    import torch

    if torch.cuda.is_available():
        return None
    try:
        local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE") or n))
        reserved = int(os.environ.get("FTS_RANK_THREADS") or 0)
    except ValueError:
        local, reserved = n, 0
    threads = reserved if reserved > 0 else threads_per_rank(host_cores(), local)
    torch.set_num_threads(threads)
    return threads


def distributed_arguments(config, layer_classes: list[str] | None = None) -> dict:
    """Trainer arguments of the run's strategy (``config.distributed``): DDP without the unused-parameter search
    (every trainable parameter takes part in each step); FSDP2 through accelerate's plugin — full shard, wrapped by
    ``layer_classes`` (the model's decoder layers), sharded checkpoints. Empty for one process."""
    if config.num_processes <= 1 or config.distributed == "none":
        return {}
    if config.distributed == "ddp":
        return {"ddp_find_unused_parameters": False}
    fsdp_config = {"version": 2, "reshard_after_forward": True, "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
                   "state_dict_type": "SHARDED_STATE_DICT", "cpu_ram_efficient_loading": False}
    if layer_classes:
        fsdp_config["transformer_layer_cls_to_wrap"] = list(layer_classes)
    return {"fsdp": "full_shard auto_wrap", "fsdp_config": fsdp_config}


def decoder_layer_classes(model) -> list[str]:
    """The model's decoder-layer class names (what FSDP wraps one by one): transformers' ``_no_split_modules``."""
    for m in (model, getattr(model, "base_model", None), getattr(getattr(model, "base_model", None), "model", None)):
        names = getattr(m, "_no_split_modules", None) if m is not None else None
        if names:
            return [str(n) for n in names]
    return []


def _group_ready() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    if _group_ready():
        import torch.distributed as dist

        dist.barrier()


def sum_over_ranks(values: list[float]) -> list[float]:
    """Each value summed over the ranks (one small all-reduce; every rank calls it at the same point); as given for
    one process. A step's stop flags and token counts go through it together."""
    if not _group_ready():
        return list(values)
    import torch
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return [float(v) for v in t.tolist()]


class FsdpOnCpu:
    """A Trainer mixin: FSDP on CPU processes too. accelerate 1.15 turns its FSDP plugin on only for accelerators
    (its state keeps ``MULTI_CPU`` — plain DDP — on a CPU and drops the plugin), while torch's FSDP2
    (``fully_shard``) runs over gloo: when the run asks for FSDP and the processes are CPU ones, the state is made
    FSDP with the same plugin, so accelerate prepares, saves and loads the model as it does on GPUs."""

    def create_accelerator_and_postprocess(self):
        super().create_accelerator_and_postprocess()
        plugin_args = getattr(self.args, "fsdp_plugin_args", None)
        if not plugin_args or self.is_fsdp_enabled:
            return
        from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

        state = self.accelerator.state
        if state.distributed_type != DistributedType.MULTI_CPU:
            return
        state.fsdp_plugin = FullyShardedDataParallelPlugin(**plugin_args)
        state.distributed_type = DistributedType.FSDP
        self.is_fsdp_enabled = True


def is_fsdp(trainer) -> bool:
    return bool(getattr(trainer, "is_fsdp_enabled", False))


def full_state_dict(trainer, trainable_only: bool):
    """The model's weights gathered whole from the FSDP shards (a collective: every rank calls it; rank 0 gets plain
    CPU tensors, the others an empty dict); only the trainable ones for LoRA (the adapter is all that is saved).
    None when the run is not sharded (the trainer saves as usual)."""
    if not is_fsdp(trainer):
        return None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=trainable_only)
    gathered = get_model_state_dict(trainer.model, options=options)
    return {k: v.detach().clone().contiguous() for k, v in gathered.items()}


def save_final(trainer, out_dir: str, state_dict) -> None:
    """Rank 0: the adapter (LoRA) or model (full) as one process would write it, from the gathered ``state_dict``
    when the run was sharded."""
    if state_dict is None:
        trainer.save_model(out_dir)
        return
    model = trainer.accelerator.unwrap_model(trainer.model)
    model.save_pretrained(out_dir, state_dict=state_dict, safe_serialization=True)
    _undo_fsdp_class_name(out_dir)


def _undo_fsdp_class_name(out_dir: str) -> None:
    """FSDP2 renames the model's class (``FSDPLlamaForCausalLM``); a saved full model's config names the real one."""
    import json
    from pathlib import Path

    cfg = Path(out_dir) / "config.json"
    if not cfg.is_file():
        return
    data = json.loads(cfg.read_text(encoding="utf-8"))
    archs = data.get("architectures") or []
    fixed = [a[4:] if a.startswith("FSDP") else a for a in archs]
    if fixed != archs:
        data["architectures"] = fixed
        cfg.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
