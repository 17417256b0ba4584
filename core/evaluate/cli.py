"""``python -m core generate …`` and ``python -m core evaluate …`` (the Playground's and the Evaluate tab's actions).

    python -m core generate --model default|RUN_ID|PATH --prompt TEXT [--system TEXT] [--max-new-tokens N] [--json]
    python -m core evaluate --run ID [--dataset ID] [--split test|validation|train|all] [--limit N] [--json]
                            [--multiple-choice] [--style arc|mmlu|native] [--native-task T] [--num-fewshot N]
                            [--fewshot-split SPLIT]
    python -m core evaluate --model PATH --base REF --dataset ID ...
    python -m core evaluations list [--json] | show ID [--json] [--examples N] | export ID --format csv|jsonl
    python -m core judge (--votes | --evaluation ID) --judge MODEL [--mode pairwise|rubric] [--rubric TEXT]
                         [--limit N] [--json]

Exit codes: 0 ok, 1 the evaluation ran but did not succeed, 2 bad input (one line on stderr saying why).
"""
from __future__ import annotations

import sys

from core.evaluate.config import EvalConfig
from core.jobconfig import add_flags, flag_values
from core.text import fail, print_json

# the flags of `evaluate` that are EvalConfig fields (the rest: --multiple-choice, --json); mode follows the flags
EVAL_FLAGS = ("run_id", "tuned", "base", "dataset", "split", "limit", "seed", "max_new_tokens", "temperature", "top_p",
              "batch_size", "mc_style", "mc_task", "num_fewshot", "fewshot_split", "lm_eval_task", "name")



def _wait_with_progress(job_id: int, what: str):
    """Wait for a job, one ``<what> job N status step/max`` line on stderr per progress report."""
    from core import runs

    def progress(r):
        if r.max_steps:
            print(f"{what} job {r.id} {r.status} {r.step}/{r.max_steps}", file=sys.stderr, flush=True)

    return runs.wait_for(job_id, on_progress=progress)


def cmd_generate(args) -> int:
    from core.deploy.sources import resolve_source_or_deployment
    from core.generate import GenerateError, GenSettings, generate

    messages = ([{"role": "system", "content": args.system}] if args.system else []) + [
        {"role": "user", "content": args.prompt}]
    try:
        source = resolve_source_or_deployment(args.model)  # deployment:ID too (its endpoint answers)
        result = generate(source, messages, GenSettings(max_new_tokens=args.max_new_tokens,
                                                        temperature=args.temperature, top_p=args.top_p,
                                                        seed=args.seed))
    except GenerateError as exc:
        return fail(str(exc))
    if args.json:
        print_json({"model": args.model, **result.as_dict()})
    else:
        print(result.text)
    return 0


def cmd_evaluate(args) -> int:
    from core import runs
    from core.evaluate import results
    from core.evaluate.config import EvalConfigError
    from core.evaluate.submit import submit_evaluation

    data = flag_values(args, EVAL_FLAGS)
    if args.multiple_choice or args.mc_style or args.mc_task or args.num_fewshot is not None:
        data["mode"] = "multiple_choice"
    elif args.fewshot_split:
        return fail("--fewshot-split goes with --num-fewshot (multiple choice)")
    if args.lm_eval_task:
        data["mode"] = "lm_eval"
    if args.limit is not None:  # unset: 200 rows for generation, every row for multiple choice
        data["limit"] = args.limit or None
    try:
        cfg = EvalConfig.from_dict(data)
        job = submit_evaluation(cfg)
    except (EvalConfigError, runs.JobError) as exc:
        return fail(str(exc))

    job = _wait_with_progress(job.id, "evaluation")
    ev = results.by_job(job.id)
    if job.status != runs.RunStatus.succeeded or ev is None:
        if args.json:
            print_json({"job": runs.run_to_dict(job)})
        else:
            print(f"evaluation job {job.id} {job.status}: {job.error}", file=sys.stderr)
        return 1
    if args.json:
        print_json({**results.to_dict(ev), "job_id": job.id})
    else:
        _print_table(results.to_dict(ev))
    return 0


def _print_table(d: dict) -> None:
    print(f"evaluation {d['evaluation_id']}: {d['tuned_model']} vs {d['base_model']} on {d['dataset']} "
          f"[{d['split']}], n={d['n']}")
    keys = [k for k in d["base"] if isinstance(d["base"][k], (int, float)) and not isinstance(d["base"][k], bool)]
    print(f"  {'metric':<18} {'base':>10} {'tuned':>10} {'delta':>10}")
    for k in keys:
        b, t = d["base"].get(k), d["tuned"].get(k)
        dl = d["delta"].get(k)
        fmt = (lambda v: "-" if v is None else f"{v:.4g}")
        print(f"  {k:<18} {fmt(b):>10} {fmt(t):>10} {fmt(dl):>10}")
    if d.get("examples_per_s"):
        print(f"  speed: {d['examples_per_s']:.3g} examples/s (base + tuned, {d.get('seconds'):.3g} s)")
    for note in d.get("notes") or []:
        print(f"  note: {note}")


