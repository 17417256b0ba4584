"""A CPU training's threads follow the host's free cores (core/train/cpu_share.py): fewer at once when other processes
keep its cores busy, more again when two readings agree they are free; read from the kernel's /proc/stat."""
from __future__ import annotations

import multiprocessing as mp
import os
import time

import pytest

from core.train.cpu_share import CpuShare, busy_jiffies, threads_for


def test_threads_are_the_cores_left_at_least_one():
    assert [threads_for(2, b) for b in (0.0, 0.4, 0.6, 1.0, 1.9, 5.0)] == [2, 2, 1, 1, 1, 1]
    assert threads_for(8, 3.2) == 5 and threads_for(8, 0.0) == 8 and threads_for(1, 0.0) == 1


def test_busy_time_counts_the_given_cores_and_not_idle_or_iowait():
    text = ("cpu  40 2 10 900 9 4 6 8 0 0\n"
            "cpu0 10 1 5 100 7 2 3 4 0 0\n"  # user nice system idle iowait irq softirq steal guest guest_nice
            "cpu1 30 1 5 800 2 2 3 4 0 0\n"
            "intr 12345 0 0\n")
    assert busy_jiffies({0}, text) == 10 + 1 + 5 + 2 + 3 + 4
    assert busy_jiffies({0, 1}, text) == 25 + 45 and busy_jiffies({7}, text) == 0
    with open("/proc/stat") as fh:  # the kernel's own text
        real = fh.read()
    cpus = set(os.sched_getaffinity(0))
    assert busy_jiffies(cpus, real) >= busy_jiffies({min(cpus)}, real) > 0


def _write_stat(path, busy_per_cpu: int) -> None:
    path.write_text(f"cpu0 {busy_per_cpu} 0 0 1000 0 0 0 0 0 0\ncpu1 {busy_per_cpu} 0 0 1000 0 0 0 0 0 0\n")


def test_fewer_threads_at_once_and_more_only_when_two_readings_agree(tmp_path):
    """The readings here come from a file in /proc/stat's format, so that the load is known: 1.5 cores busy with
    others, then none."""
    stat, hz, set_to, lines = tmp_path / "stat", os.sysconf("SC_CLK_TCK"), [], []
    busy = 0
    _write_stat(stat, busy)
    share = CpuShare(set_to.append, 2, {0, 1}, lines.append, interval_s=0, stat_path=str(stat))

    def after(seconds: float, cores_busy: float) -> int:
        nonlocal busy
        time.sleep(seconds)
        busy += int(cores_busy * seconds * hz / 2)  # spread over the two cores
        _write_stat(stat, busy)
        return share.tick()

    assert after(0.3, 1.5) == 1 and set_to == [1]  # at once
    assert after(0.3, 1.5) == 1 and set_to == [1]
    assert after(0.3, 0.0) == 1  # one reading of free cores is not enough
    assert after(0.3, 0.0) == 2 and set_to == [1, 2]
    assert after(0.3, 1.5) == 1 and after(0.3, 0.0) == 1 and after(0.3, 1.5) == 1  # a lull between bursts: stays
    assert set_to == [1, 2, 1] and len(lines) == 3 and "cpu threads 2 -> 1" in lines[0]
    assert "changed 3 time(s)" in share.summary()


def _spin(seconds: float) -> None:
    end = time.time() + seconds
    while time.time() < end:
        sum(range(1000))


@pytest.mark.skipif(not os.path.exists("/proc/stat") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs Linux's /proc/stat and 2 cores")
def test_busy_processes_on_every_core_leave_one_thread():
    """Real load: one busy process per core of this process's; the share reads the kernel's counters."""
    cpus = sorted(os.sched_getaffinity(0))
    set_to: list[int] = []
    share = CpuShare(set_to.append, len(cpus), set(cpus), interval_s=0.5)
    ctx = mp.get_context("fork")
    hogs = [ctx.Process(target=_spin, args=(8.0,)) for _ in cpus]
    for h in hogs:
        h.start()
    try:
        deadline = time.time() + 8
        while time.time() < deadline and share.threads > 1:
            time.sleep(0.5)
            share.tick()
    finally:
        for h in hogs:
            h.terminate()
            h.join()
    assert share.threads == 1 and set_to and set_to[-1] == 1


def test_jobs_get_openmp_threads_that_sleep_at_a_barrier_unless_the_host_says_otherwise(workspace, monkeypatch):
    """Spinning (libgomp's default), a training at nice 10 beside one busy process took 36 s a step instead of 4.2
    (bench/cpu_share.py): every job's environment asks for sleeping threads, unless the host set its own policy."""
    from core.runs.backends import job_environment

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    assert job_environment()["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert job_environment()["OMP_WAIT_POLICY"] == "ACTIVE"


def test_the_on_off_settings_read_the_same_words(monkeypatch):
    """FTS_CPU_SHARE (core.config's Settings) and FTS_WARM_WORKER (read from a job's environment, core.runs.warm)
    take the same words: 0/false/no/off in any case is off; unset, empty or anything else is on."""
    from core.config import get_settings, switched_on
    from core.runs import warm

    for off in ("0", "false", " OFF ", "No"):
        assert not switched_on(off) and not warm.enabled({"FTS_WARM_WORKER": off})
        monkeypatch.setenv("FTS_CPU_SHARE", off)
        assert get_settings().cpu_share is False
    for on in (None, "", "1", "yes", "True", "on"):
        assert switched_on(on) and warm.enabled({} if on is None else {"FTS_WARM_WORKER": on})
        if on is None:
            monkeypatch.delenv("FTS_CPU_SHARE", raising=False)
        else:
            monkeypatch.setenv("FTS_CPU_SHARE", on)
        assert get_settings().cpu_share is True
