"""The studio's image and the ``container`` deploy target against the real Docker engine (issue 30).

The engine is Debian's docker.io, started by scripts/docker-engine.sh (as `scripts/setup.sh --dev` and .ci/run do)
with ``--bridge=none --iptables=false``: every container here runs on the host's network and answers on a loopback
port only (8790-8799). The image is built once per session through `make image`'s script, tagged by a hash of what
its heavy layers are made from (Dockerfile, requirements.txt); docker's layer cache keeps those layers, so a session
that changed only code rebuilds the code layer (seconds). No registry is reachable: the base is made locally.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import DOCKER_ENGINE, FIXTURES, REPO, wait_until

pytestmark = pytest.mark.slow
STUDIO_PORT = 8790
SERVE_PORT = 8791


_ENGINE_ENV = {**os.environ, "DOCKER_HOST": DOCKER_ENGINE}  # the real engine (the rest of the suite sees none)


def _docker(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, env=_ENGINE_ENV)
    if check and proc.returncode != 0:
        raise AssertionError(f"docker {' '.join(args[:3])} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return proc


@pytest.fixture(scope="session")
def docker_ready():
    """A Docker engine that answers (started here when we are root), with the base image; skipped where there is
    none and none can be started (not root, no apt)."""
    proc = subprocess.run([str(REPO / "scripts" / "docker-engine.sh")], capture_output=True, text=True, timeout=900,
                          env={**_ENGINE_ENV, "FTS_TRY_PULL": os.environ.get("FTS_TRY_PULL", "0")})
    if proc.returncode != 0:
        pytest.skip(f"no Docker engine here: {proc.stderr.strip().splitlines()[-1:]}")
    return proc.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="session")
def studio_image(docker_ready) -> str:
    """The studio's image, built once per session (`make image`'s script); stale test tags are removed."""
    digest = hashlib.sha256(b"".join((REPO / f).read_bytes() for f in ("Dockerfile", "requirements.txt")))
    tag = f"finetune-studio:test-{digest.hexdigest()[:12]}"
    for old in _docker("images", "--format", "{{.Repository}}:{{.Tag}}", "finetune-studio").stdout.split():
        if old.startswith("finetune-studio:test-") and old != tag:
            _docker("rmi", old, check=False)
    t0 = time.monotonic()
    proc = subprocess.run([str(REPO / "scripts" / "build-image.sh"), tag], capture_output=True, text=True,
                          timeout=1800, cwd=REPO, env=_ENGINE_ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    print(f"\nstudio image {tag}: built in {time.monotonic() - t0:.0f} s")
    return tag


def _health(name: str) -> str:
    return _docker("inspect", "-f", "{{.State.Health.Status}}", name).stdout.strip()


def _in(name: str, *cmd: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return _docker("exec", name, *cmd, timeout=timeout)


def test_the_image_serves_the_studio_trains_and_keeps_its_runs_on_the_volume(studio_image):
    name, volume = f"fts-test-studio-{uuid.uuid4().hex[:8]}", f"fts-test-data-{uuid.uuid4().hex[:8]}"
    try:
        # host network, the page on a loopback port; the health check every 2 s instead of 30 (same command)
        _docker("run", "-d", "--name", name, "--network", "host", "-e", f"PORT={STUDIO_PORT}",
                "-e", "GRADIO_SERVER_NAME=127.0.0.1", "-v", f"{volume}:/data", "--health-interval", "2s",
                "--health-start-period", "120s", studio_image)
        assert _in(name, "id", "-u").stdout.strip() == "1000"
        assert wait_until(lambda: _health(name) == "healthy", 180, poll_s=1)
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{STUDIO_PORT}/config", timeout=10) as r:
            assert json.load(r)["title"] == "Finetune Studio"
        # the embedded model is in the image, the workspace on the volume; 2 steps through the CLI in the container
        _docker("cp", str(FIXTURES / "identity.json"), f"{name}:/data/identity.json")
        imported = json.loads(_in(name, ".venv/bin/python", "-m", "core", "data", "import", "/data/identity.json",
                                  "--json").stdout)
        ds = imported["dataset_id"]
        run = json.loads(_in(name, ".venv/bin/python", "-m", "core", "train", "--dataset", str(ds), "--max-steps",
                             "2", "--batch-size", "1", "--max-length", "64", "--lora-r", "4", "--name", "in-a-box",
                             "--wait", "--json").stdout)
        assert run["status"] == "succeeded" and run["final_metrics"]["global_step"] == 2
        assert run["log_path"].startswith("/data/workspace/runs/")
        # a restart (SIGTERM to the dashboard, PID 1) keeps everything on the volume
        _docker("restart", name, timeout=120)
        assert wait_until(lambda: _health(name) == "healthy", 180, poll_s=1)
        again = json.loads(_in(name, ".venv/bin/python", "-m", "core", "runs", "show", str(run["id"]),
                               "--json").stdout)
        assert again["status"] == "succeeded" and again["name"] == "in-a-box"
        _in(name, "test", "-f", f"{again['adapter_path']}/adapter_model.safetensors")
    finally:
        _docker("rm", "-f", name, check=False)
        _docker("volume", "rm", volume, check=False)


def test_a_model_is_served_from_the_studio_image_through_the_engine(studio_image, workspace, tiny_model_dir,
                                                                    monkeypatch, tmp_path):
    """The whole launch path of the ``container`` target: plan → docker SDK → health wait → smoke test through the
    OpenAI client → logs in the details → stop (container removed) → orphans removed on start."""
    import docker
    from openai import OpenAI

    from core.deploy import deployments as D
    from core.deploy.containers import LABEL_DEPLOYMENT, LABEL_MANAGED, ServeSpec
    from core.deploy.docker_engine import launch_container, studio_containers

    monkeypatch.setenv("FTS_STUDIO_IMAGE", studio_image)
    monkeypatch.setenv("DOCKER_HOST", DOCKER_ENGINE)
    import core.deploy.containers as containers

    monkeypatch.setattr(containers, "STUDIO_IMAGE", studio_image)
    model = tmp_path / "merged"  # a merged folder as an export leaves it (readable by the image's user)
    shutil.copytree(tiny_model_dir, model)
    model.chmod(0o700)  # refused first, with what to do: the image's user (uid 1000) cannot read it
    with pytest.raises(D.DeployError, match=r"uid 1000, which cannot read .*chmod -R o\+rX"):
        D.deploy_container(str(model), "container", port=SERVE_PORT)
    model.chmod(0o755)
    for f in model.iterdir():  # (safetensors writes its files 0600)
        f.chmod(0o644)
    res = D.deploy_container(str(model), "container", port=SERVE_PORT, memory_gb=3, cpus=1, health_timeout_s=240)
    dep = res["deployment"]
    assert dep["status"] == "running", dep["error"]
    assert dep["url"] == f"http://127.0.0.1:{SERVE_PORT}/v1"
    client = docker.from_env()
    try:
        box = client.containers.get(dep["container_id"])
        host = box.attrs["HostConfig"]
        assert host["NetworkMode"] == "host" and host["Memory"] == 3 * 2**30 and host["NanoCpus"] == 10**9
        assert not host.get("DeviceRequests")  # no GPU flags for the CPU server
        binds = [(m["Source"], m["Destination"], m["RW"]) for m in box.attrs["Mounts"] if m["Type"] == "bind"]
        assert binds == [(str(model), "/data/model", False)]
        anonymous = [m["Name"] for m in box.attrs["Mounts"] if m["Type"] == "volume"]  # the image's VOLUME /data
        assert box.labels[LABEL_MANAGED] == "finetune-studio" and box.labels[LABEL_DEPLOYMENT] == str(dep["id"])
        # the OpenAI client, as a person would use the endpoint
        oai = OpenAI(base_url=dep["url"], api_key="not-needed")
        assert [m.id for m in oai.models.list().data] == [dep["served_name"]]
        out = oai.chat.completions.create(model=dep["served_name"], max_tokens=8,
                                          messages=[{"role": "user", "content": "Hello!"}])
        assert out.model == dep["served_name"] and out.choices[0].message.content is not None
        smoke = D.smoke_test(dep["id"], max_tokens=8)  # the studio's own smoke test, plain and streaming
        assert smoke["model"] == dep["served_name"] and smoke["stream_chunks"] >= 1
        from ui.deploy import deployment_details

        text = deployment_details(str(dep["id"]))[0]
        assert "output (live) ----" in text and "/v1/chat/completions HTTP/1.1&quot; 200 OK" in text
        # an orphan: a container of this workspace that no row owns (a studio that died mid-launch)
        orphan = launch_container(ServeSpec(model_dir=str(model), served_name="orphan", port=SERVE_PORT + 1,
                                            memory_gb=2, cpus=1), "container")
        assert orphan["container_id"] in {c["id"] for c in studio_containers()}
        assert D.reconcile_on_start()["orphan_containers_removed"] == [orphan["name"]]
        assert {c["id"] for c in studio_containers()} == {dep["container_id"]}  # the deployment's stays
        stopped = D.stop(dep["id"])
        assert stopped.status == "stopped"
        with pytest.raises(docker.errors.NotFound):
            client.containers.get(dep["container_id"])
        for volume in anonymous:  # removed with it
            with pytest.raises(docker.errors.NotFound):
                client.volumes.get(volume)
        kept = Path(stopped.log_path).read_text(encoding="utf-8")
        assert "output ----" in kept and "[local server] loading /data/model" in kept
        assert "/v1/chat/completions HTTP/1.1&quot; 200 OK" in deployment_details(str(dep["id"]))[0]  # still shown
    finally:
        for c in client.containers.list(all=True, filters={"label": f"{LABEL_MANAGED}=finetune-studio"}):
            if c.labels.get("fts.workspace") == str(workspace):
                c.remove(force=True, v=True)
