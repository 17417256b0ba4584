"""Read-side operations on stored datasets: summaries, token stats for a chosen model, the loss-mask preview."""
from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from core.data.errors import DatasetError
from core.data.importer import DEFAULT_MAX_LENGTH
from core.data.splits import SPLITS
from core.data.stored import get_dataset, list_datasets, read_split

Progress = Callable[..., Any]
KIND_LABELS = {"preference": "preference (for DPO / ORPO)", "multiple_choice": "multiple choice (for Evaluate)"}


def dataset_summary(ds) -> dict:
    """A JSON-friendly description of a stored version (CLI ``data show`` and the UI)."""
    meta = ds.meta or {}
    return {
        "id": ds.id,
        "name": ds.name,
        "format": ds.format,
        "kind": ds.kind,
        "rows": ds.rows,
        "splits": ds.splits,
        "content_hash": ds.content_hash,
        "path": ds.path,
        "source": ds.source,
        "created_at": ds.created_at.isoformat() if ds.created_at else None,
        "token_stats": meta.get("token_stats"),
        "problems": meta.get("problems", []),
        "notes": meta.get("notes", []),
        "placeholders": meta.get("placeholders", []),
        "split_spec": meta.get("split_spec"),
        "for_preference_training": ds.kind == "preference",
        "for_evaluation_only": ds.kind == "multiple_choice",
    }


def datasets_table() -> list[list]:
    """Rows for a table of every stored dataset: id, name, format, kind, rows, train/val/test, tokens, created,
    owner."""
    out = []
    for ds in list_datasets():
        st = (ds.meta or {}).get("token_stats") or {}
        sp = ds.splits or {}
        kind = KIND_LABELS.get(ds.kind, ds.kind)
        out.append([
            ds.id, ds.name, ds.format, kind, ds.rows,
            f"{sp.get('train', 0)}/{sp.get('validation', 0)}/{sp.get('test', 0)}",
            st.get("total_tokens", ""),
            ds.created_at.strftime("%Y-%m-%d %H:%M") if ds.created_at else "",
            ds.owner or "",
        ])
    return out


def _lengths_cache(ds) -> dict:
    try:
        meta = json.loads((Path(ds.path) / "meta.json").read_text(encoding="utf-8"))
        return meta.get("token_lengths") or {}
    except (OSError, json.JSONDecodeError):
        return {}


def _prompt_tokenizer(model: str, template: str | None):
    """``model``'s tokenizer rendering prompts as a run with prompt template ``template`` trains on them."""
    from core.data.templates import TemplateError, template_for_model

    try:
        tok, _applied = template_for_model(model, template)
    except TemplateError as exc:
        raise DatasetError(str(exc)) from None
    return tok


def _needs_template(tok, rows) -> bool:
    return not getattr(tok, "chat_template", None) and any("messages" in r for r in rows)


def _no_template_error(model: str) -> DatasetError:
    from core.data.templates import CHOICE_HELP

    return DatasetError(f"'{model}' has no chat template, so a conversation cannot be rendered for it: pick a prompt "
                        f"template ({CHOICE_HELP}) — the one the run will train with")


