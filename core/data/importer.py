"""Prepare (read → detect → normalise → validate), import (→ token stats → split → store) and load datasets."""
from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC
from pathlib import Path
from typing import Any

from core.data import formats as F
from core.data.errors import PROBLEM_CODES, DatasetError, RowProblem, is_fatal
from core.data.hub import read_hub
from core.data.limits import ImportLimits, import_limits
from core.data.readers import RawRead, read_file
from core.data.splits import (
    ALL,
    SPLIT_COLUMNS,
    SPLITS,
    SplitSpec,
    assign_splits,
    decode_row_splits,
    encode_row_splits,
    normalise_split_name,
)
from core.data.validate import (
    canonical_line,
    check_row,
    content_hash_of_hashes,
    fill_placeholders,
    find_placeholders,
    json_safe,
    row_hash,
)

Progress = Callable[..., Any]
DEFAULT_MAX_LENGTH = 2048
FIRST_ROWS_SHOWN = 10
# problems that are only reported by default (drop_invalid=True keeps those rows; list them explicitly to drop)
WARNING_CODES = ("non_string_content", "unfilled_placeholder")  # offending row numbers kept per problem kind
MULTIPLE_CHOICE_REFUSAL = ("holds multiple-choice questions (for Evaluate); supervised fine-tuning needs "
                           "conversations with assistant answers")


# --------------------------------------------------------------------------------------------------------- prepare
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


# ---------------------------------------------------------------------------------------------------------- import
@dataclass
class ImportResult:
    dataset_id: int
    name: str
    format: str
    kind: str
    total_rows: int  # records found in the source (including malformed lines)
    kept: int
    dropped: int
    problems: list[dict]
    created: bool  # False: identical content was already stored; dataset_id is that version
    splits: dict[str, int]
    path: str
    content_hash: str
    token_stats: dict | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def message(self) -> str:
        head = (f"imported as dataset {self.dataset_id}" if self.created
                else f"identical content is already stored as dataset {self.dataset_id} (not stored twice)")
        split = ", ".join(f"{k} {v}" for k, v in self.splits.items())
        return f"{head}: {self.format} ({self.kind}), {self.kept} rows kept, {self.dropped} dropped; split {split}"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["message"] = self.message
        return d


def _now_utc():
    # sqlmodel 0.0.50 refuses naive datetimes, and storage.tables.utcnow() returns a naive one
    from datetime import datetime

    return datetime.now(UTC)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")[:80] or "dataset"


def _model_label(model) -> str:
    return getattr(model, "ref", None) or str(model)


