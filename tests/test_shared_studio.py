"""A shared studio, round 2 (issue 25): each class of door the first round left open, closed by construction and
tried here in-process (the page's own API is walked by tests/test_api_walk.py)."""
from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest


@pytest.fixture
def shared(workspace, tmp_path, monkeypatch):
    """A shared studio whose page is served by this process; FTS_DATA_ROOTS = ``allowed``; Gradio's upload folder
    under tmp; a Hugging Face cache of its own (to see that nothing lands there)."""
    import core.access

    root = tmp_path / "allowed"
    root.mkdir()
    monkeypatch.setenv("FTS_SHARED", "1")
    monkeypatch.setenv("FTS_DATA_ROOTS", str(root))
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio-uploads"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-datasets"))
    monkeypatch.setattr(core.access, "_page_process", True)
    monkeypatch.setattr(core.access, "_requester", lambda: "alice")  # the signed-in person behind the event
    monkeypatch.setattr(core.access, "_uploads", {})
    return root


def _secret(tmp_path: Path) -> Path:
    """A stand-in for the users file: a server file no page user may read."""
    p = tmp_path / "server" / "users.json"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps([{"instruction": "who", "output": "SECRET-SALTED-HASH-3f9a"}]))
    return p


def _upload(name: str, text: str, owner: str, tmp_path: Path) -> Path:
    """A file as Gradio stores an upload (its own folder under the upload dir), recorded for ``owner``."""
    from core.access import record_upload, upload_dir

    folder = upload_dir() / f"tmp{abs(hash((name, owner))) % 10**8}"
    folder.mkdir(parents=True, exist_ok=True)
    p = folder / name
    p.write_text(text)
    record_upload(str(p), owner)
    return p


# ---- 1. a path that does not look like a path -----------------------------------------------------------------------

def test_a_path_that_does_not_look_like_a_path_is_refused_before_any_library_sees_it(shared, tmp_path):
    """The attack that got through: a dataset card uploaded by the user lists the users file as data_files, and
    'hub:' + its folder hands that folder to datasets.load_dataset. Every spelling is refused in one line; nothing
    is stored, nothing lands in the datasets cache."""
    from core.data import list_datasets
    from ui.data import inspect_source, run_import

    secret = _secret(tmp_path)
    card = _upload("README.md", f"---\nconfigs:\n- config_name: default\n  data_files: {secret}\n---\n", "alice",
                   tmp_path)
    folder = card.parent
    attacks = [f"hub:{folder}", f"hub:{folder}/", f"hub:{secret}", f"file://{secret}", f"file:{secret}",
               f"https://127.0.0.1:9/{secret.name}", f"hf://datasets/x/y@main/{secret}", "hub:../../etc",
               "hub:core", "core/data", os.path.relpath(secret, Path.cwd()), f"{secret}\x00.json",
               "/" + "a" * 5000, f"s3://bucket{secret}", f"zip://{secret}"]
    for ref in attacks:
        for out in (inspect_source(None, ref, "auto", None, None)[0],
                    run_import(None, ref, "auto", "", None, None, [], 0.0, 0.0, 0, None, 256)[0]):
            assert "SECRET-SALTED-HASH" not in out, ref
            assert out.count("\n") <= 2 and "Traceback" not in out, (ref, out)
            assert any(w in out for w in ("outside the folders", "not a Hub id", "a URL", "control characters",
                                          "characters long", "installation")), (ref, out)
    assert list_datasets() == []
    cache = tmp_path / "hf-datasets"
    assert not cache.exists() or not any(cache.rglob("*.arrow"))


