"""`python -m core …` — every tab's action is a CLI command too.

    python -m core train --config run.yaml [--wait] [--json]
    python -m core runs list [--json] | show ID [--json] | stop ID | resume ID
                   | continue ID --steps N [--objective O] | logs ID
    python -m core data import PATH ...        (Data tab)
    python -m core estimate --model REF ...    (Estimate tab)
    python -m core evaluate --run ID ...       (Evaluate tab)   python -m core generate --model M --prompt T
    python -m core sweep --config sweep.yaml [--wait] [--json]   python -m core sweeps list | show ID | stop ID
    python -m core prepare-model               (convert the embedded default model once)
    python -m core tensorboard [--port N] | --stop   (the workspace's TensorBoard: every run that reports to it)
    python -m core lineage --run ID [--json]   (what it came from, what was made from it)
    python -m core improve --run ID [--objective dpo|orpo] [--steps N] [--json]   (votes → DPO from the run)

Exit codes: 0 success, 1 the run finished but not successfully, 2 bad input (one-line reason on stderr).
"""
from __future__ import annotations

import argparse
import importlib
import sys

from core.jobconfig import add_flags, choices_of, flag_values
from core.text import fail, print_json
from core.train.config import TrainConfig


def cmd_train(args) -> int:
    from core import runs
    from core.train.config import ConfigError
    from core.train.jobs import submit_training

    try:
        overrides = flag_values(args, args.config_fields)
        if args.config:
            config = TrainConfig.from_file(args.config)
            if overrides:
                config = TrainConfig.from_dict({**config.model_dump(), **overrides})
        else:  # the flags alone (--dataset at least)
            config = TrainConfig.from_dict(overrides)
        run = submit_training(config)
    except (ConfigError, runs.JobError) as exc:
        return fail(str(exc))
    if not args.wait:
        if args.json:
            print_json(runs.run_to_dict(run))
        else:
            print(f"run {run.id} {run.status}  (follow with: python -m core runs show {run.id})")
        return 0

    def progress(r):
        if r.step:
            loss = f" loss {r.last_loss:.4f}" if r.last_loss is not None else ""
            print(f"run {r.id} {r.status} step {r.step}/{r.max_steps}{loss}", file=sys.stderr, flush=True)

    run = _wait(run.id, progress)
    if args.json:
        print_json(runs.run_to_dict(run))
    else:
        print(f"run {run.id} {run.status}" + (f": {run.error}" if run.error else f"  adapter: {run.adapter_path}"))
    return 0 if run.status == runs.RunStatus.succeeded else 1


def _wait(run_id: int, progress):
    """Wait for a run; a database that stops answering (a full disk) ends the wait with the last known state
    instead of a traceback."""
    from sqlalchemy.exc import DBAPIError

    from core import runs
    from core.runs import store

    while True:
        try:
            return runs.wait_for(run_id, on_progress=progress)
        except DBAPIError as exc:
            print(f"warning: the database did not answer ({str(exc).splitlines()[0][:200]}); retrying",
                  file=sys.stderr)
            try:
                run = store.get(run_id)
            except DBAPIError:
                continue
            if run.status.is_finished:
                return run
            import time

            time.sleep(1.0)