def import_dataset(
    source: str | os.PathLike,
    *,
    name: str | None = None,
    format: str = "auto",
    column_map: dict[str, str] | None = None,
    split: SplitSpec | dict | None = None,
    drop_invalid: bool | Iterable[str] = True,
    template_values: dict[str, str] | None = None,
    model: str | None = "default",
    max_length: int = DEFAULT_MAX_LENGTH,
    progress: Progress | None = None,
    prepared: PreparedData | None = None,
    source_label: str | None = None,
    owner: str = "",
    limits: ImportLimits | None = None,
) -> ImportResult:
    """Import a file / Hub dataset as a stored dataset version (see the package docstring). ``source_label``: what to
    record and show as the source instead of ``source`` (an upload's own file name, not the server's temp path)."""
    from sqlmodel import select

    from core.config import db_session, get_settings
    from storage import Dataset

    spec = SplitSpec.coerce(split)
    drop = resolve_drop(drop_invalid)
    prep = prepared or prepare_dataset(source, format=format, column_map=column_map,
                                       template_values=template_values, progress=progress, limits=limits)
    if source_label:
        prep.source = source_label
    problems = list(prep.problems)
    notes = list(prep.notes)
    lengths: list[int] | None = None
    model_label = None
    if model and prep.kind in ("sft", "text", "preference", "multiple_choice"):
        try:
            from core.models import load_tokenizer

            tok = load_tokenizer(model)
            model_label = _model_label(model)
            if not getattr(tok, "chat_template", None) and any("messages" in r.row for r in prep.rows):
                from core.data.templates import apply_template, suggest_choice

                choice = suggest_choice(tok)  # what the Train tab preselects for this model
                apply_template(tok, choice)
                model_label = f"{model_label} + {choice} template"
                notes.append(f"{model_label.split(' + ')[0]} has no chat template: token counts use the {choice} "
                             "prompt template (the Train tab's suggestion for it)")
            from core.data.stats import token_lengths

            lengths = token_lengths(tok, [r.row for r in prep.rows], progress=progress, progress_range=(0.5, 0.9))
            for pr, n_tok in zip(prep.rows, lengths):
                if n_tok > max_length and prep.kind != "multiple_choice":  # questions are scored, never truncated
                    pr.codes.append("too_long")
                    problems.append(RowProblem(pr.row_no, "too_long",
                                               f"row {pr.row_no}: {n_tok} tokens > max length {max_length}"))
        except Exception as exc:  # noqa: BLE001 - a missing/unreachable tokenizer must not block the import
            notes.append(f"token statistics skipped: {exc}")
            lengths = None
    kept_idx = [i for i, pr in enumerate(prep.rows) if not any(c in drop for c in pr.codes)]
    if not kept_idx:
        raise DatasetError(
            f"no usable rows left in {prep.source}: every row has a problem you chose to drop "
            f"({', '.join(sorted({c for pr in prep.rows for c in pr.codes}))}); keep some kinds or fix the file"
        )
    from core.space import SpaceLimitError, check_rows

    try:
        check_rows(len(kept_idx))
    except SpaceLimitError as exc:
        raise DatasetError(str(exc)) from None
    kept_rows = [prep.rows[i].row for i in kept_idx]
    digest = content_hash_of_hashes((prep.rows[i].hash for i in kept_idx), prep.kind)
    dropped = prep.total_records - len(kept_rows)
    summary = summarise_problems(problems, drop)
    settings = get_settings()

    # a version is the rows (order-insensitive) and the split settings: the same rows split otherwise are a new version
    with db_session() as session:
        same_rows = list(session.exec(select(Dataset).where(
            (Dataset.content_hash == digest) | Dataset.content_hash.startswith(f"{digest}+"))).all())
    existing = next((d for d in same_rows if _same_split_spec(d, spec)), None)
    version_key = _version_key(digest, spec, taken={d.content_hash for d in same_rows})
    if same_rows and existing is None:
        notes.append("the same rows are stored as dataset " + ", ".join(str(d.id) for d in same_rows)
                     + " with other split settings: this import is a new split version")
    if existing is not None:
        _progress(progress, 1.0, f"identical content already stored as dataset {existing.id}")
        return ImportResult(
            dataset_id=existing.id, name=existing.name, format=existing.format, kind=existing.kind,
            total_rows=prep.total_records, kept=len(kept_rows), dropped=dropped, problems=summary, created=False,
            splits=dict(existing.splits), path=existing.path, content_hash=existing.content_hash,
            token_stats=(existing.meta or {}).get("token_stats"), notes=notes,
        )

    given = [prep.rows[i].split for i in kept_idx]
    assignment = assign_splits(len(kept_rows), spec, given)
    split_rows: dict[str, list[dict]] = {s: [] for s in SPLITS}
    split_lengths: dict[str, list[int]] = {s: [] for s in SPLITS}
    for j, (row, s) in enumerate(zip(kept_rows, assignment)):
        split_rows[s].append(row)
        if lengths is not None:
            split_lengths[s].append(lengths[kept_idx[j]])
    token_stats = None
    hist = None
    if lengths is not None:
        from core.data.stats import histogram, summarise_lengths

        token_stats = summarise_lengths(split_lengths["train"], model=model_label, max_length=max_length)
        hist = histogram(split_lengths["train"])

    _progress(progress, 0.92, "writing the dataset version")
    root = settings.datasets_dir
    final_dir = root / _version_folder(version_key)
    tmp_dir = root / f".tmp-{final_dir.name}-{os.getpid()}"
    shutil.rmtree(tmp_dir, ignore_errors=True)
    tmp_dir.mkdir(parents=True)
    for s in SPLITS:
        with open(tmp_dir / f"{s}.jsonl", "w", encoding="utf-8") as fh:
            for row in split_rows[s]:
                fh.write(canonical_line(row))
                fh.write("\n")
    splits = {s: len(split_rows[s]) for s in SPLITS}
    from core.text import clean_label

    display_name = clean_label(name)[:120] or _slug(Path(prep.source).stem if not prep.container == "hub"
                                                     else prep.source)
    meta = {
        "problems": summary,
        "token_stats": token_stats,
        "token_histogram": hist,
        "token_lengths": ({"model": model_label, "max_length": max_length, "train": split_lengths["train"]}
                          if lengths is not None else None),
        "notes": notes,
        "encoding": prep.encoding,
        "container": prep.container,
        "detected_format": prep.detected_format,
        "columns": prep.columns,
        "column_map": column_map or {},
        "placeholders": prep.placeholders,
        "template_values": template_values or {},
        "split_spec": spec.to_dict(),
        "total_records": prep.total_records,
        "kept": len(kept_rows),
        "dropped": dropped,
        "drop": sorted(drop),
    }
    file_meta = {"name": display_name, "format": prep.format, "kind": prep.kind, "rows": len(kept_rows),
                 "content_hash": version_key, "source": prep.source, "splits": splits, **meta,
                 "row_splits": encode_row_splits(assignment)}  # read_split(ds, "all"): the rows in source order
    (tmp_dir / "meta.json").write_text(json.dumps(file_meta, ensure_ascii=False, indent=1), encoding="utf-8")
    if final_dir.exists():  # left over from a crash or a deleted DB row: same content, replace it
        shutil.rmtree(final_dir)
    tmp_dir.rename(final_dir)
    db_meta = {k: v for k, v in meta.items() if k != "token_lengths"}  # per-row lengths stay in meta.json
    try:
        with db_session() as session:
            ds = Dataset(created_at=_now_utc(), name=display_name, format=prep.format, kind=prep.kind,
                         rows=len(kept_rows), content_hash=version_key, path=str(final_dir), source=prep.source,
                         splits=splits, meta=db_meta, owner=owner or "")
            session.add(ds)
            session.flush()
            ds_id = ds.id
    except Exception:
        with db_session() as session:  # lost a race with an identical import: use that one
            other = session.exec(select(Dataset).where(Dataset.content_hash == version_key)).first()
        if other is None:
            raise
        ds_id = other.id
    _progress(progress, 1.0, f"stored as dataset {ds_id}")
    return ImportResult(
        dataset_id=ds_id, name=display_name, format=prep.format, kind=prep.kind, total_rows=prep.total_records,
        kept=len(kept_rows), dropped=dropped, problems=summary, created=True, splits=splits, path=str(final_dir),
        content_hash=version_key, token_stats=token_stats, notes=notes,
    )


