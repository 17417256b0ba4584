"""Deploy on real parts: a real LoRA run (the session's demo run) merged and checked against base+adapter, the export
job through the CLI, the local server (transformers serve) started on the merged model and asked through
huggingface_hub.InferenceClient, stopped (port freed) and killed (row marked), and the ways a deployment fails."""
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
    # no server of this module outlives it, whatever failed: every local server of the demo workspace is killed
    import psutil

    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmd = proc.info.get("cmdline") or []
        if "core.deploy.local_server" in cmd and str(Path(demo_run["ws"]).resolve()) in cmd:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


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


def test_a_killed_server_is_marked_and_a_stopped_one_frees_its_port(served, demo_ws):
    from core.deploy import deployments as D
    from core.deploy import server_processes

    # a second server on the base model, stopped from the API: the port is free and the row says stopped
    dep = D.start_local("default", timeout_s=240)
    assert dep.status == "running", dep.error
    port = dep.port
    with pytest.raises(D.DeployError, match=f"port {port} is in use"):
        D.start_local("default", port=port)
    stale = D.peek(dep.id)  # what a tick of another page read just before the stop
    stopped = D.stop(dep.id)
    assert stopped.status == "stopped" and D.port_is_free(port)
    assert not server_processes.is_our_server(dep.pid, dep.id)
    # that page's check then finds no process: it decided from 'running', so it changes nothing (no false 'dead')
    assert D.refresh(stale).status == "stopped" and D.get(dep.id).error is None
    assert D.stop(dep.id).status == "stopped"  # stopping twice is harmless
    # the run's server killed from outside: the next read marks it dead, with its log tail
    os.killpg(served["pid"], signal.SIGKILL)
    for _ in range(100):
        if not server_processes.is_our_server(served["pid"], served["id"]):
            break
        time.sleep(0.05)
    row = D.get(served["id"])
    assert row.status == "dead" and "the server process is gone" in row.error and "log tail" in row.error
    proc = cli("deployments", "list", "--all", "--json")
    listed = {d["id"]: d["status"] for d in json.loads(proc.stdout)}
    assert listed[served["id"]] == "dead" and listed[dep.id] == "stopped"


def test_deployment_faults_each_end_in_a_clear_status(demo_ws, tmp_path, monkeypatch):
    from core.deploy import deployment_rows, server_processes
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
    src = D.resolve_target_model("default")[1]
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (broken / name).write_bytes((Path(src) / name).read_bytes())
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    dep = D.start_local(str(broken), timeout_s=120)
    assert dep.status == "failed" and "exited before it became healthy" in dep.error
    # health never OK within the timeout: the process is stopped and the row failed
    dep = D.start_local("default", timeout_s=0.5)
    assert dep.status == "failed" and "did not answer /health within" in dep.error
    assert not server_processes.is_our_server(dep.pid, dep.id)
    # an orphan (a server whose row is no longer active) is stopped on the studio's start
    orphan = D.start_local("default", wait=False)
    deployment_rows.update_row(orphan.id, status="stopped")
    for _ in range(50):
        if server_processes.is_our_server(orphan.pid, orphan.id):
            break
        time.sleep(0.1)
    result = D.reconcile_on_start()
    assert orphan.id in result["orphans_stopped"]
    for _ in range(100):
        if not server_processes.is_our_server(orphan.pid, orphan.id):
            break
        time.sleep(0.1)
    assert not server_processes.is_our_server(orphan.pid, orphan.id)


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
