"""Read a Hub dataset (or a local dataset folder) into raw records with ``datasets.load_dataset`` — after its dataset
card was read and checked, since the library follows a card's ``configs`` to this machine's disk and to other hosts.
An unreachable Hub is said at once, not after huggingface_hub's retries.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from core.data.errors import DatasetError
from core.data.readers import Progress, RawRead

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


def looks_like_hub_id(ref: str) -> bool:
    ref = ref.strip()
    return bool(HUB_ID.match(ref)) and not Path(ref).expanduser().exists()


def _card_metadata(text: str) -> dict:
    """The YAML header of a dataset card (README.md), {} when it has none or it is not a mapping."""
    import yaml

    if not text.startswith("---"):
        return {}
    end = text.find("\n---", 3)
    if end < 0:
        return {}
    try:
        meta = yaml.safe_load(text[3:end])
    except yaml.YAMLError as exc:
        raise DatasetError(f"the dataset card (README.md) has a broken YAML header: {str(exc).splitlines()[0]}"
                           ) from None
    return meta if isinstance(meta, dict) else {}


def _card_strings(value) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _card_strings(v)]
    if isinstance(value, (list, tuple)):
        return [s for v in value for s in _card_strings(v)]
    return []


def _outside_the_dataset(pattern: str) -> bool:
    p = pattern.strip().replace("\\", "/")
    return (p.startswith(("/", "~")) or "://" in p or re.match(r"^[A-Za-z]:", p) is not None
            or any(part == ".." for part in p.split("/")))


def check_dataset_card(text: str, dataset_id: str) -> None:
    """Refuse a dataset card whose ``configs`` point outside the dataset: ``datasets.load_dataset`` follows
    absolute ``data_files`` / ``data_dir`` to this machine's disk and URLs to other hosts, so a card could make an
    import read any file the studio can read. Relative patterns inside the dataset are fine."""
    meta = _card_metadata(text)
    configs = meta.get("configs") or []
    if not isinstance(configs, list):
        configs = [configs]
    for cfg in configs:
        if not isinstance(cfg, dict):
            continue
        for key in ("data_files", "data_dir"):
            for pattern in _card_strings(cfg.get(key)):
                if _outside_the_dataset(pattern):
                    raise DatasetError(f"the dataset card of '{dataset_id}' lists {key} outside the dataset "
                                       f"('{pattern[:120]}'): the studio reads only the dataset's own files")
        for value in _card_strings({k: v for k, v in cfg.items() if k not in ("data_files", "data_dir")}):
            if value.strip().startswith(("/", "~")) or "://" in value:
                raise DatasetError(f"the dataset card of '{dataset_id}' names a location outside the dataset "
                                   f"('{value[:120]}'): the studio reads only the dataset's own files")


def _hub_unreachable(exc: Exception) -> bool:
    msg, name = str(exc), type(exc).__name__
    return any(s in (msg + name).lower() for s in (
        "connection", "resolve", "timed out", "timeout", "offline", "unreachable", "network", "max retries",
        "name or service", "localentrynotfound", "cannot find the requested files in the local cache"))


def _check_card(dataset_id: str) -> None:
    """Read the dataset card of a local folder or a Hub dataset and refuse one that points outside the dataset."""
    local = Path(dataset_id).expanduser()
    if local.is_dir():
        card = local / "README.md"
        if card.is_file():
            check_dataset_card(card.read_text(encoding="utf-8", errors="replace")[:1_000_000], dataset_id)
        return
    check_dataset_card(_hub_card_text(dataset_id), dataset_id)


HUB_CARD_TIMEOUT_S = 10.0


def _hub_card_text(dataset_id: str) -> str:
    """A Hub dataset's README.md: from the local Hugging Face cache, else one GET (no retries: an unreachable Hub is
    said at once, not after huggingface_hub's backoff); '' when the dataset has no card."""
    import urllib.error
    import urllib.request

    from huggingface_hub import constants, try_to_load_from_cache
    from huggingface_hub.utils import get_token

    cached = try_to_load_from_cache(dataset_id, "README.md", repo_type="dataset")
    if isinstance(cached, str):
        return Path(cached).read_text(encoding="utf-8", errors="replace")[:1_000_000]
    if constants.HF_HUB_OFFLINE:
        raise DatasetError(f"the Hugging Face Hub is unreachable (HF_HUB_OFFLINE is set); cannot load '{dataset_id}'")
    url = f"{constants.ENDPOINT.rstrip('/')}/datasets/{dataset_id}/resolve/main/README.md"
    req = urllib.request.Request(url)  # noqa: S310 - the Hub endpoint (https, or HF_ENDPOINT set by the admin)
    token = get_token()
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=HUB_CARD_TIMEOUT_S) as answer:  # noqa: S310 - see above
            return answer.read(1_000_000).decode("utf-8", errors="replace")
    except urllib.error.HTTPError as exc:
        if exc.code == 404 and (exc.headers.get("X-Error-Code") or "") == "EntryNotFound":
            return ""  # the dataset exists and has no card
        if exc.code in (401, 403):
            raise DatasetError(f"'{dataset_id}' is gated or private on the Hugging Face Hub (HTTP {exc.code}): "
                               "accept its terms on the Hub and set HF_TOKEN") from None
        if exc.code == 404:
            raise DatasetError(f"'{dataset_id}' was not found on the Hugging Face Hub (is the id misspelt, or is "
                               "it private? set HF_TOKEN)") from None
        raise DatasetError(f"the Hugging Face Hub answered HTTP {exc.code} for '{dataset_id}'") from None
    except (OSError, ValueError) as exc:
        raise DatasetError(f"the Hugging Face Hub is unreachable from this machine; cannot load '{dataset_id}' "
                           f"({type(getattr(exc, 'reason', exc)).__name__})") from None


