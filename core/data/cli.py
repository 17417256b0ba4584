"""``python -m core data import|list|show|stats`` — the Data tab's actions on the command line.

Output with ``--json`` is stable: ``import`` prints ``ImportResult.to_dict()`` (dataset_id, name, format, kind,
total_rows, kept, dropped, problems, created, splits, path, content_hash, token_stats, notes, message).
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


def register_cli(subparsers) -> None:
    """Add ``data import|list|show|stats`` to ``python -m core``."""
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


def main(argv: list[str] | None = None) -> int:  # for tests / direct use: python -m core.data.cli ...
    parser = argparse.ArgumentParser(prog="data")
    register_cli(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
