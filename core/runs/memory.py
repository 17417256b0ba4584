"""How much memory a worker uses and may use, and whether the kernel's out-of-memory killer struck.

Read by the supervisor, which samples its worker while it runs: when the worker dies of SIGKILL the supervisor can
say "killed by signal 9, likely out of memory: peak RSS 21.8 GB of 22.0 GB" instead of "it died".
Linux only (``/proc``, cgroup v1 and v2); elsewhere the figures are simply missing.
"""
from __future__ import annotations

from pathlib import Path

import psutil

CGROUP_ROOT = Path("/sys/fs/cgroup")
_UNLIMITED = 1 << 60


def tree_rss_bytes(pid: int) -> int | None:
    """Resident memory of a process and its children (a multi-GPU launcher's workers included)."""
    try:
        proc = psutil.Process(pid)
        total = proc.memory_info().rss
        for child in proc.children(recursive=True):
            try:
                total += child.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        return int(total)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def cgroup_dirs(pid: int) -> list[tuple[str, Path]]:
    """(version, directory) of the memory cgroups that hold the process, innermost first."""
    out: list[tuple[str, Path]] = []
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _hid, controllers, rel = parts
        rel = rel.lstrip("/")
        if controllers == "":  # cgroup v2
            base = CGROUP_ROOT / "unified" if (CGROUP_ROOT / "unified").is_dir() else CGROUP_ROOT
            out.append(("v2", _existing(base, rel)))
        elif "memory" in controllers.split(","):
            out.append(("v1", _existing(CGROUP_ROOT / "memory", rel)))
    return out


def _existing(base: Path, rel: str) -> Path:
    """``base/rel``, or — inside a container whose cgroup mount starts below the host's root — the longest tail of
    ``rel`` that exists under ``base``."""
    parts = [p for p in rel.split("/") if p]
    for i in range(len(parts) + 1):
        candidate = base.joinpath(*parts[i:])
        if candidate.is_dir():
            return candidate
    return base / rel


def _read_int(p: Path) -> int | None:
    try:
        text = p.read_text().strip()
    except OSError:
        return None
    if text == "max":
        return None
    try:
        return int(text)
    except ValueError:
        return None


def _cgroup_usage_and_limit(version: str, d: Path) -> tuple[int, int] | None:
    if version == "v2":
        usage, limit = _read_int(d / "memory.current"), _read_int(d / "memory.max")
    else:
        usage, limit = _read_int(d / "memory.usage_in_bytes"), _read_int(d / "memory.limit_in_bytes")
    if usage is None or limit is None or not 0 < limit < _UNLIMITED:
        return None
    return usage, limit


def memory_ceiling(pid: int, rss: int) -> tuple[int, str]:
    """How large the process (now at ``rss``) could grow before something kills it, and what sets that: the memory
    the machine has free for it, or a memory cgroup's limit (its own or a parent's, less what is charged there).
    Sampled while the worker runs, it turns "killed by signal 9" into "peak RSS 21.8 GB of 22.0 GB"."""
    ceilings: list[tuple[int, str]] = [(rss + int(psutil.virtual_memory().available), "memory the machine had for it")]
    for version, d in cgroup_dirs(pid):
        cur = d
        while True:  # a parent cgroup's limit binds too
            found = _cgroup_usage_and_limit(version, cur)
            if found:
                usage, limit = found
                ceilings.append((rss + max(limit - usage, 0), "memory limit of its cgroup"))
            if cur in (CGROUP_ROOT, CGROUP_ROOT / "memory", CGROUP_ROOT / "unified") or cur.parent == cur:
                break
            cur = cur.parent
    return min(ceilings, key=lambda x: x[0])


def oom_kill_count() -> int:
    """OOM kills on this machine so far (``/proc/vmstat``; memory-cgroup kills count too). Read just before and
    just after a worker dies: a rise means the kernel's out-of-memory killer struck in between. 0 where unknown."""
    try:
        for line in Path("/proc/vmstat").read_text().splitlines():
            if line.startswith("oom_kill "):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0
