"""Import a dataset: prepared rows (core.data.prepare) → token stats → split → stored as a version (a folder named by
its content hash + a Dataset row; identical content is stored once). In-memory records and the demo task go the same
way. Reading versions back: core.data.stored; the rows a training run reads: core.data.training_rows."""
from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC
from pathlib import Path

from core.data.errors import DatasetError, RowProblem
from core.data.limits import ImportLimits
from core.data.prepare import PreparedData, Progress, _progress, prepare_dataset, resolve_drop, summarise_problems
from core.data.readers import RawRead
from core.data.splits import SPLITS, SplitSpec, assign_splits, encode_row_splits
from core.data.validate import canonical_line, content_hash_of_hashes

DEFAULT_MAX_LENGTH = 2048


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
