"""Train-tab refresh cost for a long run: metric rows read (and seconds spent) per 1 s tick, before and after.

Before: every tick read every metric row of the selected run (``run_metrics(run_id)``) and rebuilt the curves.
After: a tick reads only the rows it has not seen (``run_metrics(run_id, since_id)``) and keeps the rest in the
page's session state. Both measured in one run, on one run with N metric rows, one new row per tick.

    .venv/bin/python bench/train_tab_refresh.py [--rows 5000] [--ticks 20]
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=5000)
    ap.add_argument("--ticks", type=int, default=20)
    args = ap.parse_args()
    os.environ["FTS_WORKSPACE"] = tempfile.mkdtemp(prefix="fts-bench-refresh-")

    from sqlalchemy import insert

    from core import runs
    from core.config import db_session
    from core.runs import store
    from storage import RunMetric
    from ui.train_runs import run_details

    job = store.submit("train", {"dataset": "x", "name": "long"}, name="long")
    with db_session() as s:
        s.exec(insert(RunMetric), params=[{"run_id": job.id, "step": i, "loss": 1.0 / i, "lr": 1e-4}
                                          for i in range(1, args.rows + 1)])

    def old_tick() -> int:  # what the tab did before: every row, every tick
        rows = runs.run_metrics(job.id)
        loss = [{"step": m.step, "value": m.loss} for m in rows if m.loss is not None]
        lr = [{"step": m.step, "lr": m.lr} for m in rows if m.lr is not None]
        assert len(loss) == len(lr)
        return len(rows)

    step = args.rows
    old_rows, old_s = [], []
    for _ in range(args.ticks):
        step += 1
        store.add_metric(job.id, step=step, loss=0.5, lr=1e-4)
        t = time.perf_counter()
        old_rows.append(old_tick())
        old_s.append(time.perf_counter() - t)

    cache = None
    *_, cache = run_details(str(job.id), cache)  # the page opens: one full read
    first_read = cache["rows_read"]
    new_rows, new_s = [], []
    for _ in range(args.ticks):
        step += 1
        store.add_metric(job.id, step=step, loss=0.5, lr=1e-4)
        t = time.perf_counter()
        *_, cache = run_details(str(job.id), cache)
        new_s.append(time.perf_counter() - t)
        new_rows.append(cache["rows_read"])

    print(f"run with {args.rows:,} metric rows, {args.ticks} ticks, one new row per tick")
    print(f"before: {statistics.mean(old_rows):,.0f} rows read per tick, "
          f"metrics part {statistics.median(old_s)*1e3:.1f} ms")
    print(f"after:  {statistics.mean(new_rows):,.0f} rows read per tick (first open: {first_read:,}), whole tick "
          f"(run, metrics, frames, log) {statistics.median(new_s)*1e3:.1f} ms")
    print(f"rows read per tick: {statistics.mean(old_rows) / max(statistics.mean(new_rows), 1):,.0f}x fewer")


if __name__ == "__main__":
    main()
