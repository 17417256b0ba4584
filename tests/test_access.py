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


def test_an_upload_over_the_limit_is_refused_before_it_is_written(workspace, start_app):
    import urllib.error
    import urllib.request
    import uuid

    url = start_app(workspace / "app-upload.log", FTS_MAX_UPLOAD_MB="1")

    def upload(size: int) -> int:
        boundary = uuid.uuid4().hex
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"data.jsonl\"\r\n"
                "Content-Type: application/octet-stream\r\n\r\n").encode() + b"x" * size + \
            f"\r\n--{boundary}--\r\n".encode()
        req = urllib.request.Request(url + "gradio_api/upload", data=body, method="POST",
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status
        except urllib.error.HTTPError as exc:
            return exc.code

    assert upload(2 * 1024 * 1024) == 413
    assert upload(1000) == 200


def test_a_chat_template_that_reaches_for_python_internals_fails_clearly_and_runs_nothing(tmp_path):
    """A model folder a user points at as the template to copy: its template is rendered only through transformers'
    sandboxed Jinja, so attribute tricks fail with a message and nothing runs."""
    from core.data.templates import TemplateError, apply_template, check_renders
    from tests.base_models import base_tokenizer

    marker = tmp_path / "pwned"
    src = tmp_path / "evil-model"
    tok = base_tokenizer()
    tok.chat_template = ("{{ ''.__class__.__mro__[1].__subclasses__() }}"
                         "{{ cycler.__init__.__globals__.os.system('touch " + str(marker) + "') }}")
    tok.save_pretrained(src)
    (src / "config.json").write_text(json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}))
    target = base_tokenizer()
    apply_template(target, str(src))  # copying the text is harmless
    with pytest.raises(TemplateError, match="cannot render"):
        check_renders(target)  # what the worker runs before training: the sandbox refuses
    assert not marker.exists()
