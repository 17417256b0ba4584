"""Imports too big to read in the page's process run as a job (the ``import`` kind, in the queue's "io" lane).

The page must never load untrusted bulk into itself (issue 25): a source over ``FTS_IMPORT_IN_PAGE_MB`` (32 MB of
data once decompressed), over 100,000 rows by its own metadata, or a Hub dataset (its size is known only once it is
downloaded) is imported by a worker process with a memory cap (``FTS_IMPORT_MAX_MEMORY_GB``, 4 GB, enforced by its
supervisor from outside the process), with progress, stoppable, under the same caps as the page
(``core.data.limits.ImportLimits``, decided when it was asked for and carried in the job's config). Its result is a
dataset row like any other; the job's ``final_metrics`` name it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from core.data.errors import DatasetError
from core.data.limits import ImportLimits, import_limits
from core.data.readers import PARQUET_EXTENSIONS

IN_PAGE_ROWS = 100_000


@dataclass(frozen=True)
class SourceSize:
    """What a source holds, read from its metadata without materialising it (None: unknown before reading)."""

    bytes: int | None
    rows: int | None
    hub: bool = False


def in_page_bytes() -> int:
    from core.config import positive_int_env

    return positive_int_env("FTS_IMPORT_IN_PAGE_MB", 32) * 1024**2


def measure_source(source: str, limits: ImportLimits | None = None) -> SourceSize:
    """The size of a source (after the resolver: a page user's reference is checked first), from the file's size or
    a Parquet footer; a Hub dataset's is unknown until it is downloaded. A source over the caps (``limits``, default
    the page's) is refused here, in milliseconds, before anything reads it."""
    size = _measure(source)
    limits = limits if limits is not None else import_limits()
    if size.rows is not None:
        limits.check_rows(size.rows, f"file {Path(source).name}")
    if size.bytes is not None:
        limits.check_bytes(size.bytes, f"file {Path(source).name}")
    return size


def _measure(source: str) -> SourceSize:
    from core.access import PathNotAllowed, locate

    try:
        loc = locate(source, "the data source")
    except PathNotAllowed as exc:
        raise DatasetError(str(exc)) from None
    if loc.kind == "hub":
        return SourceSize(None, None, hub=True)
    p = loc.path
    if not p.is_file():
        return SourceSize(None, None)
    try:
        with open(p, "rb") as fh:
            magic = fh.read(4)
        if p.suffix.lower() in PARQUET_EXTENSIONS or magic == b"PAR1":
            import pyarrow.parquet as pq

            meta = pq.ParquetFile(p).metadata
            return SourceSize(sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups)),
                              meta.num_rows)
        return SourceSize(p.stat().st_size, None)
    except Exception:  # noqa: BLE001 - a broken file is reported by the reader with its reason
        return SourceSize(None, None)


def needs_a_job(size: SourceSize) -> bool:
    """Whether an import asked for from the page runs as a job instead of in the page's process."""
    if size.hub:
        return True
    if size.bytes is not None and size.bytes > in_page_bytes():
        return True
    return size.rows is not None and size.rows > IN_PAGE_ROWS


def submit_import(source: str, options: dict, *, owner: str = "", limits: ImportLimits | None = None,
                  label: str | None = None):
    """Queue an import job; ``options``: import_dataset's keyword arguments (name, format, column_map, split,
    drop_invalid, template_values, model, max_length). The caps in force now travel with it."""
    from core import runs

    limits = limits if limits is not None else import_limits()
    shown = label or (Path(source).name if not source.startswith("hub:") else source)
    config = {"source": source, "source_label": label, "options": dict(options), "limits": limits.to_dict(),
              "memory_cap_bytes": memory_cap_bytes(), "memory_cap_source": "FTS_IMPORT_MAX_MEMORY_GB"}
    return runs.submit("import", config, name=f"import {shown}"[:80], owner=owner, dataset_ref=shown)


def run_job(ctx):
    """The worker side: read, check and store the dataset, reporting progress; the caps are the ones submitted."""
    from core.data.importer import import_dataset
    from core.runs.worker import JobResult, StopRequested

    cfg = ctx.config
    state = {"last": -1.0}

    def progress(frac: float, desc: str = "") -> None:
        if ctx.should_stop():
            raise StopRequested()
        frac = max(0.0, min(1.0, float(frac)))
        if frac - state["last"] >= 0.01 or frac >= 1.0:
            state["last"] = frac
            ctx.progress(step=int(round(frac * 100)), max_steps=100)
            if desc:
                ctx.log(desc)

    ctx.progress(step=0, max_steps=100)
    result = import_dataset(cfg["source"], progress=progress, source_label=cfg.get("source_label"),
                            owner=ctx.job.owner or "", limits=ImportLimits.from_dict(cfg.get("limits")),
                            **(cfg.get("options") or {}))
    return JobResult(summary=result.message, final_metrics={
        "dataset_id": result.dataset_id, "created": result.created, "kept": result.kept, "dropped": result.dropped,
        "message": result.message, "notes": result.notes, "problems": result.problems})


def memory_cap_bytes() -> int | None:
    """``FTS_IMPORT_MAX_MEMORY_GB`` (default 4): the most an import worker may hold (its whole process, libraries
    included); its supervisor stops it above that and says so. 0: no cap."""
    try:
        gb = float(os.environ.get("FTS_IMPORT_MAX_MEMORY_GB", "4"))
    except ValueError:
        gb = 4.0
    return int(gb * 1024**3) if gb > 0 else None