def read_hub(dataset_id: str, *, config: str | None = None, progress: Progress | None = None,
             max_rows: int | None = None) -> RawRead:
    """Load every split of a Hub dataset with ``datasets.load_dataset``, after its card was checked (nothing it
    lists outside the dataset is read). ``max_rows``: refused, before any row is turned into a record, when the
    dataset has more.

    Offline: DatasetError('the Hub is unreachable')."""
    import os

    if progress is not None:
        progress(0.05, desc=f"downloading {dataset_id} from the Hub")
    _check_card(dataset_id)
    if os.environ.get("HF_HUB_OFFLINE", "").strip() in ("1", "true", "yes") and not Path(dataset_id).is_dir():
        raise DatasetError(f"the Hugging Face Hub is unreachable (HF_HUB_OFFLINE is set); cannot load '{dataset_id}'")
    try:
        from datasets import load_dataset

        dsd = load_dataset(dataset_id, config)
    except Exception as exc:  # noqa: BLE001 - network errors surface as many types (ConnectionError, HfHubHTTPError...)
        msg = str(exc)
        name = type(exc).__name__
        if _hub_unreachable(exc):
            raise DatasetError(
                f"the Hugging Face Hub is unreachable from this machine; cannot load '{dataset_id}' ({name})"
            ) from None
        raise DatasetError(f"could not load '{dataset_id}' from the Hugging Face Hub ({name}: {msg[:200]})") from None
    total = sum(ds.num_rows for ds in dsd.values())
    if max_rows is not None and total > max_rows:
        raise DatasetError(f"'{dataset_id}' has {total:,} rows; this studio imports at most {max_rows:,} "
                           "(FTS_MAX_IMPORT_ROWS): import a subset (a split or a sample)")
    records: list[tuple[int, Any]] = []
    splits: dict[int, str] = {}
    n = 0
    for split_name, ds in dsd.items():
        for rec in ds:
            n += 1
            records.append((n, rec))
            splits[n] = split_name
    if not records:
        raise DatasetError(f"Hub dataset '{dataset_id}' has no rows")
    return RawRead(records=records, container="hub", source_splits=splits if len(dsd) > 1 else {})
