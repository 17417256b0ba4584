"""A CPU training shares its cores with what else runs on the host.

torch gives a process one compute thread per core, which is right while it has the cores to itself. When other
processes keep some of them busy (a second training, the dashboard answering a Playground prompt, a local server,
a browser), its threads wait for each other at every parallel step. The quick start's training on 2 cores
(bench/cpu_share.py): beside one busy process 4.75 s a step with its two threads, 4.22 s following the load; two
such trainings at once 5.35 against 4.81 s (a mean of 4 noisy runs). So between steps the worker reads how busy
its cores were over the last seconds (``/proc/stat``, its own time taken out) and trains with the cores that were
left, at least one; when they are free again it takes them back: fewer at once, more when two readings in a row
agree, so a short lull does not make it flap.

Off where a thread count is fixed: ``FTS_WORKER_THREADS``, the ranks of a multi-process run (they split the cores
between them), a GPU run, ``FTS_CPU_SHARE=0``, or a host without ``/proc/stat``.
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable

INTERVAL_S = 2.0  # how often the cores are read (between steps: a long step reads once per step)
AGREE = 2  # readings in a row that must want more threads before it takes them
LOGGED_CHANGES = 5  # the first changes are logged; after that only the summary at the end


def threads_for(cores: int, others_busy: float) -> int:
    """Threads for a training on ``cores`` cores while other processes keep ``others_busy`` of them busy: the cores
    left (to the nearest), at least one, at most ``cores``."""
    return max(1, min(cores, int(cores - others_busy + 0.5)))


def busy_jiffies(cpus: set[int], stat_text: str) -> int:
    """Busy time of ``cpus`` in a ``/proc/stat`` text (user, nice, system, irq, softirq and steal; not idle or
    iowait), in clock ticks."""
    total = 0
    for line in stat_text.splitlines():
        name, _, rest = line.partition(" ")
        if not name.startswith("cpu") or not name[3:].isdigit() or int(name[3:]) not in cpus:
            continue
        f = [int(x) for x in rest.split()]
        total += f[0] + f[1] + f[2] + sum(f[5:8])
    return total


def _own_jiffies() -> int:
    with open("/proc/self/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime: every thread of this process


class CpuShare:
    """Call :meth:`tick` between steps, from the thread that computes (a thread count is that thread's setting)."""

    def __init__(self, set_threads: Callable[[int], None], threads: int, cpus: set[int],
                 log: Callable[[str], None] | None = None, interval_s: float = INTERVAL_S,
                 stat_path: str = "/proc/stat") -> None:
        self.set_threads = set_threads
        self.threads = self.most = threads
        self.cpus = cpus
        self.log = log
        self.interval_s = interval_s
        self.stat_path = stat_path
        self.hz = os.sysconf("SC_CLK_TCK")
        self.changes = 0
        self.wanted: int | None = None
        self.agreed = 0
        self.at_fewer_s = 0.0  # seconds trained with fewer threads than cores
        self.last = self._read()

    @classmethod
    def for_this_process(cls, torch, log: Callable[[str], None] | None = None) -> CpuShare | None:
        """One for this worker, or None where the thread count stays as it is (see the module's docstring)."""
        from core.config import get_settings
        from core.train.distributed import world_size

        settings = get_settings()
        if not settings.cpu_share or settings.worker_threads or world_size() > 1 or torch.cuda.is_available():
            return None
        try:
            cpus = set(os.sched_getaffinity(0))
            share = cls(torch.set_num_threads, torch.get_num_threads(), cpus, log)
        except (AttributeError, OSError, ValueError, IndexError):
            return None
        if share.most < 2 or len(cpus) < 2:
            return None  # one thread or one core: nothing to share
        return share

    def _read(self) -> tuple[float, int, int]:
        with open(self.stat_path) as fh:
            text = fh.read()
        return time.monotonic(), busy_jiffies(self.cpus, text), _own_jiffies()

    def tick(self) -> int:
        """Read the cores when ``interval_s`` has passed; change the thread count when ``AGREE`` readings in a row
        want another one. Returns the count now in use."""
        now = time.monotonic()
        if now - self.last[0] < self.interval_s:
            return self.threads
        try:
            reading = self._read()
        except (OSError, ValueError, IndexError):
            return self.threads
        (t0, busy0, own0), (t1, busy1, own1) = self.last, reading
        self.last = reading
        if self.threads < self.most:
            self.at_fewer_s += t1 - t0
        others = max(0.0, ((busy1 - busy0) - (own1 - own0)) / self.hz / (t1 - t0))
        want = threads_for(min(self.most, len(self.cpus)), others)
        if want == self.threads:
            self.wanted, self.agreed = None, 0
            return self.threads
        self.agreed = self.agreed + 1 if want == self.wanted else 1
        self.wanted = want
        if want > self.threads and self.agreed < AGREE:
            return self.threads  # fewer at once (a thread waiting for a busy core stalls every step), more when sure
        before, self.threads = self.threads, want
        self.set_threads(want)
        self.wanted, self.agreed = None, 0
        self.changes += 1
        if self.log is not None and self.changes <= LOGGED_CHANGES:
            self.log(f"cpu threads {before} -> {want}: other processes kept {others:.1f} of its {len(self.cpus)} "
                     f"cores busy" + (" (further changes are not logged)" if self.changes == LOGGED_CHANGES else ""))
        return want

    def summary(self) -> str | None:
        """One line for the end of the run, or None when it never changed."""
        if not self.changes:
            return None
        return (f"cpu threads: changed {self.changes} time(s) with the host's load; {self.at_fewer_s:.0f} s with "
                f"fewer than {self.most}")
