"""Deploy on real parts: a real LoRA run (the session's demo run) merged and checked against base+adapter, the export
job through the CLI, the local server (transformers serve, a ``serve`` job on the runs core) started on the merged
model and asked through huggingface_hub.InferenceClient, stopped (port freed) and killed (row marked), its life
through a dashboard restart, and the ways a deployment fails. Tests about the lifecycle serve a tiny random model
(tests/base_models.py): it loads in a moment; what the model answers is asked of the demo run's server only."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.config import REPO_ROOT

pytestmark = pytest.mark.slow


def cli(*args):
    return subprocess.run([sys.executable, "-m", "core", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=900, env=dict(os.environ))


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A tiny random base model folder: a server for the lifecycle tests loads it in a moment."""
    from tests.base_models import make_base_model

    return str(make_base_model(tmp_path_factory.mktemp("tiny") / "tiny-gpt2", hidden=32, layers=1))


def _gone(pid: int | None) -> bool:
    """The process has ended (a zombie waiting to be collected counts as ended)."""
    import psutil

    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _kill_serve_jobs(ws: Path) -> None:
    """No server of a test outlives it: every serve job of workspace ``ws`` still running is killed (its group)."""
    from core.runs import store
    from tests.conftest import workspace_env

    with workspace_env(ws):
        for job in store.active_runs():
            if job.kind == "serve" and job.pid:
                try:
                    os.killpg(job.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass


@pytest.fixture
def serving_ws(workspace):
    """A fresh workspace whose servers (serve jobs) are all killed when the test ends, whatever failed."""
    yield workspace
    _kill_serve_jobs(workspace)


def _logits(model, ids):
    import torch

    with torch.no_grad():
        return model(input_ids=ids).logits


def test_merged_model_equals_base_plus_adapter(demo_ws, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from core.deploy.merge import is_complete, merge_lora
    from core.models import ensure_default_model

    base_dir = str(ensure_default_model())
    out = tmp_path / "merged"
    info = merge_lora(base_dir, demo_ws["adapter"], out)
    assert is_complete(out) and info["merged_modules"] > 0 and info["tensors"] == 272
    assert {"config.json", "tokenizer.json", "chat_template.jinja", "generation_config.json"} <= set(info["files"])
    ids = torch.tensor([[1, 504, 3458, 314, 253, 1345, 30, 216, 28, 1345]])
    peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32),
                                     demo_ws["adapter"]).eval()
    merged = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    diff = (_logits(merged, ids) - _logits(peft, ids)).abs().max().item()
    print(f"\nmerged vs base+adapter: max |logit diff| {diff:.2e} ({info['seconds']} s, {info['bytes'] / 1e6:.0f} MB)")
    assert diff < 1e-3
    assert torch.equal(_logits(merged, ids).argmax(-1), _logits(peft, ids).argmax(-1))


