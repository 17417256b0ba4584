"""Prepare a dataset in memory: read the source (through core.access's resolver) → detect its format → normalise →
validate, collecting per-row problems and what happens to them. Nothing is stored here (core.data.importer stores).
"""
from __future__ import annotations

import os
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.data import formats as F
from core.data.errors import PROBLEM_CODES, DatasetError, RowProblem, is_fatal
from core.data.hub import read_hub
from core.data.limits import ImportLimits, import_limits
from core.data.readers import RawRead, read_file
from core.data.splits import SPLIT_COLUMNS, normalise_split_name
from core.data.validate import check_row, fill_placeholders, find_placeholders, json_safe, row_hash

Progress = Callable[..., Any]
FIRST_ROWS_SHOWN = 10
# problems that are only reported by default (drop_invalid=True keeps those rows; list them explicitly to drop)
WARNING_CODES = ("non_string_content", "unfilled_placeholder")  # offending row numbers kept per problem kind


@dataclass
class PreparedRow:
    row_no: int
    row: dict
    codes: list[str] = field(default_factory=list)  # non-fatal problem codes
    hash: str = ""
    split: str | None = None  # from a split column / the Hub dataset's splits


@dataclass
class PreparedData:
    source: str
    container: str
    format: str
    kind: str
    encoding: str
    total_records: int
    rows: list[PreparedRow]  # every row that could be normalised (may carry non-fatal problems)
    problems: list[RowProblem]  # fatal (row not in ``rows``) and non-fatal
    columns: list[str]
    placeholders: list[str]
    notes: list[str]
    detected_format: str | None = None

    def problem_summary(self, drop: set[str] | None = None) -> list[dict]:
        return summarise_problems(self.problems, drop)


def _progress(progress: Progress | None, frac: float, desc: str) -> None:
    if progress is not None:
        progress(frac, desc=desc)


DATA_SUFFIXES = (".json", ".jsonl", ".csv", ".tsv", ".parquet", ".txt")


def read_source(source: str | os.PathLike, progress: Progress | None = None,
                limits: ImportLimits | None = None) -> RawRead:
    """A local file path, or a Hub dataset id (``owner/name``, optionally ``hub:owner/name``). The reference passes
    the one resolver (core.access.locate) first: in a shared studio's page a file outside the allowed roots, a
    ``hub:`` prefix on a folder, a URL, are refused before anything is opened."""
    from core.access import PathNotAllowed, locate

    ref = str(source).strip() if isinstance(source, os.PathLike) else source
    if not isinstance(ref, str) or not ref.strip():
        raise DatasetError("no data source given: upload a file, type a local path or a Hub dataset id")
    try:
        loc = locate(ref, "the data source")
    except PathNotAllowed as exc:
        raise DatasetError(str(exc)) from None
    if loc.kind == "hub":
        if not ref.strip().startswith("hub:") and Path(loc.value).suffix.lower() in DATA_SUFFIXES:
            raise DatasetError(f"file {ref.strip()} not found")
        limits = limits if limits is not None else import_limits()
        return read_hub(loc.value, progress=progress, max_rows=limits.max_rows)
    if not loc.path.exists():
        raise DatasetError(f"file {ref.strip()} not found")
    return read_file(loc.value, progress, limits=limits if limits is not None else import_limits())


