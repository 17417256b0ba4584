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
    import core.access

    monkeypatch.setattr(core.access, "_page_process", True)  # as app.build_app makes it: this process serves the page
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
    from ui.train_form import start_run

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

    url = start_app(workspace / "app-upload.log", FTS_MAX_UPLOAD_MB="1", GRADIO_SERVER_NAME="")

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

    # already right, kept so: the page listens on loopback unless told otherwise (GRADIO_SERVER_NAME unset/empty)
    import psutil

    port = int(url.rsplit(":", 1)[1].strip("/"))
    listening = {c.laddr.ip for c in psutil.net_connections("tcp") if c.status == "LISTEN" and c.laddr.port == port}
    assert listening == {"127.0.0.1"}, listening

    # ... and Gradio's file route serves no file of the host's nor the studio's own database
    def fetch(path: str) -> int:
        try:
            with urllib.request.urlopen(url + "gradio_api/file=" + path, timeout=10) as r:
                return r.status
        except urllib.error.HTTPError as exc:
            return exc.code

    for secret in ("/etc/passwd", str(workspace / "studio.db"), "/proc/self/environ", str(workspace / "runs")):
        assert fetch(secret) in (403, 404), secret


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


# ---- what the studio loads: safetensors only, no model code from model files ------------------------------------

def _pickled_model(folder):
    """A real tiny model saved the old way: pytorch_model.bin (a pickle) and no safetensors."""
    from tests.base_models import make_base_model

    make_base_model(folder, "llama", hidden=32, layers=1)
    import torch
    from safetensors.torch import load_file

    weights = load_file(str(folder / "model.safetensors"))
    (folder / "model.safetensors").unlink()
    torch.save(weights, folder / "pytorch_model.bin")
    return folder


def test_pickle_only_folders_are_refused_shared_and_opt_in_locally(workspace, tmp_path, monkeypatch, fixtures_dir):
    from core import runs
    from core.generate import GenerateError, resolve_source
    from core.models import UnsafeModelError, resolve_model
    from core.runs import JobError
    from core.train.config import TrainConfig
    from core.train.jobs import submit_training

    model = _pickled_model(tmp_path / "old-model")
    adapter = tmp_path / "old-adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(model),
                                                             "peft_type": "LORA"}))
    (adapter / "adapter_model.bin").write_bytes(b"not even read")
    for k in ("FTS_SHARED", "SPACE_ID", "FTS_AUTH", "GRADIO_SERVER_NAME", "FTS_ALLOW_PICKLE"):
        monkeypatch.delenv(k, raising=False)
    # locally: refused, with the opt-in named
    with pytest.raises(UnsafeModelError, match=r"only pickled weights \(pytorch_model.bin\).*FTS_ALLOW_PICKLE=1"):
        resolve_model(str(model))
    with pytest.raises(GenerateError, match="adapter_model.bin"):
        resolve_source(str(adapter))  # the Playground / Evaluate way in
    cfg = dict(base_model=str(model), dataset=str(fixtures_dir / "alpaca_en_demo.json"), max_steps=1,
               chat_template="alpaca")
    with pytest.raises(JobError, match="pickled weights"):
        submit_training(TrainConfig(**cfg), start=False)
    assert runs.list_runs() == []  # no run row
    # the host's explicit opt-in loads it (transformers' weights-only unpickler), and the checks pass
    monkeypatch.setenv("FTS_ALLOW_PICKLE", "1")
    from core.models import load_kwargs

    assert resolve_model(str(model)).kind == "local" and "use_safetensors" not in load_kwargs()
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(str(model), **load_kwargs()).config.hidden_size == 32
    # a shared studio never honours it, and its message offers no opt-in
    monkeypatch.setenv("FTS_SHARED", "1")
    assert load_kwargs()["use_safetensors"] is True
    with pytest.raises(UnsafeModelError) as err:
        resolve_model(str(model))
    assert "FTS_ALLOW_PICKLE" not in str(err.value) and "safe_serialization=True" in str(err.value)
    # and with use_safetensors a pickle is never opened, even if a check were bypassed
    with pytest.raises(OSError):
        AutoModelForCausalLM.from_pretrained(str(model), **load_kwargs())


