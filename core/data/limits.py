"""Caps on what one import may hold (issue 25: a file that expands): rows, and bytes of data once decompressed,
checked before a source is materialised. Set by the admin (``FTS_MAX_IMPORT_ROWS`` / ``FTS_MAX_IMPORT_MB``); a shared
studio has defaults; the CLI (the host's own) has none.
"""
from __future__ import annotations

from dataclasses import dataclass

from core.data.errors import DatasetError

SHARED_MAX_ROWS = 500_000
SHARED_MAX_MB = 1024


@dataclass(frozen=True)
class ImportLimits:
    """Caps checked before a source is materialised: rows, and bytes of data once decompressed (a text file's size,
    a Parquet file's uncompressed size from its footer). None: no cap."""

    max_rows: int | None = None
    max_bytes: int | None = None

    def check_rows(self, n: int, what: str, *, at_least: bool = False) -> None:
        if self.max_rows is not None and n > self.max_rows:
            raise DatasetError(f"{what} has {'more than ' if at_least else ''}{n:,} rows; this studio imports at most "
                               f"{self.max_rows:,} in one dataset (FTS_MAX_IMPORT_ROWS): import a sample of it")

    def check_bytes(self, n: int, what: str) -> None:
        if self.max_bytes is not None and n > self.max_bytes:
            raise DatasetError(f"{what} holds {n / 1024**2:,.0f} MB of data once decompressed; this studio imports at "
                               f"most {self.max_bytes / 1024**2:,.0f} MB in one dataset (FTS_MAX_IMPORT_MB): import a "
                               "sample of it")

    def to_dict(self) -> dict:
        return {"max_rows": self.max_rows, "max_bytes": self.max_bytes}

    @classmethod
    def from_dict(cls, data: dict | None) -> ImportLimits:
        data = data or {}
        return cls(data.get("max_rows"), data.get("max_bytes"))


def _cap_env(name: str) -> int | None:
    import os

    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    try:
        return max(1, int(float(raw)))
    except ValueError:
        return None


def import_limits() -> ImportLimits:
    """The caps for an import asked for from the page: ``FTS_MAX_IMPORT_ROWS`` / ``FTS_MAX_IMPORT_MB`` when the admin
    set them; in a shared studio 500,000 rows and 1,024 MB by default. The CLI (the host's own) has none."""
    from core.access import in_page, shared_mode

    if not in_page():
        return ImportLimits()
    rows, mb = _cap_env("FTS_MAX_IMPORT_ROWS"), _cap_env("FTS_MAX_IMPORT_MB")
    if shared_mode():
        rows = rows or SHARED_MAX_ROWS
        mb = mb or SHARED_MAX_MB
    return ImportLimits(rows, mb * 1024**2 if mb else None)
