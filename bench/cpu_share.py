"""A CPU training beside other work on its host: seconds per step of the quick start's training (the default model,
its own settings) through the runs core, alone, beside one busy process, and two at once — with the threads
following the host's free cores (core/train/cpu_share.py) and with them fixed, and with OpenMP's threads sleeping at
a barrier (``OMP_WAIT_POLICY=PASSIVE``, now the jobs' default) or left to libgomp's default (they spin first).

    .venv/bin/python bench/cpu_share.py [--steps 12]

Each training runs ``--steps`` steps; a step's time is the mean over the steps after the second (the busy process
starts then). The busy process is a Python loop at the default priority (workers run at nice 10); its rate is
reported against its rate alone, so what the training gives up and what the neighbour gets are both seen. Jobs start
cold (``FTS_WARM_WORKER=0``): the libraries read OpenMP's setting when they are imported. One JSON line per case.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _spin(stop, counter) -> None:
    n = 0
    while not stop.is_set():
        sum(range(1000))
        n += 1
        if n % 200 == 0:
            with counter.get_lock():
                counter.value += 200


def neighbour_rate(seconds: float) -> float:
    stop, counter = mp.Event(), mp.Value("q", 0)
    p = mp.Process(target=_spin, args=(stop, counter))
    p.start()
    time.sleep(seconds)
    stop.set()
    p.join()
    return counter.value / seconds


def _step_times(run_id: int) -> dict[int, float]:
    from core import runs

    return {m.step: m.wall_time_s for m in runs.run_metrics(run_id) if m.loss is not None}


def case(name: str, steps: int, *, share: bool, passive: bool, trainings: int, busy: bool, alone_rate: float,
         dataset_id: int) -> dict:
    from core import quickstart, runs
    from core.train.jobs import submit_training

    os.environ["FTS_CPU_SHARE"] = "1" if share else "0"
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE" if passive else ""
    os.environ["FTS_MAX_CONCURRENT_RUNS"] = str(trainings)
    cfg = quickstart.train_config(dataset_id).model_copy(update={"max_steps": steps, "name": name})
    ids = [submit_training(cfg).id for _ in range(trainings)]
    while min(max(_step_times(i), default=0) for i in ids) < 2:  # every training past its second step
        time.sleep(0.5)
    stop, counter = mp.Event(), mp.Value("q", 0)
    spinner = None
    t0 = time.time()
    if busy:
        spinner = mp.Process(target=_spin, args=(stop, counter))
        spinner.start()
    for i in ids:
        runs.wait_for(i, timeout_s=3600, poll_s=0.5)
    elapsed = time.time() - t0
    if spinner is not None:
        stop.set()
        spinner.join()
    per_step = []
    changes = []
    for i in ids:
        t = _step_times(i)
        per_step.append(round((t[steps] - t[2]) / (steps - 2), 2))
        log = (Path(os.environ["FTS_WORKSPACE"]) / "runs" / str(i) / "worker.log").read_text()
        changes.append(sum(1 for line in log.splitlines() if "cpu threads " in line and "->" in line))
    out = {"case": name, "threads_follow_load": share, "omp_wait_policy": "PASSIVE" if passive else "default",
           "trainings": trainings, "busy_neighbour": busy, "s_per_step": per_step,
           "thread_changes_logged": changes, "wall_s": round(elapsed, 1)}
    if busy:
        out["neighbour_rate_vs_alone"] = round(counter.value / elapsed / alone_rate, 2)
    print(json.dumps(out), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--only", default="", help="run only the cases whose name has this text (e.g. 'two at once')")
    ap.add_argument("--reverse", action="store_true", help="run the cases in the reverse order")
    a = ap.parse_args()
    ws = Path(tempfile.mkdtemp(prefix="fts-cpu-share-"))
    models = REPO / "workspace" / "models"
    if models.is_dir():
        (ws / "models").symlink_to(models)
    os.environ.update(FTS_WORKSPACE=str(ws), FTS_WARM_WORKER="0")
    os.environ.pop("DATABASE_URL", None)
    from core import quickstart

    dataset_id = quickstart.load_demo().id
    alone_rate = neighbour_rate(5)
    print(json.dumps({"neighbour_alone_loops_per_s": round(alone_rate), "cores": len(os.sched_getaffinity(0))}))
    kw = dict(steps=a.steps, alone_rate=alone_rate, dataset_id=dataset_id)
    cases = [("alone, threads follow", dict(share=True, passive=True, trainings=1, busy=False)),
             ("alone, fixed", dict(share=False, passive=True, trainings=1, busy=False)),
             ("beside a busy process, threads follow", dict(share=True, passive=True, trainings=1, busy=True)),
             ("beside a busy process, fixed", dict(share=False, passive=True, trainings=1, busy=True)),
             ("beside a busy process, fixed, spinning", dict(share=False, passive=False, trainings=1, busy=True)),
             ("two at once, threads follow", dict(share=True, passive=True, trainings=2, busy=False)),
             ("two at once, fixed", dict(share=False, passive=True, trainings=2, busy=False))]
    for name, settings in (reversed(cases) if a.reverse else cases):
        if a.only in name:
            case(name, **settings, **kw)

if __name__ == "__main__":
    main()
