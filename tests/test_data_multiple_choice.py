"""The multiple-choice layout of the Data layer: detection, normalisation of the benchmark exports (MMLU, ARC,
HellaSwag, TruthfulQA-MC), row errors, import (hash, splits, stored rows, token stats, preview) and the SFT refusal."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from core.data import (
    DatasetError,
    compute_token_stats,
    dataset_summary,
    datasets_table,
    get_dataset,
    import_dataset,
    load_training_rows,
    prepare_dataset,
    preview_row,
    read_split,
)
from core.data.formats import FORMATS, KIND_OF_FORMAT, RowError, detect_format, normalise_record

MC = "multiple_choice"


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n", encoding="utf-8")
    return path


def codes(prep) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for p in prep.problems:
        out.setdefault(p.code, []).append(p.row)
    return out


def test_format_is_registered():
    assert MC in FORMATS and KIND_OF_FORMAT[MC] == MC


# ------------------------------------------------------------------------------------------ layouts, normalised
ARC_NESTED = {"id": "Mercury_1", "question": {"stem": "Which is a gas at room temperature?", "choices": [
    {"text": "iron", "label": "A"}, {"text": "oxygen", "label": "B"}, {"text": "salt", "label": "C"}]},
    "answerKey": "B"}
ARC_NUMERIC_LABELS = {"question": {"stem": "Which is warmest?", "choices": [
    {"text": "ice", "label": "1"}, {"text": "snow", "label": "2"}, {"text": "fire", "label": "3"},
    {"text": "frost", "label": "4"}]}, "answerKey": "3"}
ARC_FLAT = {"id": "x", "question": "What do plants need to make food?",
            "choices": {"text": ["sunlight", "sand", "plastic", "noise"], "label": ["A", "B", "C", "D"]},
            "answerKey": "A"}
OPENBOOKQA = {"id": "7", "question_stem": "The sun is a", "choices": {"text": ["star", "planet"], "label": ["A", "B"]},
              "answerKey": "A"}
HELLASWAG_HF = {"ind": 4, "activity_label": "Baking cookies", "ctx_a": "A woman mixes flour and sugar.",
                "ctx_b": "she", "ctx": "A woman mixes flour and sugar. she",
                "endings": ["puts the dough in the oven.", "paints a fence.", "swims away.", "reads a map."],
                "source_id": "x", "split": "val", "split_type": "indomain", "label": "0"}
HELLASWAG_SPLIT_CTX = {"ctx_a": "A man opens a door.", "ctx_b": "He", "endings": ["walks in.", "melts."], "label": 0}
TRUTHFULQA_MC2_ONLY = {"question": "Is the Earth flat?",
                       "mc2_targets": {"choices": ["No.", "Yes.", "It is round-ish."], "labels": [1, 0, 1]}}
TRUTHFULQA = {"question": "What happens if you swallow gum?",
              "mc1_targets": {"choices": ["It passes through you.", "It stays for seven years."], "labels": [1, 0]},
              "mc2_targets": {"choices": ["a", "b"], "labels": [1, 1]}}


@pytest.mark.parametrize(
    "record, expected",
    [
        ({"question": "2 + 2?", "choices": ["3", "4", "5", "6"], "answer": 1, "subject": "math"},  # MMLU's subject
         {"question": "2 + 2?", "choices": ["3", "4", "5", "6"], "answer": 1, "subject": "math"}),
        ({"question": "Capital of Italy?", "choices": ["Rome", "Oslo"], "answer": "A"},
         {"question": "Capital of Italy?", "choices": ["Rome", "Oslo"], "answer": 0}),
        ({"question": "Capital of Norway?", "choices": ["Rome", "Oslo"], "answer": "Oslo"},
         {"question": "Capital of Norway?", "choices": ["Rome", "Oslo"], "answer": 1}),
        ({"question": "7 x 6?", "choices": [40, 42, 44], "answer": 1},  # numbers become text, no warning
         {"question": "7 x 6?", "choices": ["40", "42", "44"], "answer": 1}),
        ({"question": "Who wrote it?", "choices": ["Ann", "Bob"], "answer": 1, "context": "Bob wrote the book."},
         {"question": "Who wrote it?", "choices": ["Ann", "Bob"], "answer": 1, "context": "Bob wrote the book."}),
        ({"question": "Largest?", "A": "ant", "B": "whale", "C": "cat", "D": "dog", "answer": "B"},
         {"question": "Largest?", "choices": ["ant", "whale", "cat", "dog"], "answer": 1}),
        ({"question": "Three options?", "A": "x", "B": "y", "C": "z", "D": "", "answer": "C"},
         {"question": "Three options?", "choices": ["x", "y", "z"], "answer": 2}),
        (ARC_NESTED, {"question": "Which is a gas at room temperature?", "choices": ["iron", "oxygen", "salt"],
                      "answer": 1, "layout": "arc"}),
        (ARC_NUMERIC_LABELS, {"question": "Which is warmest?", "choices": ["ice", "snow", "fire", "frost"],
                              "answer": 2, "layout": "arc"}),
        (ARC_FLAT, {"question": "What do plants need to make food?",
                    "choices": ["sunlight", "sand", "plastic", "noise"], "answer": 0, "layout": "arc"}),
        (OPENBOOKQA, {"question": "The sun is a", "choices": ["star", "planet"], "answer": 0,
                      "layout": "openbookqa"}),
        (HELLASWAG_HF, {"question": "A woman mixes flour and sugar. she", "choices": HELLASWAG_HF["endings"],
                        "answer": 0, "layout": "hellaswag", "activity_label": "Baking cookies",
                        "ctx_a": "A woman mixes flour and sugar.", "ctx_b": "she"}),
        (HELLASWAG_SPLIT_CTX, {"question": "A man opens a door. He", "choices": ["walks in.", "melts."],
                               "answer": 0, "layout": "hellaswag", "ctx_a": "A man opens a door.", "ctx_b": "He"}),
        (TRUTHFULQA, {"question": "What happens if you swallow gum?",
                      "choices": ["It passes through you.", "It stays for seven years."], "answer": 0,
                      "layout": "truthfulqa", "mc2": {"choices": ["a", "b"], "labels": [1, 1]}}),
        (TRUTHFULQA_MC2_ONLY, {"question": "Is the Earth flat?", "choices": ["No.", "Yes.", "It is round-ish."],
                               "answer": 0, "layout": "truthfulqa", "mc2_only": True,
                               "mc2": {"choices": ["No.", "Yes.", "It is round-ish."], "labels": [1, 0, 1]}}),
        ({"question": "CSV list cell?", "choices": "['yes', 'no']", "answer": "1"},  # a Python repr from a CSV
         {"question": "CSV list cell?", "choices": ["yes", "no"], "answer": 1}),
        ({"question": "JSON list cell?", "choices": '["yes", "no"]', "answer": "B"},
         {"question": "JSON list cell?", "choices": ["yes", "no"], "answer": 1}),
    ],
)
def test_layouts_are_detected_and_normalised(record, expected):
    assert detect_format([record]) == MC
    row, warnings = normalise_record(record, MC)
    assert row == expected and warnings == []
    assert normalise_record(row, MC) == (row, [])  # a stored (normalised) row reads back as itself


def test_detection_does_not_steal_other_formats():
    assert detect_format([{"question": "What is 2+2?", "answer": "4"}]) == "prompt_completion"
    assert detect_format([{"question": "q", "answer": "a", "context": "c"}]) == "prompt_completion"
    assert detect_format([{"prompt": "p", "chosen": "c", "rejected": "r", "choices": ["a", "b"]}]) == "preference"
    assert detect_format([{"instruction": "Pick one", "output": "A", "choices": ["a", "b"]}]) == "alpaca"
    assert detect_format([{"text": "A. one B. two"}]) == "text"
    # a choices column that is plain prose is not a list of options
    assert detect_format([{"question": "q", "choices": "one or two", "answer": "one"}]) == "prompt_completion"


# ----------------------------------------------------------------------------------------------- the fixtures
def test_fixtures(fixtures_dir):
    arc = prepare_dataset(fixtures_dir / "mc_arc_style.jsonl")
    assert (arc.format, arc.kind, len(arc.rows), arc.problems) == (MC, MC, 24, [])
    assert arc.rows[0].row == {"question": "What is the capital city of France?",
                               "choices": ["Berlin", "Madrid", "Paris", "Rome"], "answer": 2}
    mmlu = prepare_dataset(fixtures_dir / "mc_mmlu_style.csv")
    assert (mmlu.format, mmlu.kind, len(mmlu.rows), mmlu.problems) == (MC, MC, 16, [])
    with open(fixtures_dir / "mc_mmlu_style.csv", newline="") as fh:
        source = list(csv.DictReader(fh))
    for pr, rec in zip(mmlu.rows, source):
        assert pr.row["choices"] == [rec["A"], rec["B"], rec["C"], rec["D"]]
        assert pr.row["answer"] == "ABCD".index(rec["answer"])


def test_bad_fixture_names_the_row(fixtures_dir):
    prep = prepare_dataset(fixtures_dir / "mc_bad.jsonl")
    assert len(prep.rows) == 4
    assert [(p.row, p.code, p.reason) for p in prep.problems] == [
        (3, "bad_content", "row 3: 'answer' is 'E' but there are only 4 choices (A-D)")]
    assert prep.rows[-1].row["answer"] == 2  # "Banana" given as the text of the choice


@pytest.mark.parametrize(
    "record, code, message",
    [
        ({"question": "q", "choices": ["only one"], "answer": 0}, "missing_field",
         "'choices' needs at least 2 options (has 1)"),
        ({"question": "q", "choices": ["a", "", "c"], "answer": 0}, "missing_field", "'choices[1]' is empty"),
        ({"question": "q", "choices": ["a", {"x": 1}], "answer": 0}, "bad_content", "'choices[1]' is a dict"),
        ({"question": "q", "choices": {"label": ["A", "B"]}, "answer": 0}, "missing_field",
         "'choices.text' is missing"),
        ({"question": "q", "choices": ["a", "b"]}, "missing_field", "'answer' is missing"),
        ({"question": "q", "choices": ["a", "b"], "answer": " "}, "missing_field", "'answer' is empty"),
        ({"question": "q", "choices": ["a", "b", "c", "d"], "answer": 4}, "bad_content",
         "'answer' is 4 but there are only 4 choices (indices 0-3)"),
        ({"question": "q", "choices": ["a", "b"], "answer": True}, "bad_content", "'answer' is a bool"),
        ({"question": "q", "choices": ["a", "b"], "answer": "maybe"}, "bad_content",
         "'answer' is 'maybe', which is not one of the 2 choices, nor a letter A-B or an index 0-1"),
        ({"question": "q", "choices": ["1", "2", "3", "4"], "answer": "2"}, "bad_content",
         "could mean choice 1 (the text of choice 1) or choice 2 (index 2)"),
        ({"question": "", "choices": ["a", "b"], "answer": 0}, "missing_field", "'question' is empty"),
        ({"question": "q", "A": "a", "B": "", "C": "c", "answer": "A"}, "missing_field",
         "option 'B' is empty but option 'C' is not"),
        ({"question": {"stem": "s", "choices": [{"text": "a", "label": "A"}, {"text": "b", "label": "B"}]},
          "answerKey": "E"}, "bad_content", "'answerKey' is 'E' but the choices are labelled A, B"),
        ({"question": {"stem": "s", "choices": ["a", "b"]}, "answerKey": "A"}, "bad_content",
         "'question.choices' must be a list of {text, label} objects"),
        ({"question": "s", "choices": {"text": ["a", "b"], "label": ["A"]}, "answerKey": "A"}, "bad_content",
         "'choices.label' must list 2 labels"),
        ({"question": "s", "choices": {"text": ["a", "b"], "label": ["A", "A"]}, "answerKey": "A"}, "bad_content",
         "the choice labels repeat: A, A"),
        ({"ctx": "A dog", "endings": ["runs.", "flies."], "label": ""}, "missing_field", "'label' is empty"),
        ({"ctx": "A dog", "endings": ["runs.", "flies."], "label": "5"}, "bad_content",
         "'label' is '5' but there are only 2 choices (indices 0-1)"),
        ({"question": "q", "mc1_targets": {"choices": ["a", "b"], "labels": [0, 0]}}, "bad_content",
         "'mc1_targets.labels' marks 0 choices as correct; MC1 needs exactly one"),
        ({"question": "q", "mc1_targets": {"choices": ["a", "b"], "labels": [1]}}, "bad_content",
         "'mc1_targets.labels' must be 2 flags 0/1, one per choice"),
        ({"question": "q", "mc2_targets": {"choices": ["a", "b"], "labels": [0, 0]}}, "bad_content",
         "'mc2_targets.labels' marks no choice as true; MC2 needs at least one"),
        ({"question": "q", "mc2_targets": {"choices": ["a", "b"], "labels": [1, True]}}, "bad_content",
         "'mc2_targets.labels' must be 2 flags 0/1, one per choice"),
        ({"question": "q", "mc1_targets": {"choices": ["a", "b"], "labels": [1, 0]}, "mc2_targets": ["a"]},
         "bad_content", "'mc2_targets' must be an object with 'choices' and 'labels'"),
        # an answer given as text that two choices match once trimmed is refused, not guessed
        ({"question": "Largest ocean?", "choices": ["Pacific", "Pacific ", "Arctic"], "answer": "Pacific"},
         "bad_content", "'answer' is 'Pacific', which matches choices 0 and 1 ('Pacific' / 'Pacific ') once spaces "
                        "are trimmed"),
        ({"question": "s", "choices": {"text": ["Pacific", " Pacific"], "label": ["A", "B"]}, "answerKey": "Pacific"},
         "bad_content", "'answerKey' is 'Pacific', which matches choices 0 and 1"),
        ({"question": "q", "choices": "[not a list", "answer": 0}, "bad_content",
         "'choices' is text that is not a list of options"),
    ],
)
def test_malformed_rows_say_why(record, code, message):
    with pytest.raises(RowError) as info:
        normalise_record(record, MC)
    assert info.value.code == code and message in info.value.reason


def test_row_errors_carry_row_numbers_and_missing_choices(tmp_path):
    p = write_jsonl(tmp_path / "mixed.jsonl", [
        {"question": "q1", "choices": ["a", "b"], "answer": 0},
        {"question": "q2", "answer": "b"},  # no options at all
        {"question": "q3", "choices": ["a", "b"], "answer": 1},
        {"question": "q1", "choices": ["a", "b"], "answer": 0},  # duplicate of row 1
    ])
    prep = prepare_dataset(p)
    assert prep.format == MC and codes(prep) == {"missing_field": [2], "duplicate": [4]}
    assert prep.problems[0].reason == "row 2: 'choices' is missing (or columns A, B, ... with the options)"
    everything_bad = write_jsonl(tmp_path / "bad.jsonl", [{"question": "q", "choices": ["a"], "answer": 0}])
    with pytest.raises(DatasetError, match="no rows with a question, its choices and the answer"):
        prepare_dataset(everything_bad)


def test_column_map_and_placeholders(tmp_path):
    p = write_jsonl(tmp_path / "odd.jsonl", [
        {"prompt_text": "Largest {{thing}}?", "options": ["ant", "whale"], "gold": 1},
        {"prompt_text": "Smallest {{thing}}?", "options": ["ant", "whale"], "gold": 0},
    ])
    prep = prepare_dataset(p, format=MC, column_map={"question": "prompt_text", "choices": "options",
                                                     "answer": "gold"})
    assert prep.placeholders == ["thing"] and "unfilled_placeholder" in codes(prep)
    filled = prepare_dataset(p, column_map={"question": "prompt_text", "choices": "options", "answer": "gold"},
                             template_values={"thing": "animal"})
    assert filled.format == MC and filled.rows[0].row == {"question": "Largest animal?", "choices": ["ant", "whale"],
                                                          "answer": 1}


def test_refused_for_supervised_fine_tuning(fixtures_dir):
    with pytest.raises(DatasetError, match="holds multiple-choice questions \\(for Evaluate\\); supervised "
                                           "fine-tuning needs conversations with assistant answers"):
        load_training_rows(str(fixtures_dir / "mc_mmlu_style.csv"))


# --------------------------------------------------------------------------------------------------- import
def test_import_stores_rows_splits_stats_and_preview(workspace, fixtures_dir, tokenizer):
    r = import_dataset(fixtures_dir / "mc_arc_style.jsonl", name="arc-mini", max_length=8,
                       split={"validation": 0.25, "seed": 1})
    assert (r.format, r.kind, r.kept, r.dropped, r.created) == (MC, MC, 24, 0, True)
    assert r.splits == {"train": 18, "validation": 6, "test": 0}
    assert not any(p["code"] == "too_long" for p in r.problems)  # questions are scored whole, never truncated
    ds = get_dataset(r.dataset_id)
    stored = read_split(ds, "train") + read_split(ds, "validation")
    source = [json.loads(line) for line in (fixtures_dir / "mc_arc_style.jsonl").read_text().splitlines()]
    assert sorted(map(json.dumps, stored)) == sorted(map(json.dumps, source))
    assert r.token_stats["rows"] == 18 and r.token_stats["min"] > 10  # question + 4 lettered options + answer

    again = import_dataset(fixtures_dir / "mc_arc_style.jsonl", model=None, split={"validation": 0.25, "seed": 1})
    assert not again.created and again.dataset_id == r.dataset_id
    # the same rows split otherwise are a new split version (was: the old version with its old splits)
    whole = import_dataset(fixtures_dir / "mc_arc_style.jsonl", model=None, split={"validation": 0, "test": 1})
    assert whole.created and whole.dataset_id != r.dataset_id and whole.splits == {"train": 0, "validation": 0,
                                                                                   "test": 24}
    assert any(f"stored as dataset {r.dataset_id} with other split settings" in n for n in whole.notes)
    assert read_split(get_dataset(whole.dataset_id), "all") == read_split(get_dataset(whole.dataset_id), "test")
    assert import_dataset(fixtures_dir / "mc_arc_style.jsonl", model=None,
                          split={"validation": 0, "test": 1}).dataset_id == whole.dataset_id
    # every row, in the file's order, whatever the split
    assert read_split(ds, "all") == source

    with pytest.raises(DatasetError, match=f"dataset {r.dataset_id} holds multiple-choice questions"):
        load_training_rows(str(r.dataset_id))

    row = read_split(ds, "train")[0]
    pv = preview_row(r.dataset_id, 0, tokenizer=tokenizer)
    (question, q_label), (answer, a_label) = pv["segments"]
    assert (q_label, a_label) == ("question", "answer") and pv["approx_trained_tokens"] == 0
    letters = "ABCD"
    assert question == "\n".join([row["question"], *(f"{letters[i]}. {c}" for i, c in enumerate(row["choices"])),
                                  "Answer:"])
    assert answer == f" {letters[row['answer']]}. {row['choices'][row['answer']]}"

    stats = compute_token_stats(r.dataset_id, "default", 2048)
    assert stats["token_stats"]["rows"] == 18
    summary = dataset_summary(get_dataset(r.dataset_id))
    assert summary["for_evaluation_only"] and not summary["for_preference_training"]
    assert datasets_table()[0][3] == "multiple choice (for Evaluate)"


def test_import_of_csv_with_context_and_a_bad_row(workspace, tmp_path, fixtures_dir):
    p = tmp_path / "mmlu_with_passage.csv"
    with open(p, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["context", "question", "A", "B", "C", "answer"])
        w.writerow(["Tom is taller than Ann.", "Who is shorter?", "Tom", "Ann", "Neither", "B"])
        w.writerow(["", "Which is a colour?", "blue", "seven", "loud", "A"])
        w.writerow(["", "Which is a number?", "blue", "seven", "loud", "Z"])
    r = import_dataset(p, model=None, split={"validation": 0})
    assert (r.kind, r.kept, r.dropped) == (MC, 2, 1)
    bad = next(x for x in r.problems if x["code"] == "bad_content")
    assert bad["rows"] == [3] and bad["examples"] == ["row 3: 'answer' is 'Z' but there are only 3 choices (A-C)"]
    rows = read_split(get_dataset(r.dataset_id), "train")
    assert {"context": "Tom is taller than Ann.", "question": "Who is shorter?",
            "choices": ["Tom", "Ann", "Neither"], "answer": 1} in rows
    assert {"question": "Which is a colour?", "choices": ["blue", "seven", "loud"], "answer": 0} in rows
    bad_import = import_dataset(fixtures_dir / "mc_bad.jsonl", model=None)
    assert bad_import.kept == 4 and bad_import.problems[0]["rows"] == [3]


def test_data_tab_handlers(workspace, fixtures_dir):
    from ui import data as ui

    src = str(fixtures_dir / "mc_mmlu_style.csv")
    report, _drop, _placeholders, columns, sample = ui.inspect_source(src, "", "auto", None, None)
    assert "multiple_choice" in report and "a benchmark for Evaluate" in report
    assert [r[0] for r in columns["value"]] == ["question", "choices", "answer", "context"]
    assert json.loads(sample)["answer"] == 1
    msg, _table, dd, _hist, stats = ui.run_import(src, "", "auto", "", None, None, ui.DEFAULT_DROP, 0.0, 0.0, 1,
                                                  "default", 2048, progress=lambda *a, **k: None)
    assert "multiple_choice (multiple_choice), 16 rows kept" in msg and "16 train rows" in stats
    assert "never trained on" in stats and "training tokens" not in stats
    segments, info = ui.show_row(dd["value"], "train", 0, "default", 2048)
    assert [lab for _, lab in segments] == ["question", "answer"] and "multiple-choice question" in info
    assert set(ui.MASK_COLORS) >= {lab for _, lab in segments}
    detail, _hist, shown_stats = ui.show_dataset(dd["value"])
    assert "a benchmark for Evaluate" in detail and "never trained on" in shown_stats
    _hist, recounted = ui.run_stats(dd["value"], "default", 2048, progress=lambda *a, **k: None)
    assert "never trained on" in recounted


def test_the_import_cli_puts_every_row_in_test(workspace, fixtures_dir):
    """--test 1 (was: 'must be between 0 and 1'): every row is a test row, the default validation share gives way."""
    import subprocess
    import sys

    from core.config import REPO_ROOT

    proc = subprocess.run([sys.executable, "-m", "core", "data", "import", str(fixtures_dir / "mc_arc_style.jsonl"),
                           "--test", "1", "--model", "none", "--json"], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["splits"] == {"train": 0, "validation": 0, "test": 24}
    from core.data.splits import SplitSpec, assign_splits

    with pytest.raises(ValueError, match="add up to more than every row"):
        SplitSpec(validation=0.2, test=1)
    assert assign_splits(5, SplitSpec(validation=0.2, test=0.8)).count("train") == 0
    assert assign_splits(1, SplitSpec(validation=0.5)) == ["train"]  # otherwise training keeps a row