def test_a_dataset_card_that_reaches_outside_its_dataset_is_refused_before_it_is_followed(workspace, tmp_path,
                                                                                        monkeypatch):
    """Hub datasets (a loopback server stands in for the Hub) and local folders alike: absolute data_files, data_dir,
    '..' and URLs in a card are refused; the card is read before datasets.load_dataset would follow it."""
    import hashlib
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from huggingface_hub import constants

    from core.data import DatasetError
    from core.data.hub import check_dataset_card, read_hub

    secret = _secret(tmp_path)
    hostile = [f"data_files: {secret}", "data_files: [train.json, ../../../etc/passwd]",
               f"data_files:\n  - split: train\n    path: {secret}", "data_dir: /etc",
               "data_files: {train: 'https://127.0.0.1:9/x.csv'}", "data_files: ~/.ssh/id_rsa",
               f"data_files: train.json\n  sep: 'file://{secret}'"]
    for body in hostile:
        card = f"---\nconfigs:\n- config_name: default\n  {body}\n---\n# card\n"
        with pytest.raises(DatasetError, match="outside the dataset"):
            check_dataset_card(card, "evil/cards")
    check_dataset_card("---\nconfigs:\n- config_name: default\n  data_files: data/train-*.parquet\n---\n", "ok/ds")

    card = f"---\nconfigs:\n- config_name: default\n  data_files: {secret}\n---\n".encode()
    seen = []

    class Hub(BaseHTTPRequestHandler):
        def _head(self, code, body=b""):
            self.send_response(code)
            self.send_header("X-Repo-Commit", "a" * 40)
            self.send_header("ETag", '"' + hashlib.sha1(body).hexdigest() + '"')  # noqa: S324 - a test ETag
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()

        def do_HEAD(self):
            seen.append(self.path)
            self._head(200 if self.path.endswith("/README.md") else 404, card)

        def do_GET(self):
            seen.append(self.path)
            if self.path.endswith("/README.md"):
                self._head(200, card)
                self.wfile.write(card)
            else:
                self._head(404)

        def log_message(self, *a):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{server.server_port}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    try:
        with pytest.raises(DatasetError, match="outside the dataset"):
            read_hub("evil/cards")
    finally:
        server.shutdown()
    assert seen == ["/datasets/evil/cards/resolve/main/README.md"]  # the card, once; load_dataset never ran
    # a local folder (the host's own, through the CLI) is held to the same card rule
    local = tmp_path / "local-ds"
    local.mkdir()
    (local / "README.md").write_text(card.decode())
    with pytest.raises(DatasetError, match="outside the dataset"):
        read_hub(str(local))


# ---- 2. fields the first round did not list --------------------------------------------------------------------------

def _model_folder(folder: Path, template: str) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 8,
                                                    "num_hidden_layers": 1, "num_attention_heads": 1,
                                                    "vocab_size": 10, "intermediate_size": 16}))
    (folder / "tokenizer_config.json").write_text(json.dumps({"chat_template": template}))
    return folder


def test_every_model_and_folder_field_refuses_a_server_folder_the_same_way_whether_it_exists(shared, tmp_path):
    """The Data tab's tokenizer field, the Estimate tab's model, the Train tab's template note, the Playground /
    Evaluate folder and the base an adapter in an allowed root names: a private folder is refused unopened, and the
    answer for an existing folder is the answer for a missing one (nothing is revealed)."""
    from core.data import import_dataset
    from core.generate import GenerateError, resolve_source
    from ui.data import run_stats, show_row
    from ui.estimate import run_estimate
    from ui.train_form import template_note

    private = _model_folder(tmp_path / "private-model", "{{ 'PRIVATE-TEMPLATE-77' }}")
    missing = tmp_path / "no-such-model"
    adapter = shared / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(private),
                                                             "peft_type": "LORA", "r": 4}))
    (adapter / "adapter_model.safetensors").write_bytes(b"")
    with __import__("core.access", fromlist=["trusted"]).trusted():  # the host's own dataset
        ds = import_dataset(str(Path(__file__).parent / "fixtures" / "alpaca_en_demo.json"), model=None)

    def answers(ref: str) -> list[str]:
        out = [run_stats(str(ds.dataset_id), ref, 256)[1], show_row(str(ds.dataset_id), "train", 0, ref, 256)[1],
               run_estimate("", ref, "lora", 8, "all-linear", "adamw", "auto", 1, 256, False, "sdpa", "fp16", 64,
                            None, 1000, 1, "a100-80", 0.4, 2.0)[0],
               template_note(ref, "chatml")]
        try:
            resolve_source(ref)
            out.append("loaded")
        except GenerateError as exc:
            out.append(str(exc))
        return [str(o).replace(str(private), "<P>").replace(str(missing), "<P>") for o in out]

    seen_private, seen_missing = answers(str(private)), answers(str(missing))
    assert seen_private == seen_missing
    for text in seen_private:
        assert "PRIVATE-TEMPLATE-77" not in text and "llama" not in text.lower()
    assert any("outside the folders" in t for t in seen_private)
    with pytest.raises(GenerateError, match="the base model named by adapter adapter.*outside the folders"):
        resolve_source(str(adapter))  # the adapter is allowed; the base its config names is not


