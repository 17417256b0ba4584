"""Property-based fuzzing of the importer (issue 15's habits): whatever a user uploads — random bytes, random JSON
shapes, odd encodings, CSV columns of mixed types — ends in a stored dataset or in one clear DatasetError line. Never
another exception (a traceback on the page), never a half-written dataset folder, never a row without its files.

Hypothesis (pinned in requirements-dev.txt) generates the cases; the number run is printed (`pytest -s`) and in the
closing note. Tokenization is left out (``model=None``): it is the same code for every input and costs a tokenizer
load per case; the readers, the normaliser, the validator, the splitter and the writer are what get fuzzed.
"""
from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.data import DatasetError
from core.data.importer import import_dataset
from core.data.stored import list_datasets

EXTENSIONS = [".json", ".jsonl", ".csv", ".tsv", ".txt"]
KEYS = ["instruction", "input", "output", "text", "messages", "conversations", "role", "content", "from", "value",
        "prompt", "chosen", "rejected", "question", "choices", "answer", "system", "history", "tools", "id", "",
        "\u00e9\u00e8", "a b", "<script>"]
COUNT = {"cases": 0, "stored": 0, "refused": 0}
CASES = int(os.environ.get("FTS_FUZZ_CASES", "1000"))  # 1000 in the suite (~15 s); 6000 random ones ran clean too
RANDOM = os.environ.get("FTS_FUZZ_RANDOM") == "1"  # new cases each run instead of the suite's fixed ones

scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(allow_nan=True),
                    st.text(max_size=40))
json_values = st.recursive(scalars, lambda children: st.one_of(
    st.lists(children, max_size=4), st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=8), children,
                                                    max_size=5)), max_leaves=20)
# rows that look like the formats people bring, with values of the wrong type here and there
roles = st.sampled_from(["user", "assistant", "system", "tool", "bot", ""])
chat_turn = st.fixed_dictionaries({"role": roles | scalars, "content": st.text(max_size=30) | scalars})
row_like = st.one_of(
    st.fixed_dictionaries({"instruction": st.text(max_size=30) | scalars, "output": st.text(max_size=30) | scalars},
                          optional={"input": st.text(max_size=20) | scalars}),
    st.fixed_dictionaries({"messages": st.lists(chat_turn, max_size=4) | scalars}),
    st.fixed_dictionaries({"text": st.text(max_size=60) | scalars}),
    st.fixed_dictionaries({"prompt": st.text(max_size=20) | scalars, "chosen": st.text(max_size=20) | scalars,
                           "rejected": st.text(max_size=20) | scalars}),
    st.dictionaries(st.sampled_from(KEYS), json_values, max_size=4),
)
encodings = st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "latin-1", "cp1252"])


def _encode(text: str, encoding: str) -> bytes:
    return text.encode(encoding, errors="replace")


@st.composite
def uploads(draw) -> tuple[str, bytes]:
    """(file extension, content) of one fuzzed upload."""
    kind = draw(st.sampled_from(["bytes", "json", "jsonl", "csv", "text"]))
    enc = draw(encodings)
    if kind == "bytes":
        return draw(st.sampled_from(EXTENSIONS)), draw(st.binary(max_size=400))
    if kind == "json":
        value = draw(st.lists(row_like, max_size=6) | json_values | st.dictionaries(
            st.sampled_from(["data", "rows", "train", "examples"]), st.lists(row_like, max_size=4), max_size=2))
        return ".json", _encode(json.dumps(value, ensure_ascii=draw(st.booleans())), enc)
    if kind == "jsonl":
        lines = [json.dumps(v) for v in draw(st.lists(row_like | json_values, max_size=6))]
        if draw(st.booleans()):  # a broken line in the middle
            lines.insert(draw(st.integers(0, len(lines))), draw(st.text(max_size=20)))
        return ".jsonl", _encode("\n".join(lines), enc)
    if kind == "csv":
        cols = draw(st.lists(st.sampled_from(KEYS), min_size=1, max_size=4, unique=True))
        rows = draw(st.lists(st.lists(scalars, min_size=len(cols), max_size=len(cols)), max_size=6))
        delim = draw(st.sampled_from([",", "\t", ";"]))
        buf = io.StringIO()
        writer = csv.writer(buf, delimiter=delim)
        writer.writerow(cols)
        writer.writerows(rows)
        return (".tsv" if delim == "\t" else ".csv"), _encode(buf.getvalue(), enc)
    return ".txt", _encode(draw(st.text(max_size=300)), enc)


def _check_store(datasets_dir: Path, stored: str | None, rows_before: int) -> None:
    """The dataset stored (if any) has its complete folder and its row; no temporary folder is left behind; a
    refused upload added no row."""
    leftovers = [p.name for p in datasets_dir.glob(".tmp-*")] if datasets_dir.is_dir() else []
    assert not leftovers, f"half-written dataset folders left: {leftovers}"
    if stored is None:
        assert len(list_datasets()) == rows_before
        return
    folder = Path(stored)
    assert (folder / "meta.json").is_file() and all((folder / f"{s}.jsonl").is_file()
                                                    for s in ("train", "validation", "test")), stored


@pytest.mark.slow
def test_every_fuzzed_upload_ends_in_a_dataset_or_one_clear_error(workspace, tmp_path):
    from core.config import get_settings

    datasets_dir = get_settings().datasets_dir

    @settings(max_examples=CASES, deadline=None, derandomize=not RANDOM, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                     HealthCheck.data_too_large])
    @given(uploads())
    def one(upload):
        ext, content = upload
        COUNT["cases"] += 1
        path = tmp_path / f"upload-{COUNT['cases']}{ext}"
        path.write_bytes(content)
        rows_before, stored = len(list_datasets()), None
        try:
            result = import_dataset(str(path), model=None, source_label=path.name)
        except DatasetError as exc:
            msg = str(exc)
            assert msg.strip() and "Traceback" not in msg and len(msg) < 2000, msg
            COUNT["refused"] += 1
        else:
            assert result.kept >= 1 and sum(result.splits.values()) == result.kept
            COUNT["stored"] += 1
            stored = result.path
        finally:
            path.unlink(missing_ok=True)
        _check_store(datasets_dir, stored, rows_before)

    one()
    print(f"\nimporter fuzz: {COUNT['cases']} cases, {COUNT['stored']} stored as datasets, "
          f"{COUNT['refused']} refused with one DatasetError line, 0 other outcomes")
    assert COUNT["cases"] >= CASES and COUNT["stored"] > 20 and COUNT["refused"] > 20