def _same_split_spec(ds, spec: SplitSpec) -> bool:
    try:
        return SplitSpec.coerce((ds.meta or {}).get("split_spec") or {}) == spec
    except (TypeError, ValueError):
        return False


def _version_key(digest: str, spec: SplitSpec, taken: set[str]) -> str:
    """The stored version's ``content_hash``: the rows' hash for the first version of those rows, the rows' hash +
    the split settings' for the next ones (the column is unique)."""
    if digest not in taken:
        return digest
    import hashlib

    spec_text = json.dumps(spec.to_dict(), sort_keys=True)
    return f"{digest}+{hashlib.sha256(spec_text.encode()).hexdigest()[:12]}"


def _version_folder(version_key: str) -> str:
    digest, _, split_part = version_key.partition("+")
    return digest[:16] + (f"-{split_part}" if split_part else "")


# ------------------------------------------------------------------------------------------------------ read back
def get_dataset(dataset_id: int | str):
    """The Dataset row, or DatasetError('dataset N not found')."""
    from core.config import db_session
    from storage import Dataset

    try:
        key = int(str(dataset_id).strip())
    except ValueError:
        raise DatasetError(f"dataset id must be a number, got {dataset_id!r}") from None
    with db_session() as session:
        ds = session.get(Dataset, key)
    if ds is None:
        raise DatasetError(f"dataset {key} not found")
    return ds


def list_datasets() -> list:
    from sqlmodel import select

    from core.config import db_session
    from storage import Dataset

    with db_session() as session:
        return list(session.exec(select(Dataset).order_by(Dataset.id.desc())).all())