# ---- 3. uploads belong to their uploader ----------------------------------------------------------------------------

def test_an_upload_is_usable_by_its_uploader_only_and_a_run_never_names_its_server_path(shared, tmp_path,
                                                                                        fixtures_dir, monkeypatch):
    import core.access
    from core import runs
    from core.data import get_dataset
    from ui.data import run_import
    from ui.train_form import start_run

    text = (fixtures_dir / "alpaca_en_demo.json").read_text()
    bobs = _upload("bob-private.json", text, "bob", tmp_path)
    out = run_import(str(bobs), "", "auto", "", None, None, [], 0.0, 0.0, 0, None, 256)[0]
    assert "not one of your uploads" in out  # alice names bob's upload (as the API lets her)
    out = run_import(None, str(bobs), "auto", "", None, None, [], 0.0, 0.0, 0, None, 256)[0]
    assert "not one of your uploads" in out
    unknown = core.access.upload_dir() / "tmpgone" / "x.json"  # an upload no one is recorded for (an old one)
    unknown.parent.mkdir(parents=True)
    unknown.write_text(text)
    assert "not one of your uploads" in run_import(None, str(unknown), "auto", "", None, None, [], 0.0, 0.0, 0,
                                                   None, 256)[0]
    # alice's own upload in the Train tab: imported as her dataset; the run's config names the dataset, not the path
    alices = _upload("alice-data.json", text, "alice", tmp_path)
    monkeypatch.setattr("ui.train_form._preflight_warning", lambda config: None)
    msg, run_id = start_run({"upload": str(alices), "base_model": "default", "max_steps": 1, "name": "mine"},
                            owner="alice")
    assert run_id is not None, msg
    run = runs.get_run(run_id)
    runs.stop(run_id)
    assert str(run.config["dataset"]).isdigit() and str(alices) not in json.dumps(run.config)
    ds = get_dataset(run.config["dataset"])
    assert ds.owner == "alice" and ds.source == "alice-data.json" and ds.splits["train"] == ds.rows


# ---- 4. a file that expands -----------------------------------------------------------------------------------------

def test_an_expanding_parquet_is_refused_from_its_footer_without_growing_the_page(shared, tmp_path):
    """A few kilobytes of Parquet holding a million rows: refused from its metadata, before one row is read."""
    import psutil
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ui.data import inspect_source, run_import

    path = shared / "bomb.parquet"
    pq.write_table(pa.table({"text": pa.array(["x"] * 1_000_000)}), path, compression="zstd")
    assert path.stat().st_size < 64 * 1024
    proc = psutil.Process()
    before = proc.memory_info().rss
    t0 = time.perf_counter()
    out = run_import(None, str(path), "auto", "", None, None, [], 0.0, 0.0, 0, None, 256)[0]
    assert "1,000,000 rows" in out and "at most 500,000" in out and "FTS_MAX_IMPORT_ROWS" in out
    assert "1,000,000 rows" in inspect_source(None, str(path), "auto", None, None)[0]
    took, grew = time.perf_counter() - t0, proc.memory_info().rss - before
    assert grew < 100 * 1024**2, f"the page grew {grew / 1024**2:.0f} MB"
    print(f"expanding parquet refused in {took:.2f} s, page RSS +{grew / 1024**2:.1f} MB")