def cmd_runs(args) -> int:
    from core import runs
    from core.train.config import ConfigError

    try:
        if args.runs_cmd == "list":
            rows = runs.list_runs(kind=None if args.all else "train")
            if args.tag:
                rows = [r for r in rows if args.tag.lstrip("#").lower() in (r.tags or [])]
            if args.json:
                print_json([runs.run_to_dict(r) for r in rows])
            else:
                print(f"{'id':>4}  {'kind':<8} {'status':<11} {'method':<6} {'step':>11}  {'loss':>8}  name")
                for r in rows:
                    loss = f"{r.last_loss:.4f}" if r.last_loss is not None else "-"
                    print(f"{r.id:>4}  {r.kind:<8} {r.status:<11} {r.method or '-':<6} {r.step:>5}/{r.max_steps:<5}  "
                          f"{loss:>8}  {r.name}" + "".join(f" #{t}" for t in r.tags or []))
            return 0
        if args.runs_cmd == "show":
            run = runs.get_run(args.id)
            d = runs.run_to_dict(run, with_config=True, metrics=runs.run_metrics(run.id))
            if args.json:
                print_json(d)
            else:
                for k, v in d.items():
                    if k not in ("config", "metrics"):
                        print(f"{k:>22}: {v}")
                print(f"{'metrics':>22}: {len(d['metrics'])} rows")
            return 0
        if args.runs_cmd == "stop":
            run = runs.stop(args.id, timeout_s=args.timeout)
        elif args.runs_cmd == "resume":
            run = runs.resume(args.id)
            if run.resume_from_checkpoint and not args.json:
                print(f"resuming from {run.resume_from_checkpoint}", file=sys.stderr)
        elif args.runs_cmd == "continue":
            from core.train.jobs import continue_training

            changes = {}
            if args.reward:
                changes["rewards"] = args.reward
            if args.lr:
                changes["learning_rate"] = args.lr
            for item in args.set or []:
                import yaml

                key, sep, value = item.partition("=")
                if not sep or not key.strip():
                    raise runs.JobError(f"--set takes KEY=VALUE (a TrainConfig field), got {item!r}")
                try:
                    changes[key.strip()] = yaml.safe_load(value)
                except yaml.YAMLError:
                    raise runs.JobError(f"--set {key.strip()}: the value is not valid YAML: {value!r}") from None
            run = continue_training(args.id, args.steps, objective=args.objective, dataset=args.dataset, **changes)
        elif args.runs_cmd == "rename":
            from core.train.jobs import rename_run

            run = rename_run(args.id, args.name)
        elif args.runs_cmd == "tag":
            from core.train.jobs import tag_run

            run = tag_run(args.id, args.tags)
        elif args.runs_cmd == "delete":
            return _delete_run(args)
        elif args.runs_cmd == "compare":
            return _compare_runs(args)
        elif args.runs_cmd == "logs":
            runs.get_run(args.id)  # reconciles, and refuses an unknown id
            print(runs.log_tail(args.id, max_lines=args.lines, max_chars=10**7))
            return 0
        else:  # pragma: no cover - argparse enforces the choices
            return fail(f"unknown runs command {args.runs_cmd}")
    except (runs.JobError, ConfigError) as exc:
        return fail(str(exc))
    if getattr(args, "json", False):
        print_json(runs.run_to_dict(run))
    else:
        print(f"run {run.id} {run.status}")
    return 0


def _compare_runs(args) -> int:
    from core.train import compare

    head, rows = compare.headlines(args.ids)
    dhead, diff = compare.config_diff(args.ids)
    points, notes = compare.curves(args.ids, args.curve, args.x) if args.curve else ([], [])
    if args.json:
        print_json({"headlines": [dict(zip(head, r)) for r in rows],
                     "config_diff": [dict(zip(dhead, r)) for r in diff],
                     **({"curve": args.curve, "x": args.x, "points": points, "notes": notes} if args.curve else {})})
        return 0
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    for r in [head, *rows]:
        print("  ".join(str(v).ljust(w) for v, w in zip(r, widths)))
    print()
    if diff:
        widths = [max(len(str(x)) for x in col) for col in zip(dhead, *diff)]
        for r in [dhead, *diff]:
            print("  ".join(str(v).ljust(w) for v, w in zip(r, widths)))
    else:
        print("their configs are the same")
    for series in dict.fromkeys(p["series"] for p in points):
        xs = [f"{p['x']:g}:{p['value']:.4g}" for p in points if p["series"] == series]
        print(f"\n{series} {args.curve} by {args.x}: " + " ".join(xs))
    for n in notes:
        print(n, file=sys.stderr)
    return 0


def _delete_run(args) -> int:
    from core import runs
    from core.deletion import delete_run
    from core.evaluate import results
    from core.lineage import dependents
    from core.runs import store

    run = runs.get_run(args.id)
    made_from = dependents("run", run.id)["message"] if run.kind == "train" else ""
    if not args.yes:
        made = [f"{c.kind} job #{c.id}" for c in store.children(run.id) if c.kind != "train"]
        n_ev = len(results.list_evaluations(run_id=run.id, limit=10**6))
        print(f"would delete run {run.id} ({run.name}, {run.status}) with {run.output_dir}, {n_ev} evaluation(s)"
              + (f" and {', '.join(made)}" if made else "") + (f" ({made_from})" if made_from else "")
              + "; nothing deleted: add --yes to delete", file=sys.stderr)
        return 2
    if made_from and not args.json:
        print(f"warning: {made_from}", file=sys.stderr)
    gone = delete_run(run.id)
    if args.json:
        print_json(gone)
    else:
        print(f"deleted run {run.id}" + (f" and jobs {', '.join(map(str, gone['runs'][1:]))}" if gone["runs"][1:]
                                         else "") + f"; {gone['evaluations']} evaluation(s)")
    return 0