def prepare_dataset(
    source: str | os.PathLike,
    *,
    format: str = "auto",
    column_map: dict[str, str] | None = None,
    template_values: dict[str, str] | None = None,
    progress: Progress | None = None,
    raw: RawRead | None = None,
    limits: ImportLimits | None = None,
) -> PreparedData:
    """Read and normalise a source in memory, collecting per-row problems. Raises DatasetError if unusable.
    ``limits``: the caps (default: the page's, core.data.limits.import_limits)."""
    started = time.time()
    raw = raw or read_source(source, progress, limits)
    _progress(progress, 0.3, f"read {len(raw.records):,} records")
    column_map = {k: v for k, v in (column_map or {}).items() if v}
    records = raw.records
    if column_map:
        records = [(n, F.apply_column_map(r, column_map)) for n, r in records]
    columns = F.describe_columns(r for _, r in raw.records)
    detected = F.detect_format(r for _, r in records)
    fmt = format if format and format != "auto" else detected
    if not columns and format in (None, "", "auto"):
        kinds = sorted({type(r).__name__ for _, r in raw.records[:100]})
        raise DatasetError(f"{source} holds no records with fields (found {', '.join(kinds)} values); "
                           "each row must be a JSON object / a CSV row with a header")
    if fmt is None:
        raise DatasetError(
            f"cannot tell the format of {source}: columns are {', '.join(columns[:12]) or '(none)'}; pick a format "
            f"({', '.join(F.FORMATS)}) and map the columns"
        )
    if fmt not in F.FORMATS:
        raise DatasetError(f"unknown format '{fmt}'; choose auto or one of {', '.join(F.FORMATS)}")
    kind = F.KIND_OF_FORMAT[fmt]
    problems: list[RowProblem] = list(raw.problems)
    rows: list[PreparedRow] = []
    seen: dict[str, int] = {}
    total = len(records)
    step = max(1, total // 20)
    for i, (n, rec) in enumerate(records):
        if progress is not None and total > 20_000 and i % step == 0:
            progress(0.3 + 0.2 * i / total, desc=f"checking row {i:,} of {total:,}")
        try:
            row, warnings = F.normalise_record(rec, fmt)
        except F.RowError as exc:
            problems.append(RowProblem(n, exc.code, f"row {n}: {exc.reason}"))
            continue
        if raw.container in ("parquet", "hub"):
            row = json_safe(row)
        if template_values:
            row = fill_placeholders(row, template_values)
        found = [(c, r) for c, r in warnings] + check_row(row, kind)
        fatal = [(c, r) for c, r in found if is_fatal(c)]
        if fatal:
            problems.append(RowProblem(n, fatal[0][0], f"row {n}: {fatal[0][1]}"))
            continue
        h = row_hash(row)
        pr = PreparedRow(n, row, hash=h)
        for c, r in found:
            if c not in pr.codes:
                pr.codes.append(c)
                problems.append(RowProblem(n, c, f"row {n}: {r}"))
        if h in seen:
            pr.codes.append("duplicate")
            problems.append(RowProblem(n, "duplicate", f"row {n}: same as row {seen[h]}"))
        else:
            seen[h] = n
        split = raw.source_splits.get(n)
        if split is None and isinstance(rec, dict):
            for col in SPLIT_COLUMNS:
                if col in rec and isinstance(rec[col], str):
                    split = rec[col]
                    break
        pr.split = normalise_split_name(split)
        rows.append(pr)
    if not rows:
        first = problems[0].reason if problems else "no records"
        what = {"sft": "with an assistant answer", "text": "with text",
                "preference": "with chosen/rejected answers",
                "multiple_choice": "with a question, its choices and the answer"}[kind]
        raise DatasetError(f"no rows {what} in {source} (as {fmt}; first problem: {first})")
    placeholders = find_placeholders(r.row for r in rows)
    _progress(progress, 0.5, f"{len(rows):,} rows normalised in {time.time() - started:.1f}s")
    return PreparedData(
        source=str(source), container=raw.container, format=fmt, kind=kind, encoding=raw.encoding,
        total_records=len(raw.records) + sum(1 for p in raw.problems if p.code == "malformed_json"),
        rows=rows, problems=problems, columns=columns, placeholders=placeholders, notes=list(raw.notes),
        detected_format=detected,
    )


def summarise_problems(problems: Iterable[RowProblem], drop: set[str] | None = None) -> list[dict]:
    """Per problem kind: count, first row numbers, first reasons and what happens to those rows."""
    by_code: dict[str, list[RowProblem]] = defaultdict(list)
    for p in problems:
        by_code[p.code].append(p)
    out = []
    for code in sorted(by_code, key=lambda c: (not is_fatal(c),
                                               list(PROBLEM_CODES).index(c) if c in PROBLEM_CODES else 99)):
        items = sorted(by_code[code], key=lambda p: p.row)
        fatal = is_fatal(code)
        out.append({
            "code": code,
            "title": PROBLEM_CODES.get(code, (code, True))[0],
            "count": len(items),
            "rows": [p.row for p in items[:FIRST_ROWS_SHOWN]],
            "examples": [p.reason for p in items[:3]],
            "fatal": fatal,
            "action": "dropped" if fatal or (drop is not None and code in drop) else "kept",
        })
    return out


def resolve_drop(drop_invalid: bool | Iterable[str]) -> set[str]:
    """``True`` drops rows with any problem except the WARNING_CODES, ``False`` keeps every row that can be
    represented, a collection of codes drops only those kinds (rows that cannot be represented are always dropped)."""
    if drop_invalid is True:
        return {c for c in PROBLEM_CODES if c not in WARNING_CODES}
    if drop_invalid is False or drop_invalid is None:
        return set()
    codes = set(drop_invalid)
    unknown = codes - set(PROBLEM_CODES)
    if unknown:
        raise ValueError(f"unknown problem codes {sorted(unknown)}; known: {', '.join(PROBLEM_CODES)}")
    return codes