def test_a_large_import_runs_as_a_job_with_a_memory_cap_and_progress(shared, tmp_path, monkeypatch):
    """Over the page's budget (here 1 MB): a worker reads it, the dataset is its uploader's; a source that outgrows
    the job's memory cap ends that job as out of memory, and nothing else."""
    from types import SimpleNamespace

    from core import runs
    from core.data import get_dataset
    from ui.data import import_jobs_html, run_import

    monkeypatch.setenv("FTS_IMPORT_IN_PAGE_MB", "1")
    monkeypatch.setenv("FTS_AUTH", "admin:admin-password")  # accounts: rows record who made them
    alice = SimpleNamespace(username="alice", headers={}, client=None)  # the page's request, signed in as alice
    rows = [{"instruction": f"question {i} " + "word " * 20, "output": f"answer {i}"} for i in range(8000)]
    big = _upload("big.jsonl", "\n".join(json.dumps(r) for r in rows), "alice", tmp_path)
    assert big.stat().st_size > 1024**2
    out = run_import(str(big), "", "auto", "big one", None, None, [], 0.1, 0.0, 0, None, 256, request=alice)[0]
    assert "Import job #" in out and "a worker process reads" in out
    job = runs.list_runs(kind="import")[0]
    assert job.owner == "alice" and str(big) in json.dumps(job.config) and job.dataset_ref == "big.jsonl"
    job = runs.wait_for(job.id, timeout_s=300)
    assert job.status.value == "succeeded", runs.log_tail(job.id)
    ds = get_dataset(job.final_metrics["dataset_id"])
    assert ds.rows == 8000 and ds.owner == "alice" and ds.name == "big one" and ds.source == "big.jsonl"
    text, active = import_jobs_html("alice")
    assert f"stored as dataset #{ds.id}" in text and not active
    assert import_jobs_html("bob")[0] == ""  # bob does not see alice's imports
    # a file that expands past the import worker's cap (here 300 MB in all): its supervisor stops that job, clearly
    monkeypatch.setenv("FTS_IMPORT_MAX_MEMORY_GB", "0.3")
    rows = [{"instruction": "q " * 40 + str(i), "output": "a " * 40} for i in range(200_000)]
    huge = _upload("huge.jsonl", "\n".join(json.dumps(r) for r in rows), "alice", tmp_path)
    run_import(str(huge), "", "auto", "", None, None, [], 0.0, 0.0, 0, None, 256, request=alice)
    job = runs.wait_for(max(r.id for r in runs.list_runs(kind="import")), timeout_s=300)
    assert job.status.value == "failed" and "out of memory" in job.error and "FTS_IMPORT_MAX_MEMORY_GB" in job.error


# ---- 7. bounds ------------------------------------------------------------------------------------------------------

def test_unbounded_work_is_refused_in_one_line(workspace):
    from core.train.config import ConfigError, TrainConfig

    for bad, says in ((dict(max_steps=10**12), "at most 100,000,000"), (dict(num_epochs=1e308), "at most 10,000"),
                      (dict(num_epochs=float("inf")), "finite"), (dict(learning_rate=float("nan")), "finite"),
                      (dict(batch_size=10**9), "at most 65,536"), (dict(seed=2**40), "at most")):
        with pytest.raises(ConfigError, match=says):
            TrainConfig.from_dict({"dataset": "1", **bad})
    assert TrainConfig(dataset="1", name="\x1b[31mred\x1b[0m\u202e").name == "[31mred [0m"


