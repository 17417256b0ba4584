"""``python -m core data import|list|show|stats|from-votes|from-evaluation`` — the Data tab's actions on the command
line, and preference data from people (the Playground's votes, an evaluation's corrections: core.data.feedback).

Output with ``--json`` is stable: ``import`` prints ``ImportResult.to_dict()`` (dataset_id, name, format, kind,
total_rows, kept, dropped, problems, created, splits, path, content_hash, token_stats, notes, message);
``from-votes`` / ``from-evaluation`` print ``FeedbackResult.to_dict()`` (dataset_id, name, rows, left_out,
considered, contradictory_pairs, created, splits, message).
Exit codes: 0 success, 2 bad or unreadable input (one line on stderr: ``error: <reason>``).
"""
from __future__ import annotations

import argparse
import json
import sys

from core.data.formats import FORMATS
from core.text import fail, print_json


def _parse_kv(items: list[str] | None, what: str) -> dict[str, str]:
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"{what} must look like KEY=VALUE, got {item!r}")
        out[key.strip()] = value
    return out


def cmd_import(args) -> int:
    from core.data import DatasetError, SplitSpec, import_dataset

    try:
        column_map = _parse_kv(args.map, "--map")
        template_values = _parse_kv(args.fill, "--fill")
        val = args.val if args.val is not None else min(0.1, max(0.0, round(1.0 - args.test, 9)))  # --test 1: all
        spec = SplitSpec(validation=val, test=args.test, seed=args.seed, use_column=not args.ignore_split_column)
        drop = (True if args.drop == "all"
                else (False if args.drop == "none" else [c for c in args.drop.split(",") if c]))
        result = import_dataset(
            args.path, name=args.name, format=args.format, column_map=column_map or None, split=spec,
            drop_invalid=drop, template_values=template_values or None,
            model=None if args.model == "none" else args.model, max_length=args.max_length,
        )
    except (DatasetError, ValueError) as exc:
        return fail(str(exc))
    if args.json:
        print_json(result.to_dict())
    else:
        print(result.message)
        for p in result.problems:
            rows = ", ".join(map(str, p["rows"]))
            more = "…" if p["count"] > len(p["rows"]) else ""
            print(f"  {p['action']:>7} {p['count']:>6} × {p['title']} (rows {rows}{more})")
        if result.token_stats:
            s = result.token_stats
            print(f"  tokens ({s['model']}): total {s['total_tokens']:,}, mean {s['mean']}, p95 {s['p95']}, "
                  f"max {s['max']}, {s['over_max_length']} over {s['max_length']}")
        for note in result.notes:
            print(f"  note: {note}")
    return 0


def cmd_list(args) -> int:
    from core.data.stored import list_datasets
    from core.data.views import dataset_summary

    items = [dataset_summary(ds) for ds in list_datasets()]
    if args.json:
        keys = ("id", "name", "format", "kind", "rows", "splits", "content_hash", "created_at")
        print_json([{k: d[k] for k in keys} for d in items])
        return 0
    if not items:
        print("no datasets yet: python -m core data import PATH")
        return 0
    print(f"{'id':>4}  {'name':<28} {'format':<18} {'kind':<15} {'rows':>7}  train/val/test")
    for d in items:
        sp = d["splits"] or {}
        print(f"{d['id']:>4}  {d['name'][:28]:<28} {d['format']:<18} {d['kind']:<15} {d['rows']:>7}  "
              f"{sp.get('train', 0)}/{sp.get('validation', 0)}/{sp.get('test', 0)}")
    return 0


def cmd_show(args) -> int:
    from core.data import DatasetError
    from core.data.stored import get_dataset, read_split
    from core.data.views import dataset_summary

    try:
        ds = get_dataset(args.id)
        summary = dataset_summary(ds)
        if args.rows:
            summary["sample_rows"] = read_split(ds, "train")[: args.rows]
    except DatasetError as exc:
        return fail(str(exc))
    if args.json:
        print_json(summary)
    else:
        for key in ("id", "name", "format", "kind", "rows", "splits", "source", "path", "created_at", "token_stats"):
            print(f"{key:>12}: {summary[key]}")
        for p in summary["problems"]:
            print(f"{'problem':>12}: {p['action']} {p['count']} × {p['title']} (rows {p['rows']})")
        for row in summary.get("sample_rows", []):
            print(json.dumps(row, ensure_ascii=False)[:400])
    return 0


def cmd_stats(args) -> int:
    from core.data import DatasetError
    from core.data.views import compute_token_stats

    try:
        out = compute_token_stats(args.id, args.model, args.max_length, save=not args.no_save)
    except DatasetError as exc:
        return fail(str(exc))
    except Exception as exc:  # noqa: BLE001 - CLI reports any tokenizer load failure (ModelNotFoundError, OSError)
        return fail(f"cannot count tokens with '{args.model}': {exc}")
    if args.json:
        print_json(out)
    else:
        for k, v in out["token_stats"].items():
            print(f"{k:>16}: {v}")
    return 0


def _print_feedback(result, as_json: bool) -> int:
    if as_json:
        print_json(result.to_dict())
    else:
        print(result.message)
    return 0