def _remote_code_model(folder, marker):
    """A model folder whose config asks for its own code; that code would leave a marker file if it ever ran."""
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "model_type": "evil_arch", "architectures": ["EvilForCausalLM"],
        "auto_map": {"AutoConfig": "configuration_evil.EvilConfig",
                     "AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}}))
    code = f"open({str(marker)!r}, 'w').write('ran')\n"
    (folder / "configuration_evil.py").write_text(code)
    (folder / "modeling_evil.py").write_text(code)
    (folder / "model.safetensors").write_bytes(b"")
    return folder


def test_a_model_that_needs_its_own_code_is_refused_naming_the_admin_setting(workspace, tmp_path, monkeypatch,
                                                                             fixtures_dir):
    from core import runs
    from core.models import UnsafeModelError, load_config, remote_code_allowed, resolve_model
    from core.runs import JobError
    from core.train.config import TrainConfig
    from core.train.jobs import submit_training

    marker = tmp_path / "code-ran"
    model = _remote_code_model(tmp_path / "custom", marker)
    for k in ("SPACE_ID", "FTS_TRUST_REMOTE_CODE"):
        monkeypatch.delenv(k, raising=False)
    with pytest.raises(UnsafeModelError, match=r"trust_remote_code.*FTS_TRUST_REMOTE_CODE=1 \(never honoured on a "
                                               r"Space\)"):
        resolve_model(str(model))
    with pytest.raises(JobError, match="FTS_TRUST_REMOTE_CODE"):
        submit_training(TrainConfig(base_model=str(model), dataset=str(fixtures_dir / "alpaca_en_demo.json"),
                                    max_steps=1), start=False)
    assert runs.list_runs() == [] and not marker.exists()
    # the admin setting lets it through the studio's check; transformers is then told to trust it
    monkeypatch.setenv("FTS_TRUST_REMOTE_CODE", "1")
    assert remote_code_allowed() and resolve_model(str(model)).kind == "local"
    # ... but never on a Space, and transformers itself refuses without the flag
    monkeypatch.setenv("SPACE_ID", "someone/studio")
    assert not remote_code_allowed()
    with pytest.raises(UnsafeModelError):
        resolve_model(str(model))
    from core.models import ModelNotFoundError, ResolvedModel

    with pytest.raises(ModelNotFoundError, match="FTS_TRUST_REMOTE_CODE"):
        load_config(ResolvedModel(str(model), "local", str(model), "custom"))
    assert not marker.exists()  # nothing from the folder ran, at any step


def test_a_hub_model_that_needs_its_own_code_is_refused_at_submit(monkeypatch, tmp_path):
    """check_hub_model reads the Hub's config.json (here a loopback server standing in for the endpoint)."""
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    from huggingface_hub import constants

    from core.models import ResolvedModel, UnsafeModelError, check_hub_model

    configs = {"/acme/custom/resolve/main/config.json": {"model_type": "acme", "auto_map": {"AutoModel": "m.M"}},
               "/acme/plain/resolve/main/config.json": {"model_type": "llama"}}

    class Hub(BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps(configs[self.path]).encode() if self.path in configs else b"{}"
            self.send_response(200 if self.path in configs else 404)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    server = HTTPServer(("127.0.0.1", 0), Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{server.server_port}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    monkeypatch.delenv("FTS_TRUST_REMOTE_CODE", raising=False)
    try:
        with pytest.raises(UnsafeModelError, match="'acme/custom' needs its own Python code"):
            check_hub_model(ResolvedModel("acme/custom", "hub", "acme/custom", "acme/custom"))
        check_hub_model(ResolvedModel("acme/plain", "hub", "acme/plain", "acme/plain"))  # transformers has llama
    finally:
        server.shutdown()