def test_a_shared_studio_caps_steps_and_epochs_and_gives_every_run_a_wall_clock_budget(shared, monkeypatch):
    from core.runs import JobError
    from core.train.config import TrainConfig
    from core.train.jobs import apply_run_caps

    with pytest.raises(JobError, match="at most 100,000 steps per run"):
        apply_run_caps(TrainConfig(dataset="1", max_steps=200_000))
    with pytest.raises(JobError, match="at most 100 epochs"):
        apply_run_caps(TrainConfig(dataset="1", num_epochs=500))
    assert apply_run_caps(TrainConfig(dataset="1", max_steps=10)).max_wall_clock_hours == 24
    monkeypatch.setenv("FTS_MAX_RUN_HOURS", "2")
    assert apply_run_caps(TrainConfig(dataset="1", max_wall_clock_hours=1)).max_wall_clock_hours == 1
    assert apply_run_caps(TrainConfig(dataset="1", max_wall_clock_hours=5)).max_wall_clock_hours == 2
    import core.access

    with core.access.trusted():  # the host's CLI: no caps
        assert apply_run_caps(TrainConfig(dataset="1", max_steps=200_000)).max_wall_clock_hours == 0


def test_the_supervisor_stops_a_job_at_its_wall_clock_budget_and_says_why(workspace, monkeypatch):
    from core import runs

    monkeypatch.setenv("FTS_JOB_KINDS", "tests.job_kinds")
    job = runs.submit("count", {"steps": 3000, "sleep_s": 0.1, "max_wall_clock_hours": 4 / 3600})  # 5 min of work
    job = runs.wait_for(job.id, timeout_s=120)
    assert job.status.value == "stopped", (job.status, job.error)
    assert "wall-clock budget" in (job.error or "") and "resume" in job.error
    assert job.final_metrics.get("counted", 0) < 3000 and job.step < 3000


