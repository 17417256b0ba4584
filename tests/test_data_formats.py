"""Formats, bad inputs, splits: pure functions over files (no tokenizer, no database)."""
from __future__ import annotations

import json

import pytest

from core.data import DatasetError, SplitSpec, assign_splits, load_training_rows, prepare_dataset
from core.data.formats import detect_format
from core.data.hub import read_hub


def codes(prep) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for p in prep.problems:
        out.setdefault(p.code, []).append(p.row)
    return out


# ------------------------------------------------------------------------------------------------ every format
@pytest.mark.parametrize(
    "name, fmt, kind, n",
    [
        ("alpaca_en_demo.json", "alpaca", "sft", 20),
        ("identity.json", "alpaca", "sft", 10),
        ("glaive_toolcall_en_demo.json", "sharegpt", "sft", 12),
        ("v1_sft_demo.jsonl", "openai", "sft", 12),
        ("openai_chat.jsonl", "openai", "sft", 3),
        ("c4_demo.jsonl", "text", "text", 10),
        ("dpo_en_demo.json", "preference", "preference", 8),
        ("dolly.csv", "prompt_completion", "sft", 3),
        ("qa.tsv", "prompt_completion", "sft", 10),
        ("prompt_completion.jsonl", "prompt_completion", "sft", 6),
        ("alpaca.parquet", "alpaca", "sft", 8),
        ("corpus.txt", "text", "text", 3),
    ],
)
def test_each_format_is_detected_and_normalised(fixtures_dir, name, fmt, kind, n):
    prep = prepare_dataset(fixtures_dir / name)
    assert (prep.format, prep.kind) == (fmt, kind)
    assert len(prep.rows) == n
    for pr in prep.rows:
        row = pr.row
        if kind == "sft":
            assert all(set(m) == {"role", "content"} and isinstance(m["content"], str) for m in row["messages"])
            assert any(m["role"] == "assistant" for m in row["messages"])
        elif kind == "text":
            assert isinstance(row["text"], str) and row["text"].strip()
        else:
            assert row["chosen"][0]["role"] == "assistant" and row["rejected"][0]["role"] == "assistant"


def test_alpaca_row_becomes_user_then_assistant(fixtures_dir):
    rows = load_training_rows(str(fixtures_dir / "alpaca_en_demo.json"))
    src = json.loads((fixtures_dir / "alpaca_en_demo.json").read_text())
    with_input = next(i for i, r in enumerate(src) if r["input"])
    msgs = rows[with_input]["messages"]
    assert [m["role"] for m in msgs] == ["user", "assistant"]
    assert msgs[0]["content"] == src[with_input]["instruction"] + "\n\n" + src[with_input]["input"]
    assert msgs[1]["content"] == src[with_input]["output"]


def test_sharegpt_tool_calls_and_tools(fixtures_dir):
    rows = load_training_rows(str(fixtures_dir / "glaive_toolcall_en_demo.json"))
    row = rows[0]
    assert [m["role"] for m in row["messages"]][:6] == ["user", "assistant", "user", "assistant", "tool", "assistant"]
    assert json.loads(row["messages"][3]["content"])["name"] == "search_recipes"
    assert isinstance(row["tools"], list) and row["tools"][0]["name"] == "search_recipes"


def test_openai_typed_parts_and_tool_calls(fixtures_dir):
    rows = load_training_rows(str(fixtures_dir / "openai_chat.jsonl"))
    assert rows[1]["messages"] == [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"}]
    assert "get_weather" in rows[2]["messages"][1]["content"] and rows[2]["messages"][2]["role"] == "tool"
    v1 = load_training_rows(str(fixtures_dir / "v1_sft_demo.jsonl"))  # parts with "value" and per-turn loss_weight
    assert v1[0]["messages"][0] == {"role": "user", "content": "hi"}


def test_dolly_context_and_column_map(fixtures_dir, tmp_path):
    rows = load_training_rows(str(fixtures_dir / "dolly.csv"))
    assert rows[1]["messages"][0]["content"].endswith("The cat sat on the mat all day, watching birds.")
    p = tmp_path / "odd.jsonl"
    p.write_text("\n".join(json.dumps({"q_text": f"q{i}", "a_text": f"a{i}", "sys": "Be brief."}) for i in range(3)))
    with pytest.raises(DatasetError, match="cannot tell the format"):
        prepare_dataset(p)
    prep = prepare_dataset(p, column_map={"prompt": "q_text", "completion": "a_text", "system": "sys"})
    assert prep.format == "prompt_completion"
    assert prep.rows[0].row["messages"] == [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "q0"},
        {"role": "assistant", "content": "a0"}]


