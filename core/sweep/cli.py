"""`python -m core sweep --config sweep.yaml [--wait] [--json]` and `python -m core sweeps list|show|stop|continue`.

``sweep`` queues the sweep's driver and returns (``--wait``: follows it to its end, one line per finished trial on
stderr). ``--json`` prints the sweep: its job fields, ``trials`` (number, run_id, params, value, state, …) and
``best_run``. Exit codes: 0 done (or queued), 1 the sweep ended but not succeeded, 2 bad input (one line on stderr).
"""
from __future__ import annotations

import sys
import time

from core.text import fail, print_json


def _summary_line(d: dict) -> str:
    done = sum(t["state"] in ("complete", "pruned", "failed") for t in d["trials"])
    best = (f"  best run {d['best_run']} {d['objective']} {d['best_value']:.4f}" if d["best_run"] is not None
            else "")
    return f"sweep {d['id']} {d['status']}: {done}/{d['trials_planned']} trials done{best}"


def cmd_sweep(args) -> int:
    from core.runs import JobError
    from core.sweep.jobs import submit_sweep, sweep_to_dict
    from core.sweep.spec import SweepError, load_sweep_file

    try:
        spec = load_sweep_file(args.config)
        if args.name:
            spec["name"] = args.name
        run = submit_sweep(spec)
    except (SweepError, JobError) as exc:
        return fail(str(exc))
    if args.wait:
        run = _wait(run.id)
    d = sweep_to_dict(run.id)
    if args.json:
        print_json(d)
    else:
        print(_summary_line(d) + (f"  (follow with: python -m core sweeps show {run.id})" if not args.wait else ""))
    if args.wait:
        return 0 if d["status"] == "succeeded" else 1
    return 0


def _wait(sweep_id: int):
    from core import runs
    from core.sweep.jobs import sweep_to_dict

    told: set[int] = set()
    while True:
        run = runs.get_run(sweep_id)
        runs.dispatch()
        d = sweep_to_dict(run)
        for t in d["trials"]:
            if t["state"] in ("complete", "pruned", "failed") and t["number"] not in told:
                told.add(t["number"])
                value = f" {d['objective']} {t['value']:.4f}" if t["value"] is not None else ""
                print(f"trial {t['number']} (run {t['run_id']}) {t['state']}{value} {t['params']}", file=sys.stderr,
                      flush=True)
        if run.status.is_finished:
            return run
        time.sleep(1.0)


def cmd_sweeps(args) -> int:
    from core import runs
    from core.runs import JobError
    from core.sweep import jobs

    try:
        if args.sweeps_cmd == "list":
            rows = [jobs.sweep_to_dict(r) for r in jobs.list_sweeps()]
            if args.json:
                print_json(rows)
            else:
                for d in rows:
                    print(f"{d['id']:>4}  {d['name']:<24} " + _summary_line(d).split(" ", 2)[2])
            return 0
        if args.sweeps_cmd == "show":
            d = jobs.sweep_to_dict(args.id)
            if args.json:
                print_json(d)
                return 0
            print(_summary_line(d))
            for t in d["trials"]:
                value = f"{t['value']:.4f}" if t["value"] is not None else "-"
                print(f"  trial {t['number']:>3}  run {t['run_id'] or '-':>5}  {t['state']:<9} {value:>9}  "
                      f"{t['params']}" + (f"  ({t['note']})" if t.get("note") else ""))
            return 0
        if args.sweeps_cmd == "stop":
            run = jobs.stop_sweep(args.id, timeout_s=args.timeout)
        elif args.sweeps_cmd == "continue":
            run = jobs.continue_best(args.id, args.steps)
            if args.json:
                print_json(runs.run_to_dict(run))
            else:
                print(f"run {run.id} {run.status} (continues the best trial of sweep {args.id})")
            return 0
        else:  # pragma: no cover - argparse enforces the choices
            return fail(f"unknown sweeps command {args.sweeps_cmd}")
    except (JobError, ValueError) as exc:
        return fail(str(exc))
    if args.json:
        print_json(jobs.sweep_to_dict(run.id))
    else:
        print(f"sweep {run.id} {run.status}")
    return 0


def register_cli(sub) -> None:
    p = sub.add_parser("sweep", help="a hyperparameter sweep (Optuna) from a sweep YAML: trials are training runs")
    p.add_argument("--config", required=True, help="the sweep file: name, base, search, objective, trials, parallel")
    p.add_argument("--name", default=None, help="the sweep's name (overrides the file's)")
    p.add_argument("--wait", action="store_true", help="follow the sweep to its end (a line per trial on stderr)")
    p.add_argument("--json", action="store_true", help="print the sweep: trials (run id, params, value, state) and "
                   "best_run")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("sweeps", help="list, show, stop sweeps; continue a sweep's best trial")
    ss = p.add_subparsers(dest="sweeps_cmd", required=True)
    q = ss.add_parser("list")
    q.add_argument("--json", action="store_true")
    q = ss.add_parser("show")
    q.add_argument("id", type=int)
    q.add_argument("--json", action="store_true")
    q = ss.add_parser("stop", help="stop the sweep and its running trials (with checkpoints; `runs resume ID` "
                      "resumes it)")
    q.add_argument("id", type=int)
    q.add_argument("--timeout", type=float, default=None, help="seconds before a hard kill of the driver")
    q.add_argument("--json", action="store_true")
    q = ss.add_parser("continue", help="train the best trial on for N more steps (a new run from its adapter)")
    q.add_argument("id", type=int)
    q.add_argument("--steps", type=int, required=True)
    q.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_sweeps)