def cmd_evaluations(args) -> int:
    from core.evaluate import results

    try:
        if args.ev_cmd == "list":
            rows = results.list_evaluations()
            if args.json:
                print_json([results.to_dict(e) for e in rows])
            else:
                for e in rows:
                    print(f"{e.id:>4}  run {e.run_id or '-':>4}  {e.kind:<15} {e.dataset_ref:<10} {e.split:<10} "
                          f"n={e.n:<5} {e.headline}: {e.headline_base} -> {e.headline_tuned}")
            return 0
        ev = results.get(args.id)
        if args.ev_cmd == "show":
            d = results.to_dict(ev, with_examples=args.examples)
            print_json(d) if args.json else _print_table(d)
            return 0
        sys.stdout.buffer.write(results.export(ev, args.format, args.filter))
        return 0
    except (results.EvaluationNotFound, ValueError) as exc:
        return fail(str(exc))


def cmd_judge(args) -> int:
    from core import runs
    from core.evaluate.judge import JudgeConfigError, agreement_line, result_dict, submit_judge

    data = {"judge": args.judge, "mode": args.mode, "rubric": args.rubric,
            "evaluation_id": args.evaluation, "limit": args.limit or None}
    try:
        job = submit_judge(data)
    except (JudgeConfigError, runs.JobError) as exc:
        return fail(str(exc))

    job = _wait_with_progress(job.id, "judge")
    if job.status != runs.RunStatus.succeeded:
        if args.json:
            print_json({"job": runs.run_to_dict(job)})
        else:
            print(f"judge job {job.id} {job.status}: {job.error}", file=sys.stderr)
        return 1
    d = result_dict(job)
    if args.json:
        print_json(d)
        return 0
    print(f"judge {d['judge']} ({d['mode']}) on {d['on']}: {agreement_line(job.final_metrics)}")
    if d.get("warning"):
        print(f"  warning: {d['warning']}")
    for model, sc in (d.get("scores") or {}).items():
        print(f"  {model}: " + ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
                                         for k, v in sc.items()))
    return 0


def register_cli(sub) -> None:
    p = sub.add_parser("generate", help="one answer from a model (base, a run, a folder)")
    p.add_argument("--model", default="default", help="default | RUN_ID | run:ID | a model or adapter folder | Hub id")
    p.add_argument("--prompt", required=True)
    p.add_argument("--system", default=None)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("evaluate", help="base vs fine-tuned on held-out data (a job; waits for it)")
    add_flags(p, EvalConfig, fields=EVAL_FLAGS, help_text={
        "limit": "evaluate a sample of at most N rows (0: all; default 200 for generation, all for multiple choice)"})
    p.add_argument("--multiple-choice", action="store_true", help="score choices by log-likelihood (ARC/MMLU way)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("judge", help="an LLM judge over the votes or an evaluation, with its agreement with people "
                                     "(a job; waits for it)")
    on = p.add_mutually_exclusive_group(required=True)
    on.add_argument("--votes", action="store_true", help="judge the Playground's votes (the pairs people voted on)")
    on.add_argument("--evaluation", type=int, metavar="ID", help="judge an evaluation's examples (base vs tuned); "
                                                                 "the votes still measure the judge")
    p.add_argument("--judge", required=True, metavar="MODEL",
                   help="default | RUN_ID | run:ID | a model or adapter folder | deployment:ID | endpoint (the "
                        "admin's FTS_JUDGE_ENDPOINT)")
    p.add_argument("--mode", default="pairwise", choices=["pairwise", "rubric"])
    p.add_argument("--rubric", default=None, help="rubric mode: what a 5 and a 1 look like")
    p.add_argument("--limit", type=int, default=50, help="at most N votes and N examples (0: all; default 50)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_judge)

    p = sub.add_parser("evaluations", help="stored evaluations")
    es = p.add_subparsers(dest="ev_cmd", required=True)
    q = es.add_parser("list")
    q.add_argument("--json", action="store_true")
    q = es.add_parser("show")
    q.add_argument("id", type=int)
    q.add_argument("--examples", type=int, default=0, help="include the first N per-example records")
    q.add_argument("--json", action="store_true")
    q = es.add_parser("export")
    q.add_argument("id", type=int)
    q.add_argument("--format", default="jsonl", choices=["jsonl", "csv"])
    q.add_argument("--filter", default="all", help="all | tuned better | tuned worse | both wrong | changed")
    p.set_defaults(func=cmd_evaluations)
