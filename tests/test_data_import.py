"""Import into the workspace: stored versions, dedupe, splits, token stats, the loss-mask preview, the CLI."""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from core.data import (
    DatasetError,
    compute_token_stats,
    get_dataset,
    import_dataset,
    list_datasets,
    load_training_rows,
    preview_of,
    preview_row,
)
from core.data.chat import tokenize_conversation
from core.data.stats import TOKEN_STAT_KEYS

REPO = Path(__file__).resolve().parent.parent


def test_import_stores_a_version(workspace, fixtures_dir):
    r = import_dataset(fixtures_dir / "alpaca_en_demo.json", name="alpaca",
                       split={"validation": 0.2, "test": 0.1, "seed": 1})
    assert r.created and (r.format, r.kind, r.kept, r.dropped) == ("alpaca", "sft", 20, 0)
    ds = get_dataset(r.dataset_id)
    d = Path(ds.path)
    assert d == workspace / "datasets" / ds.content_hash[:16]
    assert {p.name for p in d.iterdir()} == {"train.jsonl", "validation.jsonl", "test.jsonl", "meta.json"}
    assert ds.splits == {"train": 14, "validation": 4, "test": 2} and ds.rows == 20
    assert sum(1 for _ in open(d / "train.jsonl")) == 14
    stats = ds.meta["token_stats"]
    assert tuple(stats) == TOKEN_STAT_KEYS and stats["rows"] == 14 and stats["min"] <= stats["p50"] <= stats["max"]
    assert stats["model"] == "default" and stats["total_tokens"] > 0
    rows = load_training_rows(str(ds.id))
    assert len(rows) == 14 and rows[0]["messages"][-1]["role"] == "assistant"
    assert len(load_training_rows(str(ds.id), "test")) == 2


def test_identical_content_is_not_stored_twice(workspace, fixtures_dir, tmp_path):
    a = import_dataset(fixtures_dir / "alpaca_en_demo.json", model=None)
    b = import_dataset(fixtures_dir / "alpaca_en_demo.json", model=None)
    assert a.created and not b.created and a.dataset_id == b.dataset_id
    shuffled = json.loads((fixtures_dir / "alpaca_en_demo.json").read_text())
    random.Random(0).shuffle(shuffled)
    p = tmp_path / "shuffled.jsonl"  # same rows, other order, other container
    p.write_text("\n".join(json.dumps(r) for r in shuffled))
    c = import_dataset(p, model=None)
    assert c.dataset_id == a.dataset_id and not c.created
    assert len(list_datasets()) == 1
    d = import_dataset(fixtures_dir / "identity.json", model=None)
    assert d.created and d.dataset_id != a.dataset_id


def test_split_is_reproducible_across_workspaces(tmp_path, monkeypatch, fixtures_dir):
    from storage import reset_engines

    contents = []
    for ws in ("ws1", "ws2"):
        monkeypatch.setenv("FTS_WORKSPACE", str(tmp_path / ws))
        reset_engines()
        r = import_dataset(fixtures_dir / "alpaca_en_demo.json", model=None, split={"validation": 0.25, "seed": 3})
        contents.append((Path(r.path) / "validation.jsonl").read_text())
    reset_engines()
    assert contents[0] == contents[1] and contents[0].count("\n") == 5


def test_too_long_rows_keep_or_drop(workspace, fixtures_dir):
    kept = import_dataset(fixtures_dir / "alpaca_en_demo.json", max_length=128, drop_invalid=False)
    too_long = next(p for p in kept.problems if p["code"] == "too_long")
    assert too_long["count"] > 0 and too_long["action"] == "kept" and kept.kept == 20
    assert kept.token_stats["over_max_length"] > 0
    assert kept.token_stats["total_tokens"] <= 128 * kept.token_stats["rows"]
    dropped = import_dataset(fixtures_dir / "alpaca_en_demo.json", max_length=128, drop_invalid=["too_long"])
    assert dropped.kept == 20 - too_long["count"] and dropped.dataset_id != kept.dataset_id
    assert next(p for p in dropped.problems if p["code"] == "too_long")["action"] == "dropped"


def test_preference_is_stored_and_flagged(workspace, fixtures_dir):
    r = import_dataset(fixtures_dir / "dpo_en_demo.json", model=None)
    assert r.kind == "preference" and r.created
    with pytest.raises(DatasetError, match=f"dataset {r.dataset_id} holds preference pairs"):
        load_training_rows(str(r.dataset_id))


