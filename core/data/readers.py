"""Read a data file (JSON array, JSONL, CSV/TSV, Parquet, TXT) into raw records (a Hub dataset: core.data.hub).

Pure I/O: no format detection beyond the container. Every record keeps its 1-based row number (the line number
for JSONL/TXT, the position for JSON arrays / CSV / Parquet) so problems can point at it. Encodings are sniffed:
UTF-8 (with or without BOM), UTF-16/32 with BOM, UTF-16 without BOM, and Latin-1 as the last resort (reported).
The caps on what one import may hold are checked before the records are built (core.data.limits).
"""
from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.data.errors import DatasetError, RowProblem
from core.data.limits import ImportLimits

Progress = Callable[..., Any]

TEXT_EXTENSIONS = {".txt", ".text", ".md"}
JSON_EXTENSIONS = {".json"}
JSONL_EXTENSIONS = {".jsonl", ".ndjson", ".jsonlines"}
CSV_EXTENSIONS = {".csv"}
TSV_EXTENSIONS = {".tsv", ".tab"}
PARQUET_EXTENSIONS = {".parquet", ".pq"}
SUPPORTED = ".json, .jsonl, .csv, .tsv, .parquet, .txt"
# a column whose cells hold JSON (CSV exports of chat data)
_JSON_CELL_COLUMNS = {"messages", "conversations", "history", "tools", "chosen", "rejected", "prompt", "completion"}