def test_export_job_and_bad_input_through_the_cli(demo_ws, tmp_path):
    run_id = demo_ws["run_id"]
    proc = cli("export", "--run", str(run_id), "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["status"] == "succeeded" and out["format"] == "safetensors"
    merged = Path(out["output"])
    assert merged == demo_ws["ws"].resolve() / "runs" / str(run_id) / "merged"
    assert (merged / "model.safetensors").is_file() and (merged / ".fts-complete").is_file()
    assert "LoRA adapter merged" in out["note"]
    # GGUF (Q8_0) from the same merged folder, with an Ollama Modelfile (the file's contents: tests/test_gguf_export.py)
    proc = cli("export", "--run", str(run_id), "--format", "gguf", "--quant", "q8_0", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    gguf, modelfile = Path(out["gguf"]), Path(out["modelfile"])
    merged_bytes = sum(f.stat().st_size for f in Path(out["merged_dir"]).glob("*.safetensors"))
    assert gguf.is_file() and gguf.name.endswith("-q8_0.gguf") and out["gguf_bytes"] < 0.35 * merged_bytes  # fp32
    assert f"FROM ./{gguf.name}" in modelfile.read_text() and "<|im_end|>" in modelfile.read_text()
    assert "reusing the merged model" in cli("runs", "logs", str(out["job_id"])).stdout
    # a merged folder is reused only while it was made from the adapter's weights as they are now
    from core.deploy.export import _fresh

    weights = Path(demo_ws["adapter"]) / "adapter_model.safetensors"
    assert _fresh(merged, Path(demo_ws["adapter"]))
    st = weights.stat()
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # as a retrained adapter would be
    assert not _fresh(merged, Path(demo_ws["adapter"]))
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert _fresh(merged, Path(demo_ws["adapter"]))
    # the adapter kept separate, copied into a folder of the user's choosing
    dest = tmp_path / "adapter-out"
    proc = cli("export", "--run", str(run_id), "--format", "adapter", "--out", str(dest), "--json")
    assert proc.returncode == 0, proc.stderr
    assert (dest / "adapter_model.safetensors").is_file() and (dest / "adapter_config.json").is_file()
    for args, needle in [(("--run", "999"), "run 999 not found"),
                         (("--run", str(run_id), "--format", "adapter", "--out", str(dest)), "not an empty folder")]:
        proc = cli("export", *args)
        assert proc.returncode == 2 and needle in proc.stderr, (args, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def served(demo_run):
    """One local server on the demo run's merged model for the tests below (started through the CLI)."""
    from storage import reset_engines

    saved = os.environ.get("FTS_WORKSPACE")
    os.environ["FTS_WORKSPACE"] = str(demo_run["ws"])
    reset_engines()
    try:
        proc = cli("deploy", "--run", str(demo_run["run_id"]), "--target", "local", "--json")
        assert proc.returncode == 0, proc.stderr + proc.stdout
        dep = json.loads(proc.stdout)
    finally:
        if saved is None:
            os.environ.pop("FTS_WORKSPACE", None)
        else:
            os.environ["FTS_WORKSPACE"] = saved
        reset_engines()
    yield dep
    _kill_serve_jobs(demo_run["ws"])  # no server of this module outlives it, whatever failed


def test_local_server_answers_through_inference_client(served, demo_ws):
    import urllib.request

    from huggingface_hub import InferenceClient

    from core.deploy import deployments as D

    assert served["status"] == "running" and served["url"].startswith("http://127.0.0.1:")
    # the served model is discoverable under its name (plain transformers serve lists only the hub cache)
    with urllib.request.urlopen(served["url"] + "/models", timeout=10) as r:
        models = json.loads(r.read())["data"]
    assert [m["id"] for m in models] == [served["served_name"]]
    client = InferenceClient(base_url=served["url"], timeout=120)
    msg = [{"role": "user", "content": "Order A4821 arrived broken, I want a refund."}]
    out = client.chat_completion(messages=msg, model=served["served_name"], max_tokens=40, temperature=0.0)
    text = out.choices[0].message.content
    assert text.strip() and out.usage.completion_tokens > 0
    assert out.model == served["served_name"]  # the name /v1/models lists, not the merged folder
    chunks = [c.choices[0].delta.content for c in client.chat_completion(
        messages=msg, model=served["served_name"], max_tokens=40, temperature=0.0, stream=True) if c.choices]
    streamed = "".join(c for c in chunks if c)
    assert len([c for c in chunks if c]) > 3 and streamed == text  # greedy: the stream is the same answer
    print(f"\nlocal server reply: {text!r}")
    # the tuned model answers in the demo task's JSON form
    assert text.lstrip().startswith("{")
    # the Playground can put the deployment on one side: its endpoint streams beside a local model
    from core.deploy.sources import resolve_source_or_deployment as resolve_source
    from core.generate import GenSettings, ModelCache, stream

    cache = ModelCache()
    sides = [cache.slot(resolve_source("default")), cache.slot(resolve_source(f"deployment:{served['id']}"))]
    updates = list(stream(sides, [msg, msg], GenSettings(max_new_tokens=40)))
    final = updates[-1]
    assert final[1].error is None and final[1].text == text and final[0].text and final[0].error is None
    assert any(0 < len(u[1].text) < len(text) for u in updates)  # the endpoint side arrived piece by piece
    assert final[1].label.startswith(f"deployment #{served['id']}") and final[1].tokens_per_s
    smoke = D.smoke_test(served["id"])
    assert smoke["reply"] and smoke["stream_chunks"] > 0 and smoke["latency_s"] > 0
    sn = D.snippets(D.get(served["id"]))
    assert served["url"] in sn["curl"] and served["served_name"] in sn["python"] and "OpenAI(" in sn["openai"]


def test_the_served_model_field_is_the_served_name_through_the_cli(served, demo_ws):
    """Issue 31: a chat completion answered '"model": "<workspace>/runs/1/merged@main"' while /v1/models listed
    'run-1-quickstart-lora'. The CLI's smoke request (plain and streamed) reads the field back."""
    proc = cli("deployments", "smoke", str(served["id"]), "--prompt", "Order A1 never came.", "--json")
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout)
    assert res["model"] == served["served_name"] and res["stream_models"] == [served["served_name"]]
    proc = cli("deployments", "smoke", str(served["id"]))
    assert proc.returncode == 0 and f"model '{served['served_name']}'" in proc.stdout


def test_a_killed_server_is_marked_and_a_stopped_one_frees_its_port(serving_ws, tiny_model, monkeypatch):
    from core import runs
    from core.deploy import deployments as D
    from tests.conftest import wait_until
    from ui.deploy import deployment_details

    # servers have a lane of their own: with two servers serving (FTS_MAX_SERVERS=2) and one slot for training
    # (FTS_MAX_CONCURRENT_RUNS=1), a queued device job starts at once, and a third server waits for a server slot
    monkeypatch.setenv("FTS_MAX_SERVERS", "2")
    monkeypatch.setenv("FTS_MAX_CONCURRENT_RUNS", "1")
    monkeypatch.setenv("FTS_JOB_KINDS", "tests.job_kinds")
    first, dep = D.start_local(tiny_model, wait=False), D.start_local(tiny_model, wait=False)
    first, dep = D.wait_healthy(first.id), D.wait_healthy(dep.id)
    assert first.status == dep.status == "running", (first.error, dep.error)
    job = runs.get_run(dep.job_id)
    assert job.kind == "serve" and job.status == "running" and job.parent_run_id is None
    counted = runs.submit("count", {"steps": 1, "sleep_s": 0})
    assert counted.status in ("starting", "running"), counted.status  # not queued behind the servers
    third = D.start_local(tiny_model, wait=False)
    assert third.status == "starting" and runs.get_run(third.job_id).status == "queued"
    assert "waiting for a free server slot" in deployment_details(str(third.id))[0]
    # the Deploy tab's refresh: quick while the selected server is starting, slow once it serves (each tick asks its
    # /health), its timer sent only when the pace changes, and a shown status not sent again
    from ui.deploy import IDLE_REFRESH_S, REFRESH_S, deploy_tick

    *_, cache, timer = deploy_tick(None, str(third.id), {"sent": {"pace": IDLE_REFRESH_S}})
    assert timer.value == REFRESH_S and cache["sent"]["pace"] == REFRESH_S
    *_, cache, timer = deploy_tick(None, str(first.id), cache)
    assert cache["shown"] == (str(first.id), "running") and timer.value == IDLE_REFRESH_S
    again = deploy_tick(None, str(first.id), cache)
    assert again[-2]["sent"]["pace"] == IDLE_REFRESH_S
    assert all(u == {"__type__": "update"} for u in (*again[3:9], again[-1]))  # nothing changed: nothing sent
    assert D.stop(third.id).status == "stopped" and runs.get_run(third.job_id).status == "stopped"
    assert runs.wait_for(counted.id, timeout_s=120).status == "succeeded"
    # the second server stopped from the API: the port is free and the row says stopped
    port = dep.port
    with pytest.raises(D.DeployError, match=f"port {port} is in use"):
        D.start_local(tiny_model, port=port)
    stale = D.peek(dep.id)  # what a tick of another page read just before the stop
    stopped = D.stop(dep.id)
    assert stopped.status == "stopped" and D.port_is_free(port) and stopped.error is None
    assert runs.get_run(dep.job_id).status == "stopped"
    wait_until(lambda: _gone(dep.pid), 30)  # its supervisor, once it has handed the slot on
    # that page's check then finds the job ended: it decided from 'running', so it changes nothing (no false 'dead')
    assert D.refresh(stale).status == "stopped" and D.get(dep.id).error is None
    assert D.stop(dep.id).status == "stopped"  # stopping twice is harmless
    # a server killed from outside (its whole process group): the next read marks it dead, with its log tail
    os.killpg(first.pid, signal.SIGKILL)
    wait_until(lambda: _gone(first.pid), 30, poll_s=0.05)
    row = D.get(first.id)
    assert row.status == "dead" and "the server process is gone" in row.error and "log tail" in row.error
    assert runs.get_run(first.job_id).status == "failed"  # the runs core recorded the death
    proc = cli("deployments", "list", "--all", "--json")
    listed = {d["id"]: d["status"] for d in json.loads(proc.stdout)}
    assert listed[first.id] == "dead" and listed[dep.id] == "stopped"
    # a deployment is deleted with its serve job (one path: the runs core's delete and the serve kind's hook)
    proc = cli("deployments", "delete", str(dep.id))
    assert proc.returncode == 0 and f"deployment {dep.id} deleted" in proc.stdout, proc.stderr
    with pytest.raises(D.DeployError, match="not found"):
        D.get(dep.id)
    with pytest.raises(runs.JobError, match="not found"):
        runs.get_run(dep.job_id)


def test_a_server_survives_a_dashboard_restart_and_a_killed_one_is_recorded(serving_ws, tiny_model):
    """The runs core tracks the server: a studio that starts again (a new process: reconcile on start) keeps a
    running server and marks one that died meanwhile; a server killed with SIGKILL while its supervisor lives ends
    failed through the supervisor's record, with the log tail."""
    from core import runs
    from core.deploy import deployments as D

    alive = D.start_local(tiny_model, wait=False)
    doomed = D.start_local(tiny_model, wait=False)
    alive, doomed = D.wait_healthy(alive.id), D.wait_healthy(doomed.id)
    assert alive.status == doomed.status == "running", (alive.error, doomed.error)
    os.killpg(doomed.pid, signal.SIGKILL)  # no one of its job is left to write down how it ended
    restart = ("import json; from core import runs; from core.deploy import deployments as D; "
               "runs.reconcile(on_start=True); print(json.dumps(D.reconcile_on_start()))")
    proc = subprocess.run([sys.executable, "-c", restart], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=300, env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"marked": [doomed.id], "orphans_stopped": [],
                                                               "orphan_containers_removed": []}
    row = D.peek(doomed.id)  # as the restarted studio left it
    assert row.status == "dead" and "the server process is gone" in row.error and "log tail" in row.error
    assert runs.get_run(doomed.job_id).status == "interrupted"
    assert D.get(alive.id).status == "running" and runs.get_run(alive.job_id).status == "running"
    # the serving process killed, its supervisor alive: the supervisor records how it died
    worker = runs.get_run(alive.job_id).worker_pid
    os.kill(worker, signal.SIGKILL)
    job = runs.wait_for(alive.job_id, timeout_s=60, poll_s=0.2)
    assert job.status == "failed" and "killed by signal 9" in job.error
    row = D.get(alive.id)
    assert row.status == "dead" and "killed by signal 9" in row.error and "--- log tail ---" in row.error
    assert "Uvicorn running on" in row.error  # the tail is the server's log
    assert D.port_is_free(alive.port)


def test_deployment_faults_each_end_in_a_clear_status(serving_ws, tmp_path, tiny_model):
    from core import runs
    from core.deploy import deployment_rows
    from core.deploy import deployments as D
    from core.runs.errors import JobError

    # a folder that is not a model
    with pytest.raises(D.DeployError, match="not found"):
        D.start_local(str(tmp_path / "missing"))
    # a run with nothing to serve
    with pytest.raises(JobError, match="run 999 not found"):
        D.start_local("run:999")
    # the server dies at start: a model folder whose weights are garbage
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (broken / name).write_bytes((Path(tiny_model) / name).read_bytes())
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    dep = D.start_local(str(broken), timeout_s=120)
    assert dep.status == "failed" and "exited before it became healthy" in dep.error and "log tail" in dep.error
    # health never OK within the timeout: the process is stopped and the row failed
    dep = D.start_local("default", timeout_s=0.5)
    assert dep.status == "failed" and "did not answer /health within" in dep.error
    assert runs.get_run(dep.job_id).status == "failed"
    for _ in range(100):
        if _gone(dep.pid):
            break
        time.sleep(0.1)
    assert _gone(dep.pid) and D.port_is_free(dep.port)
    # an orphan (a server whose row is no longer active) is stopped on the studio's start
    orphan = D.start_local(tiny_model, wait=False)
    deployment_rows.update_row(orphan.id, status="stopped")
    result = D.reconcile_on_start()
    assert orphan.id in result["orphans_stopped"]
    assert runs.wait_for(orphan.job_id, timeout_s=60, poll_s=0.2).status == "stopped"
    for _ in range(100):
        if _gone(orphan.pid):
            break
        time.sleep(0.1)
    assert _gone(orphan.pid)


def test_deployment_details_show_paths_and_logs_as_text(workspace):
    from core.deploy import deployment_rows
    from storage import Deployment
    from ui.deploy import deployment_details

    dep = deployment_rows.save_row(Deployment(target="local", model_ref="x", model_dir="/m/`a`<b>", served_name="n<i>",
                                              url="http://127.0.0.1:1/v1", status="failed", port=1,
                                              error="boom\n```\n</pre><script>alert(1)</script>"))
    text, curl, py, oai = deployment_details(str(dep.id))
    assert "<script>" not in text and "&lt;script&gt;" in text and "&lt;b&gt;" in text and "n&lt;i&gt;" in text


def test_container_targets_without_a_docker_engine(demo_ws, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    run_id = demo_ws["run_id"]
    proc = cli("deploy", "--run", str(run_id), "--target", "tgi", "--gpu", "a10g", "--dry-run", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["args"][:2] == ["docker", "run"] and "--model-id" in out["args"] and out["deployment"] is None
    proc = cli("deploy", "--run", str(run_id), "--target", "vllm", "--gpu", "l4", "--keep-adapter", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    dep = out["deployment"]
    assert dep["status"] == "planned" and "--enable-lora" in out["args"]
    assert "GPU host" in dep["error"] or "Docker" in dep["error"]



def test_hub_push_model_card_offline_and_the_token_never_stored(demo_ws, monkeypatch):
    from core import runs
    from core.deploy.hub import model_card
    from core.runs import paths

    run = runs.get_run(demo_ws["run_id"])
    card = model_card(run, what="merged", repo_id="me/support-json")
    assert card.startswith("---\nbase_model: HuggingFaceTB/SmolLM2-135M-Instruct\nlibrary_name: transformers")
    assert "| lora_r | 16 |" in card and "## Use" in card and 'from_pretrained("me/support-json")' in card
    # no token: refused at submit, nothing queued
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(demo_ws["ws"] / "hf-home"))  # no cached login either
    before = len(runs.list_runs(kind="export"))
    proc = cli("export", "--run", str(run.id), "--format", "hub", "--repo-id", "me/support-json")
    assert proc.returncode == 2 and "no Hugging Face token" in proc.stderr, proc.stderr
    proc = cli("export", "--run", str(run.id), "--format", "hub", "--repo-id", "not a repo")
    assert proc.returncode == 2 and "not a Hub repository id" in proc.stderr
    assert len(runs.list_runs(kind="export")) == before
    # a token, no network here: the job fails with one line saying so; the token is in no row, log or output
    secret = "hf_studioTestSecret0123456789"
    monkeypatch.setenv("HF_TOKEN", secret)
    proc = cli("export", "--run", str(run.id), "--format", "hub", "--repo-id", "me/support-json", "--json")
    assert proc.returncode == 1, proc.stderr
    out = json.loads(proc.stdout)
    assert out["status"] == "failed" and "unreachable" in out["error"] and "me/support-json" in out["error"]
    job = runs.get_run(out["job_id"])
    stored = (json.dumps(runs.run_to_dict(job, with_config=True), default=str)
              + paths.log_tail(job.id, max_lines=10_000, max_chars=10**7))
    assert secret not in stored and secret not in proc.stdout + proc.stderr


def test_a_run_is_deleted_with_its_ended_deployments_through_the_runs_core(workspace):
    """One path for deletes: a training run's serve jobs are jobs made from it, so deleting the run deletes them and
    (the serve kind's hook) their deployment rows; a deployment still serving refuses it; deleting a deployment
    deletes its serve job. A container's row (no job) is only a row."""
    from core import runs
    from core.deletion import delete_run
    from core.deploy import deployment_rows
    from core.deploy import deployments as D
    from core.runs import JobError, store
    from storage import Deployment

    def ended(kind: str, parent: int | None = None):
        job = store.submit(kind, {}, parent_run_id=parent)
        store.transition(job.id, "starting")
        store.transition(job.id, "running")
        store.finish(job.id, "succeeded" if kind == "train" else "stopped")
        return job

    def row(**fields):
        return deployment_rows.save_row(Deployment(model_ref="x", created_by="anonymous", **fields))

    run = ended("train")
    served, again = ended("serve", parent=run.id), ended("serve")
    local = row(run_id=run.id, target="local", job_id=served.id, status="stopped")
    other = row(target="local", job_id=again.id, status="dead")
    tgi = row(run_id=run.id, target="tgi", status="running", container_id="0123456789abcdef")
    with pytest.raises(JobError, match=rf"deployment #{tgi.id} serves run {run.id} \(running\): stop it"):
        delete_run(run.id)
    with pytest.raises(D.DeployError, match="running: stop it before deleting"):
        D.delete(tgi.id)
    deployment_rows.update_row(tgi.id, status="stopped")
    assert delete_run(run.id)["runs"] == [run.id, served.id]
    with pytest.raises(D.DeployError, match="not found"):
        D.get(local.id)
    assert D.get(tgi.id).status == "stopped"  # a container's row stays, as it did
    D.delete(other.id)  # a deployment: its serve job goes with it
    for job_id in (served.id, again.id):
        with pytest.raises(JobError, match="not found"):
            runs.get_run(job_id)
        assert not store.job_path(job_id).exists()
    D.delete(tgi.id)
    assert D.list_deployments() == []