def read_split(ds, split: str = "train") -> list[dict]:
    """The normalised rows of one split of a stored version; ``all``: every row, in the source's order (versions
    stored before the order was kept: train, then validation, then test)."""
    if split == ALL:
        return _read_all(ds)
    if split not in SPLITS:
        raise DatasetError(f"unknown split '{split}'; use one of {', '.join(SPLITS)} or {ALL}")
    path = Path(ds.path) / f"{split}.jsonl"
    if not path.is_file():
        raise DatasetError(f"dataset {ds.id}: file {path} is missing (was the workspace moved or cleaned?)")
    rows = []
    with open(path, encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    raise DatasetError(f"dataset {ds.id}: {path} line {line_no} is corrupt") from None
    return rows


def _read_all(ds) -> list[dict]:
    parts = {s: read_split(ds, s) for s in SPLITS}
    code = ""
    try:
        code = json.loads((Path(ds.path) / "meta.json").read_text(encoding="utf-8")).get("row_splits") or ""
    except (OSError, ValueError):
        pass
    try:
        order = decode_row_splits(code)
    except (ValueError, IndexError):
        order = []
    if len(order) != sum(len(rows) for rows in parts.values()) or any(
            order.count(s) != len(parts[s]) for s in SPLITS):
        return [row for s in SPLITS for row in parts[s]]
    iters = {s: iter(rows) for s, rows in parts.items()}
    return [next(iters[s]) for s in order]


PREFERENCE_FOR_SFT = ("holds preference pairs (chosen/rejected): train it with objective dpo or orpo; SFT and GRPO "
                      "need conversations with an assistant answer")
SFT_FOR_PREFERENCE = ("holds no preference pairs: {objective} needs rows with a chosen and a rejected answer (the "
                      "Data tab's 'preference' format); train conversations with objective sft")


def load_training_rows(ref: str | int, split: str = "train", objective: str = "sft") -> list[dict]:
    """Normalised rows for training (see the package docstring). ``objective`` dpo / orpo: preference pairs only
    (``{"prompt": [...], "chosen": [...], "rejected": [...]}``); sft: conversations or text, never pairs."""
    ref_s = str(ref).strip()
    wants_pairs = objective in F.PREFERENCE_OBJECTIVES
    if ref_s.isdigit():
        ds = get_dataset(ref_s)
        if wants_pairs and ds.kind != "preference":
            raise DatasetError(f"dataset {ds.id} " + SFT_FOR_PREFERENCE.format(objective=objective.upper()))
        if ds.kind == "preference" and not wants_pairs:
            raise DatasetError(f"dataset {ds.id} {PREFERENCE_FOR_SFT}")
        if ds.kind == "multiple_choice":
            raise DatasetError(f"dataset {ds.id} {MULTIPLE_CHOICE_REFUSAL}")
        rows = read_split(ds, split)
        if not rows and split == "train":
            raise DatasetError(f"dataset {ds.id} has no training rows")
        return rows
    if not ref_s:
        raise DatasetError("no dataset given: pass a dataset id or a data file path")
    prep = prepare_dataset(ref_s)
    if wants_pairs and prep.kind != "preference":
        raise DatasetError(f"{ref_s} " + SFT_FOR_PREFERENCE.format(objective=objective.upper()))
    if prep.kind == "preference" and not wants_pairs:
        raise DatasetError(f"{ref_s} {PREFERENCE_FOR_SFT}")
    if prep.kind == "multiple_choice":
        raise DatasetError(f"{ref_s} {MULTIPLE_CHOICE_REFUSAL}")
    drop = resolve_drop(True) - {"too_long"}
    usable = [pr for pr in prep.rows if not any(c in drop for c in pr.codes)]
    if not usable:
        first = prep.problems[0].reason if prep.problems else "?"
        raise DatasetError(f"no usable rows in {ref_s} (first problem: {first})")
    if split == "train":
        if any(pr.split for pr in usable):
            return [pr.row for pr in usable if pr.split in (None, "train")]
        return [pr.row for pr in usable]
    return [pr.row for pr in usable if pr.split == split]


def import_records(records: list, *, source: str, name: str | None = None, format: str = "auto",
                   progress: Progress | None = None, **kwargs) -> ImportResult:
    """Import in-memory records (e.g. a generated task) exactly like a file; ``source`` labels them."""
    raw = RawRead(records=[(i + 1, r) for i, r in enumerate(records)], container="memory")
    prep = prepare_dataset(source, format=format, progress=progress, raw=raw,
                           column_map=kwargs.pop("column_map", None),
                           template_values=kwargs.pop("template_values", None))
    return import_dataset(source, name=name, prepared=prep, progress=progress, **kwargs)


def import_demo_task(n: int = 400, seed: int = 0, *, model: str | None = "default",
                     progress: Progress | None = None) -> ImportResult:
    """Generate the built-in demo task (core.data.demo) and store it as a dataset."""
    try:
        from core.data.demo import generate_demo_rows
    except ImportError as exc:
        raise DatasetError(f"the demo task generator is not available ({exc})") from None
    rows = generate_demo_rows(n, seed)
    return import_records(rows, source=f"demo task (n={n}, seed={seed})", name="demo-support-json", format="openai",
                          model=model, progress=progress)