@dataclass
class RawRead:
    records: list[tuple[int, Any]]  # (row number, parsed record)
    container: str  # json | jsonl | csv | tsv | parquet | txt | hub
    encoding: str = "utf-8"
    problems: list[RowProblem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # file-level remarks (encoding fallback, BOM, CRLF)
    source_splits: dict[int, str] = field(default_factory=dict)  # row -> split name, for Hub datasets


def decode_bytes(data: bytes) -> tuple[str, str, list[str]]:
    """Bytes -> (text, encoding name, notes). Never raises for text-like input; binary input raises DatasetError."""
    notes: list[str] = []
    boms = [
        (b"\xef\xbb\xbf", "utf-8-sig"),
        (b"\xff\xfe\x00\x00", "utf-32"),
        (b"\x00\x00\xfe\xff", "utf-32"),
        (b"\xff\xfe", "utf-16"),
        (b"\xfe\xff", "utf-16"),
    ]
    for bom, enc in boms:
        if data.startswith(bom):
            try:
                text = data.decode(enc)
            except UnicodeDecodeError as exc:
                raise DatasetError(
                    f"the file starts with a {enc} byte-order mark but is not valid {enc}: {exc}"
                ) from exc
            notes.append(f"decoded as {enc} (byte-order mark found)")
            return _normalise_newlines(text, notes), enc, notes
    sample = data[:4096]
    if sample and sample.count(b"\x00") > len(sample) // 4:  # UTF-16 without BOM: every other byte is NUL
        even_nuls = sample[0::2].count(b"\x00")
        odd_nuls = sample[1::2].count(b"\x00")
        enc = "utf-16-le" if odd_nuls > even_nuls else "utf-16-be"
        try:
            text = data.decode(enc)
            notes.append(f"decoded as {enc} (no byte-order mark)")
            return _normalise_newlines(text, notes), enc, notes
        except UnicodeDecodeError:
            raise DatasetError("the file looks binary (many NUL bytes) and is not UTF-16 text") from None
    try:
        text = data.decode("utf-8")
        enc = "utf-8"
    except UnicodeDecodeError as exc:
        text = data.decode("latin-1")
        enc = "latin-1"
        notes.append(f"not valid UTF-8 (byte {exc.start}); decoded as Latin-1 — check accented characters")
    return _normalise_newlines(text, notes), enc, notes


def _normalise_newlines(text: str, notes: list[str]) -> str:
    if "\r" in text:
        notes.append("Windows (CRLF) line endings converted")
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text


def read_file(path: str | Path, progress: Progress | None = None, limits: ImportLimits | None = None) -> RawRead:
    """Read a local data file into raw records, or raise DatasetError saying why it cannot be read. ``limits``: the
    caps, checked before the records are built (from the file's size, a Parquet footer, a line count)."""
    limits = limits or ImportLimits()
    p = Path(path).expanduser()
    if not p.exists():
        raise DatasetError(f"file {p} not found")
    if p.is_dir():
        raise DatasetError(f"{p} is a directory; point at a data file ({SUPPORTED})")
    ext = p.suffix.lower()
    try:
        with open(p, "rb") as fh:
            magic = fh.read(4)
        if ext in PARQUET_EXTENSIONS or magic == b"PAR1":
            return _read_parquet(p, limits)
        limits.check_bytes(p.stat().st_size, f"file {p.name}")
        data = p.read_bytes()
    except OSError as exc:
        raise DatasetError(f"file {p} cannot be read: {exc.strerror or exc}") from exc
    if not data.strip(b" \t\r\n\x00\xef\xbb\xbf\xff\xfe"):
        raise DatasetError(f"file {p} is empty")
    if limits.max_rows is not None and ext in JSONL_EXTENSIONS and data.count(b"\n") > limits.max_rows:
        lines = sum(1 for line in data.split(b"\n") if line.strip())
        limits.check_rows(lines, f"file {p.name}")
    try:
        text, encoding, notes = decode_bytes(data)
    except DatasetError as exc:
        raise DatasetError(f"file {p} cannot be read: {exc}") from None
    if not text.strip():
        raise DatasetError(f"file {p} is empty")
    if ext in CSV_EXTENSIONS or ext in TSV_EXTENSIONS:
        raw = _read_csv(text, "\t" if ext in TSV_EXTENSIONS else ",", p)
    elif ext in TEXT_EXTENSIONS:
        raw = _read_txt(text)
    elif ext in JSONL_EXTENSIONS:
        raw = _read_jsonl(text, p, progress)
    elif ext in JSON_EXTENSIONS or ext == "":
        raw = _read_json_or_jsonl(text, p, progress)
    else:
        head = text.lstrip()[:1]
        if head in ("[", "{"):
            raw = _read_json_or_jsonl(text, p, progress)
        else:
            raise DatasetError(f"file {p} has an unsupported extension '{ext}'; use one of {SUPPORTED}")
    raw.encoding = encoding
    raw.notes = notes + raw.notes
    limits.check_rows(len(raw.records), f"file {p.name}")
    return raw


def _read_json_or_jsonl(text: str, p: Path, progress: Progress | None) -> RawRead:
    stripped = text.lstrip()
    try:
        obj = json.loads(stripped)
    except RecursionError:
        raise DatasetError(f"file {p} nests JSON too deeply (over ~1,000 levels); no dataset row is that deep"
                           ) from None
    except json.JSONDecodeError as exc:
        if stripped.startswith("{"):  # several objects, one per line: JSONL saved as .json
            raw = _read_jsonl(text, p, progress)
            raw.notes.append("the .json file holds one JSON object per line; read as JSONL")
            return raw
        raise DatasetError(f"file {p} is not valid JSON: line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    if isinstance(obj, dict):
        lists = [v for v in obj.values() if isinstance(v, list)]
        if len(obj) == 1 and lists:  # {"data": [...]}
            obj = lists[0]
        elif obj and all(isinstance(v, list) for v in obj.values()) and len({len(v) for v in obj.values()}) == 1:
            keys = list(obj)  # column-oriented {"instruction": [...], "output": [...]}
            obj = [dict(zip(keys, vals)) for vals in zip(*obj.values())]
        else:
            obj = [obj]  # a single record
    if not isinstance(obj, list):
        raise DatasetError(f"file {p} holds a JSON {type(obj).__name__}, not a list of records")
    if not obj:
        raise DatasetError(f"file {p} is an empty JSON list")
    return RawRead(records=[(i + 1, r) for i, r in enumerate(obj)], container="json")


def _read_jsonl(text: str, p: Path, progress: Progress | None) -> RawRead:
    records: list[tuple[int, Any]] = []
    problems: list[RowProblem] = []
    lines = text.split("\n")
    total = len(lines)
    step = max(1, total // 20)
    loads = json.loads
    for i, line in enumerate(lines):
        if progress is not None and i % step == 0 and total > 50_000:
            progress(0.3 * i / total, desc=f"reading line {i:,} of {total:,}")
        if not line.strip():
            continue
        try:
            records.append((i + 1, loads(line)))
        except RecursionError:
            problems.append(RowProblem(i + 1, "malformed_json", f"row {i + 1}: JSON nested too deeply (over ~1,000 "
                                                                "levels)"))
        except json.JSONDecodeError as exc:
            problems.append(RowProblem(i + 1, "malformed_json",
                                       f"row {i + 1}: not valid JSON ({exc.msg} at column {exc.colno})"))
    if not records:
        first = problems[0].reason if problems else "no lines"
        raise DatasetError(f"file {p} has no valid JSON line ({first})")
    return RawRead(records=records, container="jsonl", problems=problems)


def _read_csv(text: str, delimiter: str, p: Path) -> RawRead:
    try:
        reader = csv.DictReader(io.StringIO(text), delimiter=delimiter)
        fieldnames = reader.fieldnames
        rows = list(reader)
    except csv.Error as exc:
        raise DatasetError(f"file {p} is not valid CSV: {exc}") from None
    if not fieldnames:
        raise DatasetError(f"file {p} has no header row")
    fieldnames = [f.strip() if f else f for f in fieldnames]
    if len(fieldnames) == 1 and delimiter == "," and "\t" in fieldnames[0]:
        return _read_csv(text, "\t", p)  # a TSV saved as .csv
    records = []
    for i, row in enumerate(rows):
        rec: dict[str, Any] = {}
        for k, v in row.items():
            if k is None:
                continue
            key = k.strip()
            if isinstance(v, str) and key in _JSON_CELL_COLUMNS and v.lstrip()[:1] in ("[", "{"):
                try:
                    v = json.loads(v)
                except json.JSONDecodeError:
                    pass
            rec[key] = v
        records.append((i + 1, rec))
    if not records:
        raise DatasetError(f"file {p} has a header but no rows")
    return RawRead(records=records, container="tsv" if delimiter == "\t" else "csv")


def _read_txt(text: str) -> RawRead:
    """Plain text: one document per paragraph (blank-line separated); row numbers are first-line numbers."""
    records = []
    buf: list[str] = []
    start = 0
    for i, line in enumerate(text.split("\n")):
        if line.strip():
            if not buf:
                start = i + 1
            buf.append(line)
        elif buf:
            records.append((start, {"text": "\n".join(buf)}))
            buf = []
    if buf:
        records.append((start, {"text": "\n".join(buf)}))
    return RawRead(records=records, container="txt")


def _read_parquet(p: Path, limits: ImportLimits | None = None) -> RawRead:
    """A Parquet file: its footer (rows, uncompressed bytes) is checked against the caps before any row is read —
    a few kilobytes of Parquet can hold millions of rows."""
    limits = limits or ImportLimits()
    try:
        import pyarrow.parquet as pq

        meta = pq.ParquetFile(p).metadata
        uncompressed = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for corrupt files
        raise DatasetError(f"file {p} is not a readable Parquet file: {str(exc)[:200]}") from None
    limits.check_rows(meta.num_rows, f"file {p.name}")
    limits.check_bytes(uncompressed, f"file {p.name}")
    try:
        table = pq.read_table(p)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for corrupt files
        raise DatasetError(f"file {p} is not a readable Parquet file: {str(exc)[:200]}") from None
    rows = table.to_pylist()
    if not rows:
        raise DatasetError(f"file {p} has no rows")
    return RawRead(records=[(i + 1, r) for i, r in enumerate(rows)], container="parquet")