def test_manual_format_override(fixtures_dir):
    prep = prepare_dataset(fixtures_dir / "alpaca_en_demo.json", format="prompt_completion")
    assert prep.format == "prompt_completion" and prep.detected_format == "alpaca"  # input/output pair
    with pytest.raises(DatasetError, match="unknown format"):
        prepare_dataset(fixtures_dir / "alpaca_en_demo.json", format="nonsense")


def test_preference_is_refused_for_sft(fixtures_dir):
    with pytest.raises(DatasetError, match="preference pairs"):
        load_training_rows(str(fixtures_dir / "dpo_en_demo.json"))


def test_placeholders_found_and_filled(fixtures_dir):
    prep = prepare_dataset(fixtures_dir / "identity.json")
    assert prep.placeholders == ["author", "name"]
    assert "unfilled_placeholder" in codes(prep)
    filled = prepare_dataset(fixtures_dir / "identity.json", template_values={"name": "Ada", "author": "Acme"})
    assert "Ada" in filled.rows[0].row["messages"][1]["content"] and "unfilled_placeholder" not in codes(filled)


def test_detect_format_votes():
    rows = [{"text": "a"}, {"instruction": "i", "output": "o"}, {"instruction": "i", "output": "o"}]
    assert detect_format(rows) == "alpaca"
    assert detect_format([{"foo": 1}]) is None


# ------------------------------------------------------------------------------------------------- bad inputs
def write(tmp_path, name, data: bytes):
    p = tmp_path / name
    p.write_bytes(data)
    return p


def test_malformed_json_lines_are_reported_with_line_numbers(tmp_path):
    good = json.dumps({"prompt": "a", "completion": "b"})
    p = write(tmp_path, "x.jsonl", f"{good}\n{{broken\n{good.replace('a', 'c')}\n\nnot json\n".encode())
    prep = prepare_dataset(p)
    assert codes(prep)["malformed_json"] == [2, 5]
    assert len(prep.rows) == 2 and prep.total_records == 4
    assert "row 2" in prep.problems[0].reason


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16", "utf-16-le", "latin-1"])
def test_encodings(tmp_path, encoding):
    rows = [{"instruction": "Café crème?", "input": "", "output": "Oui, très bon."}]
    p = write(tmp_path, "enc.json", json.dumps(rows, ensure_ascii=False).encode(encoding))
    prep = prepare_dataset(p)
    assert prep.rows[0].row["messages"][0]["content"] == "Café crème?"
    if encoding == "latin-1":
        assert prep.encoding == "latin-1" and any("Latin-1" in n for n in prep.notes)


def test_crlf_lines(tmp_path):
    lines = [json.dumps({"prompt": f"p{i}", "completion": "line one\r\nline two"}) for i in range(3)]
    p = write(tmp_path, "crlf.jsonl", "\r\n".join(lines).encode() + b"\r\n")
    prep = prepare_dataset(p)
    assert len(prep.rows) == 3 and not prep.problems
    assert any("CRLF" in n for n in prep.notes)
    csvp = write(tmp_path, "crlf.csv", b"prompt,completion\r\nhi,hello\r\nbye,ciao\r\n")
    assert [r.row["messages"][1]["content"] for r in prepare_dataset(csvp).rows] == ["hello", "ciao"]


@pytest.mark.parametrize("content", [b"", b"   \n\n", b"\xef\xbb\xbf"])
def test_empty_file_is_rejected(tmp_path, content):
    p = write(tmp_path, "empty.jsonl", content)
    with pytest.raises(DatasetError, match="is empty"):
        prepare_dataset(p)


@pytest.mark.parametrize(
    "name, data, message",
    [
        ("garbage.json", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 4,
         "cannot be read|not valid JSON|binary"),
        ("bad.json", b'[{"instruction": "x", "output": ', "not valid JSON: line 1"),
        ("list.json", b"[]", "empty JSON list"),
        ("nums.json", b"[1, 2, 3]", "no records with fields"),
        ("x.xlsx", b"PK\x03\x04 zip", "unsupported extension"),
        ("broken.parquet", b"PAR1 not really parquet", "not a readable Parquet"),
    ],
)
def test_unreadable_files_say_why(tmp_path, name, data, message):
    p = write(tmp_path, name, data)
    with pytest.raises(DatasetError, match=message):
        prepare_dataset(p)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        load_training_rows(str(tmp_path / "nope.json"))
    with pytest.raises(DatasetError, match="directory"):
        load_training_rows(str(tmp_path))