def cmd_tensorboard(args) -> int:
    """Start the workspace's TensorBoard (a job on the runs core; it keeps running after this command returns) and
    print its URL, or stop it."""
    from core import runs
    from core.train import viewer

    try:
        if args.stop:
            job = viewer.stop_viewer()
            if job is None:
                print("no TensorBoard is running", file=sys.stderr)
                return 0
            if args.json:
                print_json(runs.run_to_dict(job))
            else:
                print(f"TensorBoard (job {job.id}) {job.status}")
            return 0
        job = viewer.start_viewer(args.port)
    except runs.JobError as exc:
        return fail(str(exc))
    url = viewer.url_of(job)
    if args.json:
        print_json({**runs.run_to_dict(job), "url": url, "logdir": (job.config or {}).get("logdir")})
    else:
        print(f"TensorBoard (job {job.id}) on {url} for {(job.config or {}).get('logdir')}  "
              "(stop it with: python -m core tensorboard --stop)")
    return 0


def cmd_lineage(args) -> int:
    from core.lineage import LineageError, lineage, lineage_text

    kind, key = next((k, getattr(args, k)) for k in ("run", "dataset", "evaluation", "export", "deployment")
                     if getattr(args, k) is not None)
    try:
        lin = lineage(kind, key)
    except LineageError as exc:
        return fail(str(exc))
    if args.json:
        print_json(lin)
    else:
        print(lineage_text(lin))
    return 0


def cmd_improve(args) -> int:
    from core import runs
    from core.data.errors import DatasetError
    from core.train.config import ConfigError
    from core.train.improve import improve_from_feedback

    try:
        result = improve_from_feedback(args.run, objective=args.objective, steps=args.steps, source=args.source)
    except (DatasetError, runs.JobError, ConfigError) as exc:
        return fail(str(exc))
    run = result["run"]
    if args.wait:
        run = _wait(run.id, lambda r: None)
    out = {"dataset_id": result["dataset"].dataset_id, "run_id": run.id, "status": str(run.status),
           "rows": result["dataset"].rows, "left_out": result["dataset"].left_out,
           "dataset_created": result["dataset"].created, "continued_from": args.run}
    if args.json:
        print_json(out)
    else:
        print(f"{result['dataset'].message}\nrun {run.id} {run.status}: {out['rows']} pairs, continued from run "
              f"{args.run}  (follow with: python -m core runs show {run.id})")
    return 0 if not args.wait or run.status == runs.RunStatus.succeeded else 1


