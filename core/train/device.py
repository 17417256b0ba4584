"""What the training device can do: precision follows the device, QLoRA needs bitsandbytes."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DevicePlan:
    device: str  # "cuda" | "cpu" | "mps"
    precision: str  # "fp32" | "bf16" | "fp16"
    description: str


def pick_precision(requested: str = "auto") -> DevicePlan:
    import torch

    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        auto = "bf16" if torch.cuda.is_bf16_supported() else "fp16"  # T4/V100: fp16
        precision = auto if requested == "auto" else requested
        return DevicePlan("cuda", precision, f"cuda:0 ({name})")
    # CPU: bf16 autocast is 15-30x slower than fp32 on CPUs without AMX; fp16 mixed precision is unsupported
    precision = "fp32" if requested in ("auto", "fp16") else requested
    return DevicePlan("cpu", precision, f"cpu ({torch.get_num_threads()} threads)")


def qlora_support_error() -> str | None:
    """None if 4-bit NF4 loading works here, else a message saying why not."""
    try:
        import bitsandbytes  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - optional probe: ImportError or a broken native library
        return (
            "QLoRA needs the bitsandbytes package with a CUDA GPU (or its CPU backend); it could not be loaded here "
            f"({type(exc).__name__}: {exc}). Use method 'lora' instead."
        )
    return None


def process_capacity() -> tuple[int, str]:
    """(how many training processes this host can run, what they are): its GPUs, or its CPU cores where it has
    none (the cores this process may use)."""
    import os

    import torch

    if torch.cuda.is_available():
        return torch.cuda.device_count(), "GPU(s)"
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return cores, "CPU core(s)"
