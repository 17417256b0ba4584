"""What the runs core costs a job beyond its own work: a supervisor forked from the warm worker against one started
cold (``python -m core.runs.supervise``), the worker forked in both cases.

    .venv/bin/python bench/job_overhead.py [--jobs 20] [--rounds 2]

A trivial job kind (``count``: 1 step, no sleep, tests/job_kinds.py) submitted one after the other through the runs
core as the dashboard does, in a fresh workspace, the warm worker ready. Per job: seconds from submit to
``succeeded`` in the database, and the busy core-seconds of the whole machine (``/proc/stat``) over the batch
divided by the jobs. The two cases alternate, ``--rounds`` times each. Run it on an otherwise idle machine.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def busy_s() -> float:
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (sum(v[:3]) + sum(v[5:8])) / os.sysconf("SC_CLK_TCK")


def batch(n: int, forked: bool) -> tuple[float, float]:
    """(median s from submit to succeeded, busy core-s per job) for ``n`` jobs one after the other."""
    from core import runs
    from core.runs import warm

    real = warm.spawn_supervisor
    if not forked:
        warm.spawn_supervisor = lambda *a, **k: None  # as before: the backend starts it cold
    try:
        took = []
        c0 = busy_s()
        for _ in range(n):
            t0 = time.monotonic()
            job = runs.wait_for(runs.submit("count", {"steps": 1, "sleep_s": 0}).id, timeout_s=120, poll_s=0.02)
            assert job.status == "succeeded", (job.status, job.error, runs.log_tail(job.id))
            took.append(time.monotonic() - t0)
        return statistics.median(took), (busy_s() - c0) / n
    finally:
        warm.spawn_supervisor = real


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    os.environ["FTS_WORKSPACE"] = tempfile.mkdtemp(prefix="fts-bench-jobs-")
    os.environ["FTS_JOB_KINDS"] = "tests.job_kinds"
    from core.runs import warm
    from core.runs.backends import job_environment

    env = job_environment()
    warm.ensure(env)
    assert warm.wait_ready(env, timeout_s=180), "the warm worker did not start"
    batch(2, True)  # the first jobs open the database and the server's pages
    results: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
    try:
        for _ in range(args.rounds):
            for forked in (False, True):
                results[forked].append(batch(args.jobs, forked))
    finally:
        warm.stop(env)
    print(f"{args.jobs} count jobs x {args.rounds} rounds, one after the other ({os.cpu_count()} cores)")
    print("| supervisor | submit → succeeded (median s) | busy core-s per job |")
    print("|---|---:|---:|")
    for forked in (False, True):
        walls = [w for w, _ in results[forked]]
        cpus = [c for _, c in results[forked]]
        name = "forked from the warm worker" if forked else "started cold"
        print(f"| {name} | {statistics.mean(walls):.2f} | {statistics.mean(cpus):.2f} |")


if __name__ == "__main__":
    main()
