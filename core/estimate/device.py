"""The device a training worker would use, probed from this process (torch and psutil, imported lazily)."""
from __future__ import annotations

from typing import Optional


def worker_device() -> tuple[str, Optional[int], bool]:
    """(device label, free bytes or None, bf16 supported) for the device a training worker would use."""
    try:
        import torch

        if torch.cuda.is_available():
            idx = torch.cuda.current_device()
            free, _total = torch.cuda.mem_get_info(idx)
            name = torch.cuda.get_device_name(idx)
            return f"cuda:{idx} ({name})", int(free), bool(torch.cuda.is_bf16_supported())
    except Exception:  # noqa: BLE001, S110 - a broken driver must not stop the check; fall back to CPU
        pass
    try:
        import psutil

        return "cpu", int(psutil.virtual_memory().available), False
    except Exception:  # noqa: BLE001
        return "cpu", None, False
