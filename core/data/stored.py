"""Stored dataset versions read back: the Dataset row, the list of them, one split's normalised rows (or every row
in the source's order).
"""
from __future__ import annotations

import json
from pathlib import Path

from core.data.errors import DatasetError
from core.data.splits import ALL, SPLITS, decode_row_splits


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