def compute_token_stats(dataset_id: int | str, model: str = "default", max_length: int = DEFAULT_MAX_LENGTH, *,
                        save: bool = True, progress: Progress | None = None, template: str | None = None) -> dict:
    """Token-length stats of the train split with ``model``'s tokenizer: {"token_stats": {...}, "histogram": [...]}.
    With ``save`` the stats become ``Dataset.meta["token_stats"]`` (what Estimate reads)."""
    from core.data.stats import histogram, summarise_lengths, token_lengths
    from core.data.templates import normalise_choice

    template = normalise_choice(template)
    label = f"{model} + {template} template" if template else model
    ds = get_dataset(dataset_id)
    cache = _lengths_cache(ds)
    if (cache.get("model") == label and isinstance(cache.get("train"), list)
            and len(cache["train"]) == (ds.splits or {}).get("train")):
        lengths = cache["train"]
    else:
        tok = _prompt_tokenizer(model, template)
        rows = read_split(ds, "train")
        if _needs_template(tok, rows):
            raise _no_template_error(model)
        lengths = token_lengths(tok, rows, progress=progress)
        _write_lengths_cache(ds, label, max_length, lengths)
    stats = summarise_lengths(lengths, model=label, max_length=max_length)
    hist = histogram(lengths)
    if save:
        from core.config import db_session
        from storage import Dataset

        with db_session() as session:
            row = session.get(Dataset, ds.id)
            row.meta = {**(row.meta or {}), "token_stats": stats, "token_histogram": hist}
            session.add(row)
    return {"token_stats": stats, "histogram": hist}


def _write_lengths_cache(ds, model: str, max_length: int, lengths: list[int]) -> None:
    path = Path(ds.path) / "meta.json"
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        meta = {}
    meta["token_lengths"] = {"model": model, "max_length": max_length, "train": lengths}
    try:
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(meta, ensure_ascii=False, indent=1), encoding="utf-8")
        tmp.replace(path)
    except OSError:
        pass  # a read-only dataset dir only loses the cache


def preview_row(dataset_id: int | str, index: int = 0, split: str = "train", model: str = "default",
                max_length: int | None = None, tokenizer=None, template: str | None = None) -> dict:
    """Row ``index`` (0-based) of a split rendered through ``model``'s chat template, cut into segments labelled
    "trained" (assistant tokens, carry loss), "masked" (no loss) and "truncated" (past max_length); a multiple-choice
    row gives "question" and "answer" segments (nothing of it is trained)."""
    ds = get_dataset(dataset_id)
    rows = read_split(ds, split)
    if not rows:
        raise DatasetError(f"dataset {ds.id} has no rows in the {split} split")
    if not 0 <= index < len(rows):
        raise DatasetError(
            f"row {index} is out of range: the {split} split of dataset {ds.id} has {len(rows)} rows "
            f"(0-{len(rows) - 1})"
        )
    preview = preview_of(rows[index], model=model, max_length=max_length, tokenizer=tokenizer, template=template)
    return preview | {"index": index, "split_rows": len(rows)}


def preview_of(row: dict, *, model: str = "default", max_length: int | None = None, tokenizer=None,
               template: str | None = None) -> dict:
    """One row as training sees it: rendered through ``model``'s chat template, or through prompt template
    ``template`` (what a run with that ``chat_template`` trains on)."""
    from core.data.stats import loss_mask_segments

    tok = tokenizer or _prompt_tokenizer(model, template)
    if _needs_template(tok, [row]):
        raise _no_template_error(model)
    segments = loss_mask_segments(tok, row, max_length)
    n_tokens = len(tok("".join(t for t, _ in segments), add_special_tokens=False)["input_ids"])
    trained = sum(len(tok(t, add_special_tokens=False)["input_ids"]) for t, lab in segments if lab == "trained")
    return {"segments": segments, "row": row, "num_tokens": n_tokens, "approx_trained_tokens": trained}


def delete_dataset(dataset_id: int | str) -> str:
    """Remove a dataset version (DB row and its directory). Returns what had come from it, in words (the runs and
    evaluations made from it keep its id and content hash in their lineage; "" when nothing had)."""
    from core.config import db_session
    from core.lineage import dependents
    from storage import Dataset

    ds = get_dataset(dataset_id)
    said = dependents("dataset", ds.id)["message"]
    with db_session() as session:
        row = session.get(Dataset, ds.id)
        if row is not None:
            session.delete(row)
    shutil.rmtree(ds.path, ignore_errors=True)
    return said


__all__ = [
    "SPLITS", "compute_token_stats", "dataset_summary", "datasets_table", "delete_dataset", "preview_of",
    "preview_row",
]
