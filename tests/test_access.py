"""Server paths a browser user types (issue 15, first part): in a shared studio only under FTS_DATA_ROOTS, checked
after ~, .. and symlinks are resolved and before anything is opened; locally, as before."""
from __future__ import annotations

import json

import pytest

from core.access import PathNotAllowed, check_user_path, shared_mode


@pytest.fixture
def shared(workspace, tmp_path, monkeypatch):
    root = tmp_path / "allowed"
    root.mkdir()
    monkeypatch.setenv("FTS_SHARED", "1")
    monkeypatch.setenv("FTS_DATA_ROOTS", str(root))
    return root


def test_which_studios_are_shared(monkeypatch):
    for k in ("FTS_SHARED", "SPACE_ID", "FTS_AUTH", "GRADIO_SERVER_NAME"):
        monkeypatch.delenv(k, raising=False)
    assert not shared_mode()
    monkeypatch.setenv("GRADIO_SERVER_NAME", "0.0.0.0")
    assert shared_mode()
    monkeypatch.setenv("GRADIO_SERVER_NAME", "127.0.0.1")
    monkeypatch.setenv("SPACE_ID", "a/b")
    assert shared_mode()


def test_paths_outside_the_roots_are_refused_however_they_are_spelt(shared, tmp_path):
    inside = shared / "train.json"
    inside.write_text("[]")
    outside = tmp_path / "secret.txt"
    outside.write_text("s3cret")
    (shared / "link").symlink_to(outside)  # a symlink inside a root pointing out
    assert check_user_path(str(inside), "the path") == str(inside)  # a root's own file
    assert check_user_path(str(shared / "sub" / ".." / "train.json"), "the path")
    for bad in (str(outside), str(shared / ".." / "secret.txt"), str(shared / "link"), "/proc/self/environ",
                "/etc/passwd", "~/.ssh/id_rsa"):
        with pytest.raises(PathNotAllowed, match="outside the folders this shared studio may read"):
            check_user_path(bad, "the path")
    for fine in ("tatsu-lab/alpaca", "default", "3", "run:2", None, ""):  # Hub ids, ids and references
        assert check_user_path(fine, "the path") == fine


def test_the_data_tab_refuses_a_server_file_and_stores_nothing(shared, tmp_path):
    from core.data import list_datasets
    from ui.data import inspect_source, run_import

    secret = tmp_path / "secret.jsonl"
    secret.write_text(json.dumps({"text": "the host's secret"}) + "\n")
    out = inspect_source(None, str(secret), "auto", None, None)
    assert "outside the folders" in out[0] and "secret" not in out[-1]
    report = run_import(None, str(secret), "auto", "", None, None, [], 0.1, 0.0, 0, "default", 256)[0]
    assert "outside the folders" in report and "the host's secret" not in report
    assert list_datasets() == []
    allowed = shared / "ok.jsonl"
    allowed.write_text(secret.read_text())
    run_import(None, str(allowed), "auto", "", None, None, [], 0.0, 0.0, 0, None, 256)
    assert len(list_datasets()) == 1


def test_the_train_tab_refuses_a_server_model_folder_before_queueing(shared, tmp_path, fixtures_dir):
    from core import runs
    from ui.train import start_run

    data = shared / "alpaca.json"
    data.write_text((fixtures_dir / "alpaca_en_demo.json").read_text())
    msg, run_id = start_run({"base_model": str(tmp_path), "dataset": str(data), "max_steps": 1})
    assert run_id is None and "the base model" in msg and "outside the folders" in msg
    msg, run_id = start_run({"base_model": "default", "dataset": str(fixtures_dir / "alpaca_en_demo.json"),
                             "max_steps": 1})
    assert run_id is None and "the training data" in msg
    assert runs.list_runs() == []
