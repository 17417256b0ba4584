"""The training worker as a neighbour on its machine: lower priority, an optional thread cap, an optional cap on
its memory (so running out of it is a reported failure of the run, not the OS killing something).
"""
from __future__ import annotations

import os

from core.runs.worker import log


def apply_process_limits() -> None:
    """Be a good neighbour of the dashboard on the same machine: lower priority, optional thread cap."""
    from core.config import get_settings

    settings = get_settings()
    try:
        if settings.worker_nice:
            os.nice(settings.worker_nice)
    except OSError:
        pass
    if settings.worker_threads:
        import torch

        torch.set_num_threads(settings.worker_threads)
    else:
        from core.train.distributed import limit_rank_threads, rank, world_size

        threads = limit_rank_threads()
        if threads and rank() == 0:
            log(f"{world_size()} CPU processes: {threads} thread(s) each")


def cap_memory() -> None:
    """FTS_WORKER_MAX_MEMORY_GB: cap the worker's extra address space once the libraries are loaded, so running
    out of memory is a clean, reported failure of this run instead of the OS killing something on the machine."""
    from core.config import get_settings

    cap = get_settings().worker_max_memory_bytes
    if not cap:
        return
    import resource

    import psutil

    limit = psutil.Process().memory_info().vms + cap
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    log(f"memory cap: {cap / 1024**3:.2f} GB above the loaded libraries")