def test_text_dataset_rows(workspace, fixtures_dir):
    r = import_dataset(fixtures_dir / "c4_demo.jsonl", model=None, split={"validation": 0})
    rows = load_training_rows(str(r.dataset_id))
    assert len(rows) == 10 and set(rows[0]) == {"text"}


def test_unreadable_input_leaves_other_datasets_untouched(workspace, fixtures_dir, tmp_path):
    good = import_dataset(fixtures_dir / "identity.json", model=None)
    before = sorted(p.name for p in (workspace / "datasets").iterdir())
    bad = tmp_path / "bad.json"
    bad.write_bytes(b"\x00\x01\x02garbage" * 100)
    with pytest.raises(DatasetError):
        import_dataset(bad)
    with pytest.raises(DatasetError, match="dataset 99 not found"):
        load_training_rows("99")
    assert sorted(p.name for p in (workspace / "datasets").iterdir()) == before
    assert [d.id for d in list_datasets()] == [good.dataset_id]
    assert len(load_training_rows(str(good.dataset_id))) == good.splits["train"]


def test_loss_mask_preview_matches_training(workspace, fixtures_dir, tokenizer):
    r = import_dataset(fixtures_dir / "glaive_toolcall_en_demo.json", model=None, split={"validation": 0})
    pv = preview_row(r.dataset_id, 0, tokenizer=tokenizer)
    row = pv["row"]
    segments = pv["segments"]
    trained = "".join(t for t, lab in segments if lab == "trained")
    masked = "".join(t for t, lab in segments if lab == "masked")
    for m in row["messages"]:
        if m["role"] == "assistant":
            assert m["content"] in trained
        else:
            assert m["content"] in masked and m["content"] not in trained
    assert {lab for _, lab in segments} == {"trained", "masked"}
    # the same tokens carry loss as in the training worker's tokenisation
    tc = tokenize_conversation(tokenizer, row["messages"], None, row.get("tools"))
    assert len(tokenizer(trained, add_special_tokens=False)["input_ids"]) == pytest.approx(tc.num_loss_tokens, abs=3)
    cut = preview_of(row, max_length=20, tokenizer=tokenizer)["segments"]
    assert cut[-1][1] == "truncated"
    with pytest.raises(DatasetError, match="out of range"):
        preview_row(r.dataset_id, 999, tokenizer=tokenizer)


def test_compute_token_stats_feeds_estimate(workspace, fixtures_dir):
    r = import_dataset(fixtures_dir / "identity.json", model=None, template_values={"name": "Ada", "author": "Acme"})
    assert r.token_stats is None
    out = compute_token_stats(r.dataset_id, "default", max_length=50)
    st = get_dataset(r.dataset_id).meta["token_stats"]
    assert st == out["token_stats"] and st["max_length"] == 50 and st["over_max_length"] >= 1
    assert sum(b["rows"] for b in out["histogram"]) == st["rows"]


def _cli(*args, env_ws: Path):
    env = {**os.environ, "FTS_WORKSPACE": str(env_ws)}
    return subprocess.run([sys.executable, "-m", "core", "data", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)


def test_cli_import_list_show_stats(workspace, fixtures_dir, tmp_path):
    p = _cli("import", str(fixtures_dir / "identity.json"), "--fill", "name=Ada", "--fill", "author=Acme", "--json",
             env_ws=workspace)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert (out["format"], out["kept"], out["dropped"], out["created"]) == ("alpaca", 10, 0, True)
    assert out["dataset_id"] == 1 and out["token_stats"]["rows"] == out["splits"]["train"]
    listed = json.loads(_cli("list", "--json", env_ws=workspace).stdout)
    assert [d["id"] for d in listed] == [1]
    shown = json.loads(_cli("show", "1", "--rows", "1", "--json", env_ws=workspace).stdout)
    assert "Ada" in json.dumps(shown["sample_rows"])
    stats = json.loads(_cli("stats", "1", "--model", "default", "--max-length", "40", "--json",
                            env_ws=workspace).stdout)
    assert stats["token_stats"]["max_length"] == 40
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{nope\n")
    p = _cli("import", str(bad), env_ws=workspace)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "no valid JSON line" in p.stderr
    p = _cli("show", "42", env_ws=workspace)
    assert p.returncode == 2 and "dataset 42 not found" in p.stderr