def test_names_lose_control_characters_and_the_cli_prints_none_raw(workspace, capsys):
    from sqlalchemy import update

    from core import runs
    from core.__main__ import main
    from core.config import db_session
    from storage import Run

    monkey = runs.submit("train", {"name": "x"}, start=False, name="evil\x1b]0;pwned\x07\x1b[2J name")
    assert runs.get_run(monkey.id).name == "evil ]0;pwned [2J name"
    with db_session() as s:  # a name stored before names were cleaned
        s.exec(update(Run).where(Run.id == monkey.id).values(name="old\x1b[31m name\u202e"))
    assert main(["runs", "list", "--all"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\u202e" not in out and "old\\x1b[31m name\\u202e" in out


# ---- 8. fairness ----------------------------------------------------------------------------------------------------

def test_the_queue_takes_turns_between_people(workspace, monkeypatch):
    from core.runs import store

    monkeypatch.setenv("FTS_JOB_KINDS", "tests.job_kinds")
    from core import runs

    alice = [runs.submit("count", {"steps": 1}, start=False, owner="alice").id for _ in range(4)]
    bob = runs.submit("count", {"steps": 1}, start=False, owner="bob").id
    order = []
    for _ in range(5):
        job = store.claim_next(1, ["count"])
        order.append(job.id)
        store.mark_started(job.id, pid=None, host="h", backend="local")
        store.finish(job.id, "succeeded", attempt=job.attempt)
        time.sleep(0.01)
    assert order == [alice[0], bob, alice[1], alice[2], alice[3]]


def test_one_person_holds_one_generation_at_a_time_in_a_shared_studio(shared, monkeypatch):
    from ui.common import FairShare

    share = FairShare()
    assert share.try_take("alice") and not share.try_take("alice") and share.try_take("bob")
    share.release("alice")
    assert share.try_take("alice")
    monkeypatch.setenv("FTS_GENERATIONS_PER_USER", "2")
    assert share.try_take("bob") and not share.try_take("bob")
    monkeypatch.delenv("FTS_SHARED")
    monkeypatch.setattr("core.access.shared_mode", lambda: False)
    assert FairShare().try_take("") and FairShare().try_take("")  # one person on their own machine: never refused


# ---- 5. sign-in ------------------------------------------------------------------------------------------------------

def test_the_sign_in_throttle_counts_per_account_and_per_address_with_a_doubling_delay():
    from ui.gate import SignInThrottle

    now = [1000.0]
    t = SignInThrottle(per_account=3, per_address=5, clock=lambda: now[0])
    for _ in range(3):
        assert t.retry_after("alice", "10.0.0.1") == 0
        t.failed("alice", "10.0.0.1")
    assert t.retry_after("alice", "10.0.0.9") == pytest.approx(2.0)  # the account, from any address
    assert t.retry_after("bob", "10.0.0.2") == 0
    now[0] += 2.5
    assert t.retry_after("Alice", "10.0.0.1") == 0  # names are counted case-blind
    t.failed("alice", "10.0.0.1")
    assert t.retry_after("alice", "10.0.0.1") == pytest.approx(4.0)  # 2 s, 4 s, 8 s …
    for name in ("carol", "dave"):  # one address spraying other accounts
        t.failed(name, "10.0.0.1")
    assert t.retry_after("erin", "10.0.0.1") > 0 and t.retry_after("erin", "10.0.0.3") == 0
    t.succeeded("alice")
    assert t.retry_after("alice", "10.0.0.4") == 0
    now[0] += 16 * 60  # failures older than the window are forgotten
    assert t.retry_after("erin", "10.0.0.1") == 0


def test_a_session_ends_with_its_lifetime(workspace, monkeypatch):
    from core.users import add_user
    from ui.gate import Sessions

    monkeypatch.delenv("FTS_AUTH", raising=False)
    add_user("alice", "alice-password")
    sessions = Sessions()
    sessions.add("tok", "alice")
    assert sessions.still_valid("tok", "alice") and not sessions.still_valid("tok", "bob")
    assert not sessions.still_valid("other-token", "alice")  # a session the gate never saw start
    monkeypatch.setenv("FTS_SESSION_HOURS", "1")
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 3601)
    assert not sessions.still_valid("tok", "alice")


def test_behind_tls_a_sign_in_sets_only_the_secure_cookie(workspace, monkeypatch):
    """The gate in front of Gradio's login route (an ASGI app standing in for Gradio's): with the request's scheme
    https (uvicorn sets it from a trusted proxy's X-Forwarded-Proto) the plain-HTTP cookie is not set."""
    import asyncio
    from types import SimpleNamespace

    from core.users import add_user
    from ui.gate import Gate

    monkeypatch.delenv("FTS_AUTH", raising=False)
    add_user("alice", "alice-password")

    async def gradio_login(scope, receive, send):
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"set-cookie", b"access-token-ID=tok123; HttpOnly; Path=/; SameSite=none; Secure"),
            (b"set-cookie", b"access-token-unsecure-ID=tok123; HttpOnly; Path=/; SameSite=lax")]})
        await send({"type": "http.response.body", "body": b'{"success":true}'})

    async def sign_in(scheme: str) -> list[bytes]:
        sent = []
        body = b"username=alice&password=alice-password"
        messages = iter([{"type": "http.request", "body": body, "more_body": False}])
        scope = {"type": "http", "method": "POST", "path": "/login", "scheme": scheme, "client": ("10.0.0.5", 1),
                 "headers": [(b"content-type", b"application/x-www-form-urlencoded")],
                 "app": SimpleNamespace(tokens={}, cookie_id="ID")}

        async def receive():
            return next(messages)

        async def send(message):
            sent.append(message)

        gate = Gate(gradio_login)
        await gate(scope, receive, send)
        assert gate.sessions.still_valid("tok123", "alice")  # the session was seen starting, for alice
        return [v for k, v in sent[0]["headers"] if k == b"set-cookie"]

    assert len(asyncio.run(sign_in("http"))) == 2
    cookies = asyncio.run(sign_in("https"))
    assert len(cookies) == 1 and b"Secure" in cookies[0] and b"unsecure" not in cookies[0]