def test_row_level_problems(tmp_path):
    rows = [
        {"messages": [{"role": "user", "content": "ok"}, {"role": "assistant", "content": "fine"}]},  # 1 good
        {"messages": [{"role": "user", "content": "no answer"}]},  # 2 no assistant turn
        {"messages": [{"role": "assistant", "content": "first!"}, {"role": "user", "content": "hm"},
                      {"role": "assistant", "content": "x"}]},  # 3 order
        {"messages": [{"role": "user", "content": 42},
                      {"role": "assistant", "content": "forty-two"}]},  # 4 non-string (number)
        {"messages": [{"role": "user", "content": {"a": 1}},
                      {"role": "assistant", "content": "?"}]},  # 5 non-text content
        {"messages": [{"role": "user", "content": "ok"}, {"role": "assistant", "content": "fine"}]},  # 6 duplicate of 1
        {"messages": [{"role": "user", "content": ""},
                      {"role": "assistant", "content": "empty question"}]},  # 7 empty turn
        {"messages": []},  # 8 empty conversation
        {"messages": [{"role": "wizard", "content": "?"}]},  # 9 unknown role
        ["not", "an", "object"],  # 10
        {"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"},
                      {"role": "assistant", "content": "c"}]},  # 11
    ]
    p = tmp_path / "rows.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in rows))
    prep = prepare_dataset(p)
    c = codes(prep)
    assert c["no_assistant_turn"] == [2]
    assert c["role_order"] == [3, 11]
    assert c["non_string_content"] == [4]
    assert c["bad_content"] == [5, 9]
    assert c["duplicate"] == [6]
    assert c["empty_turn"] == [7]
    assert c["missing_field"] == [8]
    assert c["not_an_object"] == [10]
    summary = {s["code"]: s for s in prep.problem_summary(drop={"duplicate"})}
    assert summary["duplicate"]["action"] == "dropped" and summary["role_order"]["action"] == "kept"
    # droppable, not fatal: kept on request (a prompts-only evaluation set); dropped unless asked
    assert not summary["no_assistant_turn"]["fatal"] and summary["no_assistant_turn"]["action"] == "kept"
    # training from the file drops every problem row
    assert len(load_training_rows(str(p))) == 2  # rows 1 and 4 (number converted to text)


def test_alpaca_empty_output(tmp_path):
    p = tmp_path / "a.json"
    p.write_text(json.dumps([{"instruction": "q", "input": "", "output": ""}, {"instruction": "q2", "output": "a2"}]))
    prep = prepare_dataset(p)
    assert codes(prep)["missing_field"] == [1] and "'output' is empty" in prep.problems[0].reason
    p.write_text(json.dumps([{"instruction": "q", "input": "", "output": ""}]))
    with pytest.raises(DatasetError, match="no rows with an assistant answer"):
        load_training_rows(str(p))


def test_hub_unreachable_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DatasetError, match="Hub is unreachable"):
        prepare_dataset("someone/some-dataset")


def test_hub_connection_error_is_explained(monkeypatch):
    import datasets

    def fail(*a, **k):
        raise ConnectionError("Max retries exceeded with url: https://huggingface.co/api/datasets/x/y")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(datasets, "load_dataset", fail)
    with pytest.raises(DatasetError, match="Hub is unreachable"):
        read_hub("x/y")


# ------------------------------------------------------------------------------------------------------ splits
def test_split_is_reproducible():
    spec = SplitSpec(validation=0.2, test=0.1, seed=7)
    a = assign_splits(100, spec)
    assert a == assign_splits(100, spec)
    assert a.count("validation") == 20 and a.count("test") == 10 and a.count("train") == 70
    assert a != assign_splits(100, SplitSpec(validation=0.2, test=0.1, seed=8))
    assert assign_splits(1, SplitSpec(validation=0.5)) == ["train"]
    with pytest.raises(ValueError):
        SplitSpec(validation=0.6, test=0.5)


def test_split_from_column(fixtures_dir):
    prep = prepare_dataset(fixtures_dir / "qa.tsv")
    given = [r.split for r in prep.rows]
    assert given.count("test") == 1 and given.count("validation") == 1
    assert assign_splits(len(given), SplitSpec(), given) == ["train"] * 8 + ["validation", "test"]
    assert len(load_training_rows(str(fixtures_dir / "qa.tsv"), "test")) == 1