def cmd_from_votes(args) -> int:
    from core.data.errors import DatasetError
    from core.data.feedback import preference_from_votes

    try:
        result = preference_from_votes(model=args.model, since=args.since, min_votes=args.min_votes, name=args.name,
                                       tokenizer=None if args.tokenizer == "none" else args.tokenizer)
    except DatasetError as exc:
        return fail(str(exc))
    return _print_feedback(result, args.json)


def cmd_from_evaluation(args) -> int:
    from core.data.errors import DatasetError
    from core.evaluate.corrections import corrections_from_evaluation, parse_rows

    try:
        edits = {int(k) if k.strip().isdigit() else k: v for k, v in _parse_kv(args.edit, "--edit").items()}
        bad = next((k for k in edits if not isinstance(k, int)), None)
        if bad is not None:
            raise DatasetError(f"--edit must look like ROW=ANSWER with ROW an example number, got {bad!r}")
        result = corrections_from_evaluation(args.evaluation, which=args.filter, rows=parse_rows(args.rows),
                                             edits=edits, reject=args.reject, name=args.name,
                                             tokenizer=None if args.tokenizer == "none" else args.tokenizer)
    except (DatasetError, ValueError) as exc:
        return fail(str(exc))
    return _print_feedback(result, args.json)


def register_cli(subparsers) -> None:
    """Add ``data import|list|show|stats|from-votes|from-evaluation`` to ``python -m core``."""
    data = subparsers.add_parser("data", help="import, list and inspect datasets")
    ds = data.add_subparsers(dest="data_command", required=True)

    p = ds.add_parser("import", help="import a data file or Hub dataset as a dataset version")
    p.add_argument("path", help="file (.json/.jsonl/.csv/.tsv/.parquet/.txt) or Hub dataset id (owner/name)")
    p.add_argument("--format", default="auto", choices=("auto",) + FORMATS)
    p.add_argument("--name", default=None)
    p.add_argument("--map", action="append", metavar="FIELD=COLUMN",
                   help="column mapping, e.g. prompt=question (repeatable)")
    p.add_argument("--fill", action="append", metavar="NAME=VALUE", help="fill {{NAME}} placeholders (repeatable)")
    p.add_argument("--val", type=float, default=None,
                   help="validation fraction (default 0.1, or what --test leaves: --test 1 puts every row in test)")
    p.add_argument("--test", type=float, default=0.0, help="test fraction (default 0; 1 = every row)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--ignore-split-column", action="store_true",
                   help="split by ratio even if the data has a split column")
    p.add_argument("--drop", default="all",
                   help="'all' (drop every row with a problem), 'none', or problem codes: duplicate,too_long,...")
    p.add_argument("--model", default="default", help="tokenizer for token stats ('none' to skip)")
    p.add_argument("--max-length", type=int, default=2048)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_import)

    p = ds.add_parser("list", help="list stored datasets")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_list)

    p = ds.add_parser("show", help="show one dataset")
    p.add_argument("id")
    p.add_argument("--rows", type=int, default=0, help="also print the first N training rows")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_show)

    p = ds.add_parser("stats", help="token-length statistics with a model's tokenizer")
    p.add_argument("id")
    p.add_argument("--model", default="default")
    p.add_argument("--max-length", type=int, default=2048)
    p.add_argument("--no-save", action="store_true", help="don't store the stats on the dataset")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_stats)

    p = ds.add_parser("from-votes", help="the Playground's blind A/B votes as a preference dataset (DPO / ORPO)")
    p.add_argument("--model", default=None, help="only votes with this model on a side (default, run:7, a folder)")
    p.add_argument("--since", default=None, help="only votes cast on or after this date (2025-01-31, UTC)")
    p.add_argument("--min-votes", type=int, default=1, help="a pair needs at least N votes for one answer or the other")
    p.add_argument("--name", default=None)
    p.add_argument("--tokenizer", default="default", help="tokenizer for token stats ('none' to skip)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_from_votes)

    p = ds.add_parser("from-evaluation", help="an evaluation's examples as corrections: chosen = the reference (or "
                                              "your edit), rejected = the model's answer")
    p.add_argument("--evaluation", required=True, metavar="ID")
    p.add_argument("--filter", default="all", help="all | tuned_better | tuned_worse | both_wrong | changed")
    p.add_argument("--rows", default=None, help="example numbers (the '#' column), e.g. 1,4,7 (default: every row "
                                                "the filter shows)")
    p.add_argument("--edit", action="append", metavar="ROW=ANSWER",
                   help="use this answer as the chosen one for example ROW instead of the reference (repeatable)")
    p.add_argument("--reject", default="tuned", choices=("tuned", "base"), help="whose answer is the rejected one")
    p.add_argument("--name", default=None)
    p.add_argument("--tokenizer", default="default", help="tokenizer for token stats ('none' to skip)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_from_evaluation)


def main(argv: list[str] | None = None) -> int:  # for tests / direct use: python -m core.data.cli ...
    parser = argparse.ArgumentParser(prog="data")
    register_cli(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
