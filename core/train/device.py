"""What the training device can do: precision follows the device, QLoRA needs bitsandbytes."""
from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path


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


def torch_version_file() -> Path | None:
    """The installed torch's ``version.py`` (found without importing torch), or None."""
    import importlib.util

    try:
        spec = importlib.util.find_spec("torch")
        return Path(spec.origin).parent / "version.py"
    except (ImportError, AttributeError, TypeError, ValueError):
        return None


def cpu_only_build(version_text: str) -> bool:
    """Whether a torch ``version.py`` text is a CPU-only build's (``cuda`` and ``hip`` both None)."""
    builds = dict(re.findall(r"^(cuda|hip)\s*(?::[^=]*)?=\s*(.+?)\s*$", version_text, re.M))
    return builds.get("cuda") == "None" and builds.get("hip") == "None"


def _torch_sees_no_gpu() -> bool:
    """True when torch is not loaded yet and the installed one is a CPU-only build: the dashboard draws its form
    without importing torch (~1.5 s of its start), which it does not otherwise need. False when unsure."""
    if "torch" in sys.modules:
        return False  # already loaded: ask it
    path = torch_version_file()
    try:
        return path is not None and cpu_only_build(path.read_text())
    except OSError:
        return False


def process_capacity() -> tuple[int, str]:
    """(how many training processes this host can run, what they are): its GPUs, or its CPU cores where it has
    none (the cores this process may use)."""
    import os

    if not _torch_sees_no_gpu():
        import torch

        if torch.cuda.is_available():
            return torch.cuda.device_count(), "GPU(s)"
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return cores, "CPU core(s)"
