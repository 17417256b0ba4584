"""Model specs and dataset sizes from where they live: the offline catalog, a local folder, the Hub (config.json
only, through core.models), and the Data tab's stored token stats (the database)."""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Optional

from core.estimate.spec import EstimateError, ModelSpec, spec_from_config

CATALOG_PATH = Path(__file__).resolve().parent.parent / "catalog" / "models.json"


@lru_cache(maxsize=1)
def _catalog() -> tuple[dict, ...]:
    data = json.loads(CATALOG_PATH.read_text(encoding="utf-8"))
    return tuple(data["models"])


def catalog_names() -> list[str]:
    """The built-in offline configs, by display name."""
    return [m["name"] for m in _catalog()]


def catalog_entry(ref: str) -> Optional[dict]:
    key = (ref or "").strip().lower()
    for m in _catalog():
        if key in (m["name"].lower(), m["hub_id"].lower(), m["hub_id"].split("/")[-1].lower()):
            return m
    return None


def load_model_spec(ref: str) -> ModelSpec:
    """A catalog name/Hub id in the catalog (offline), ``default``, a local model dir, or a Hub id (config.json
    only)."""
    from core.models import DEFAULT_MODEL_NAME, ModelNotFoundError, load_config, resolve_model

    ref = (ref or "").strip()
    if not ref:
        raise EstimateError("choose a model: a catalog entry, 'default', a local model directory or a Hub id")
    entry = catalog_entry(ref)
    if entry is not None:
        return spec_from_config(entry["config"], entry["name"])
    try:
        resolved = resolve_model(ref, prepare_default=False)  # never convert/load weights just to estimate
    except ModelNotFoundError as exc:
        raise EstimateError(str(exc)) from None
    if resolved.kind == "default":
        cfg_file = Path(resolved.path) / "config.json"
        if not cfg_file.is_file():  # not converted yet: the catalog has the same architecture
            entry = catalog_entry(DEFAULT_MODEL_NAME)
            return spec_from_config(entry["config"], entry["name"])
        return spec_from_config(json.loads(cfg_file.read_text(encoding="utf-8")), resolved.display_name)
    if resolved.kind == "local":
        cfg_file = Path(resolved.path) / "config.json"
        if not cfg_file.is_file():
            raise EstimateError(f"{resolved.path} has no config.json (an adapter folder? estimate its base model)")
        try:
            cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise EstimateError(f"{cfg_file} is not valid JSON: {exc}") from None
        return spec_from_config(cfg, resolved.display_name)
    try:
        config = load_config(resolved)  # the real Hub code path: downloads config.json only
    except ModelNotFoundError as exc:
        raise EstimateError(f"{exc} Offline catalog: {', '.join(catalog_names())}.") from None
    except (ValueError, KeyError) as exc:  # e.g. an architecture this transformers does not know
        raise EstimateError(f"could not read the config of '{ref}': {exc}") from None
    return spec_from_config(config, ref)


def dataset_token_count(dataset_id: int | str) -> Optional[int]:
    """``total_tokens`` from a Data-tab dataset's stored token stats; None when they were not computed."""
    from core.data import DatasetError, get_dataset

    try:
        row = get_dataset(dataset_id)
    except DatasetError as exc:
        raise EstimateError(f"{exc}; pick one from the Data tab") from None
    stats = (row.meta or {}).get("token_stats") or {}
    total = stats.get("total_tokens")
    return int(total) if isinstance(total, (int, float)) and total > 0 else None


def list_datasets_with_tokens() -> list[tuple[str, int, Optional[int]]]:
    """(label, id, total_tokens or None) for every stored dataset, newest first."""
    from sqlmodel import select

    from core.config import db_session
    from storage import Dataset

    out = []
    with db_session() as session:
        for row in session.exec(select(Dataset).order_by(Dataset.id.desc())).all():
            stats = (row.meta or {}).get("token_stats") or {}
            total = stats.get("total_tokens")
            total = int(total) if isinstance(total, (int, float)) and total > 0 else None
            label = f"#{row.id} {row.name or row.source} ({row.rows} rows" + (f", {total:,} tokens)" if total else ")")
            out.append((label, int(row.id), total))
    return out