def cmd_prepare_model(args) -> int:
    from core.models import ModelNotFoundError, ensure_default_model

    try:
        path = ensure_default_model(progress=lambda m: print(m, file=sys.stderr))
    except ModelNotFoundError as exc:
        return fail(str(exc))
    print(path)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m core", description="Finetune Studio command line")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="queue a training run from a YAML TrainConfig and / or one flag per field")
    p.add_argument("--config", default=None, help="YAML file with TrainConfig fields (the flags below override it)")
    fields = p.add_argument_group("TrainConfig fields (each overrides the YAML's)")
    p.add_argument("--wait", action="store_true", help="block until the run finishes, printing progress to stderr")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_train, config_fields=add_flags(fields, TrainConfig))

    runs = sub.add_parser("runs", help="list, inspect, stop and resume runs")
    rs = runs.add_subparsers(dest="runs_cmd", required=True)
    q = rs.add_parser("list")
    q.add_argument("--all", action="store_true", help="every kind of job (evaluations too), not only training runs")
    q.add_argument("--tag", default=None, help="only the runs with this tag")
    q.add_argument("--json", action="store_true")
    q = rs.add_parser("show")
    q.add_argument("id", type=int)
    q.add_argument("--json", action="store_true")
    q = rs.add_parser("stop")
    q.add_argument("id", type=int)
    q.add_argument("--timeout", type=float, default=None,
                   help="seconds before a hard kill (default FTS_STOP_TIMEOUT_S)")
    q.add_argument("--json", action="store_true")
    q = rs.add_parser("resume")
    q.add_argument("id", type=int)
    q.add_argument("--json", action="store_true")
    q = rs.add_parser("continue", help="train a finished run's adapter for more steps (a new run)")
    q.add_argument("id", type=int)
    q.add_argument("--steps", type=int, required=True)
    q.add_argument("--objective", choices=choices_of(TrainConfig, "objective"), default=None,
                   help="train on with another objective (SFT then DPO / GRPO); default: the run's own")
    q.add_argument("--dataset", default=None, help="another dataset id or file (DPO needs preference pairs)")
    q.add_argument("--reward", action="append", default=None, help="GRPO reward (repeatable; default: the run's, "
                   "or field_accuracy)")
    q.add_argument("--lr", type=float, default=None, help="another learning rate")
    q.add_argument("--set", action="append", default=None, metavar="KEY=VALUE",
                   help="change any other TrainConfig field (repeatable), e.g. --set max_completion_length=64")
    q.add_argument("--json", action="store_true")
    q = rs.add_parser("logs")
    q.add_argument("id", type=int)
    q.add_argument("--lines", type=int, default=100)
    q = rs.add_parser("compare", help="training runs side by side: headline numbers and the config fields that differ")
    q.add_argument("ids", type=int, nargs="+")
    q.add_argument("--curve", default=None, help="also print this curve's points per run (train loss, eval loss, "
                   "reward margin, …)")
    q.add_argument("--x", default="step", choices=["step", "tokens seen"])
    q.add_argument("--json", action="store_true")
    q = rs.add_parser("rename", help="give a training run a new name")
    q.add_argument("id", type=int)
    q.add_argument("name")
    q.add_argument("--json", action="store_true")
    q = rs.add_parser("tag", help="set a training run's tags (they replace the old ones; none clears them)")
    q.add_argument("id", type=int)
    q.add_argument("tags", nargs="*")
    q.add_argument("--json", action="store_true")
    q = rs.add_parser("delete", help="delete an ended training run: its files, metrics, evaluations and exports")
    q.add_argument("id", type=int)
    q.add_argument("--yes", action="store_true", help="do it (without --yes: say what would go, delete nothing)")
    q.add_argument("--json", action="store_true")
    runs.set_defaults(func=cmd_runs)

    p = sub.add_parser("tensorboard", help="start (or find) the workspace's TensorBoard on a loopback port and print "
                       "its URL; it runs until stopped")
    p.add_argument("--port", type=int, default=None, help="the port on 127.0.0.1 (default: a free one)")
    p.add_argument("--stop", action="store_true", help="stop the running TensorBoard")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_tensorboard)

    p = sub.add_parser("lineage", help="what a dataset, run, evaluation, export or deployment came from and what was "
                       "made from it (ids, hashes, dates)")
    which = p.add_mutually_exclusive_group(required=True)
    for k, what in (("run", "a training run"), ("dataset", "a dataset version"), ("evaluation", "an evaluation"),
                    ("export", "an export job"), ("deployment", "a deployment")):
        which.add_argument(f"--{k}", type=int, default=None, metavar="ID", help=what)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_lineage)

    p = sub.add_parser("improve", help="improve a run from feedback: its votes (or its evaluation's corrections) "
                       "become preference pairs and a DPO / ORPO run continues from it")
    p.add_argument("--run", type=int, required=True, help="the finished training run to improve")
    p.add_argument("--objective", choices=["dpo", "orpo"], default="dpo")
    p.add_argument("--steps", type=int, default=None, help="training steps of the new run (default 20)")
    p.add_argument("--source", choices=["votes", "corrections"], default="votes",
                   help="votes: the Playground votes on the run; corrections: its latest evaluation's 'tuned worse' "
                   "rows (those are its held-out rows: an evaluation on them afterwards is no longer held out)")
    p.add_argument("--wait", action="store_true", help="block until the new run finishes")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_improve)

    p = sub.add_parser("prepare-model", help="convert the embedded default model to safetensors (once)")
    p.set_defaults(func=cmd_prepare_model)

    # the other tabs' commands register themselves
    for module in ("core.data.cli", "core.estimate", "core.evaluate.cli", "core.deploy.cli", "core.sweep.cli",
                   "core.users"):
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            continue
        register = getattr(mod, "register_cli", None)
        if register is not None:
            register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from core.text import TerminalSafeWriter

    parser = build_parser()
    args = parser.parse_args(argv)
    saved = sys.stdout, sys.stderr
    # names, errors and logs come from people and models: a control character prints as an escape, never raw
    sys.stdout, sys.stderr = TerminalSafeWriter(sys.stdout), TerminalSafeWriter(sys.stderr)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    finally:
        sys.stdout, sys.stderr = saved


if __name__ == "__main__":
    sys.exit(main())
