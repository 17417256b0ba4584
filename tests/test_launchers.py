"""TGI / vLLM launchers: exact docker argument lists (core.deploy.containers), sizing from the estimate
(core.estimate.serving), the no-engine path (core.deploy.docker_engine), cloud settings (core.deploy.clouds).

Real parts only: configs and adapter folders are written to tmp_path, the default model is the converted SmolLM2, and
the no-engine path talks to a socket that does not exist.
"""
from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path

import pytest

from core.deploy import clouds, containers
from core.deploy import docker_engine as docker_sdk
from core.deploy.containers import ServeSpec
from core.estimate import serving
from core.estimate.serving import LaunchError

# A Llama-2-7B-shaped config (fp16 checkpoint, 4,096-token context) and a Llama-2-70B one.
LLAMA_7B = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 4096,
            "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32,
            "vocab_size": 32000, "max_position_embeddings": 4096, "torch_dtype": "float16",
            "tie_word_embeddings": False, "rms_norm_eps": 1e-5}
LLAMA_70B = {**LLAMA_7B, "hidden_size": 8192, "intermediate_size": 28672, "num_hidden_layers": 80,
             "num_attention_heads": 64, "num_key_value_heads": 8}


def _model(tmp_path: Path, name: str, config: dict) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return folder


def _adapter(tmp_path: Path, name: str, r: int) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": r, "lora_alpha": 2 * r, "target_modules": ["q_proj", "v_proj"],
         "base_model_name_or_path": "meta-llama/Llama-2-7b-hf"}), encoding="utf-8")
    return folder


def _limits_and_labels(memory_mib: int = 2048) -> list[str]:
    """What every container plan carries: the memory and CPU limits (a folder without weights: the 2 GB floor; all
    CPUs) and the studio's labels."""
    from core.config import get_settings

    return ["--memory", f"{memory_mib}m", "--cpus", f"{os.cpu_count()}", "--label", "fts.managed=finetune-studio",
            "--label", f"fts.workspace={get_settings().workspace}"]


# ---- exact argument lists ------------------------------------------------------------------------------------------

def test_tgi_merged_model_sized_for_an_a10g(tmp_path):
    model = _model(tmp_path, "merged", LLAMA_7B)
    args = containers.tgi_docker_args(ServeSpec(model_dir=str(model), served_name="support-bot", gpu="A10G 24GB"))
    assert args == [
        "docker", "run", "-d", "--network", "host", "--gpus", "all", "--shm-size", "1g", *_limits_and_labels(),
        "-v", f"{model}:/data/model:ro",
        "--name", "fts-tgi-support-bot-8080",
        "ghcr.io/huggingface/text-generation-inference:3.3.7",
        "--model-id", "/data/model", "--hostname", "127.0.0.1", "--port", "8080",
        "--max-input-tokens", "3072", "--max-total-tokens", "4096", "--max-batch-prefill-tokens", "3122",
        "--num-shard", "1",
        "--dtype", "float16",
    ]


def test_tgi_lora_adapters_and_4bit(tmp_path, monkeypatch):
    base = _model(tmp_path, "base", LLAMA_7B)
    sql, chat = _adapter(tmp_path, "sql-adapter", 16), _adapter(tmp_path, "chat-adapter", 8)
    monkeypatch.chdir(tmp_path)  # a relative folder becomes absolute (docker -v would take it for a volume name)
    spec = ServeSpec(model_dir="base", served_name="llama-multi", port=9000, gpu="L4", max_input_tokens=2000,
                     max_total_tokens=3000, quantize_4bit=True,
                     lora_adapters=(("sql", str(sql)), ("chat", str(chat))), hf_token_env=True)
    assert containers.tgi_docker_args(spec) == [
        "docker", "run", "-d", "--network", "host", "--gpus", "all", "--shm-size", "1g", *_limits_and_labels(),
        "-v", f"{base}:/data/model:ro",
        "-v", f"{sql}:/data/lora/sql:ro",
        "-v", f"{chat}:/data/lora/chat:ro",
        "--name", "fts-tgi-llama-multi-9000",
        "-e", "HF_TOKEN",
        "ghcr.io/huggingface/text-generation-inference:3.3.7",
        "--model-id", "/data/model", "--hostname", "127.0.0.1", "--port", "9000",
        "--max-input-tokens", "2000", "--max-total-tokens", "3000", "--max-batch-prefill-tokens", "2050",
        "--num-shard", "1",
        "--quantize", "bitsandbytes-nf4",
        "--lora-adapters", "sql=/data/lora/sql,chat=/data/lora/chat",
    ]


def test_vllm_merged_model(tmp_path):
    model = _model(tmp_path, "merged", LLAMA_7B)
    spec = ServeSpec(model_dir=str(model), served_name="support-bot", port=8001, gpu="A100 80GB",
                     max_total_tokens=4096)
    assert containers.vllm_docker_args(spec) == [
        "docker", "run", "-d", "--network", "host", "--gpus", "all", "--ipc", "host", *_limits_and_labels(),
        "-v", f"{model}:/data/model:ro",
        "--name", "fts-vllm-support-bot-8001",
        "vllm/vllm-openai:v0.31.0",
        "/data/model",
        "--served-model-name", "support-bot", "--host", "127.0.0.1", "--port", "8001",
        "--max-model-len", "4096",
        "--gpu-memory-utilization", "0.90",
        "--dtype", "float16",
    ]


def test_vllm_lora_adapters_on_two_gpus(tmp_path):
    base = _model(tmp_path, "base", LLAMA_7B)
    sql, chat = _adapter(tmp_path, "sql-adapter", 24), _adapter(tmp_path, "chat-adapter", 8)
    spec = ServeSpec(model_dir=str(base), served_name="llama-multi", gpu="A10G 24GB", num_gpus=2,
                     lora_adapters=(("sql", str(sql)), ("chat", str(chat))))
    assert containers.vllm_docker_args(spec) == [
        "docker", "run", "-d", "--network", "host", "--gpus", "all", "--ipc", "host", *_limits_and_labels(),
        "-v", f"{base}:/data/model:ro",
        "-v", f"{sql}:/data/lora/sql:ro",
        "-v", f"{chat}:/data/lora/chat:ro",
        "--name", "fts-vllm-llama-multi-8080",
        "vllm/vllm-openai:v0.31.0",
        "/data/model",
        "--served-model-name", "llama-multi", "--host", "127.0.0.1", "--port", "8080",
        "--max-model-len", "4096",
        "--gpu-memory-utilization", "0.90",
        "--dtype", "float16",
        "--tensor-parallel-size", "2",
        "--enable-lora", "--max-loras", "2", "--max-lora-rank", "32",  # r=24 rounds up to vLLM's next allowed rank
        "--lora-modules", "sql=/data/lora/sql", "chat=/data/lora/chat",
    ]


def test_vllm_4bit_needs_the_bnb_plugin_image(tmp_path):
    model = _model(tmp_path, "merged", LLAMA_7B)
    spec = ServeSpec(model_dir=str(model), served_name="m", max_total_tokens=2048, quantize_4bit=True)
    with pytest.raises(LaunchError, match="vllm-bnb-plugin"):
        containers.vllm_docker_args(spec)
    args = containers.vllm_docker_args(spec, image="me/vllm-bnb:0.31.0")
    assert args[args.index("me/vllm-bnb:0.31.0") - 1] == "fts-vllm-m-8080"
    assert args[-2:] == ["--quantization", "bitsandbytes"]


def test_settings_a_person_can_fix(tmp_path):
    model = _model(tmp_path, "merged", LLAMA_7B)
    with pytest.raises(LaunchError, match="smaller than max_total_tokens"):
        containers.tgi_docker_args(ServeSpec(model_dir=str(model), served_name="m", max_input_tokens=4096,
                                    max_total_tokens=4096))
    with pytest.raises(LaunchError, match="longer than the model's context"):
        containers.tgi_docker_args(ServeSpec(model_dir=str(model), served_name="m", max_total_tokens=8192))
    with pytest.raises(LaunchError, match="adapter name"):
        containers.tgi_docker_args(ServeSpec(model_dir=str(model), served_name="m",
                                             lora_adapters=(("a,b", str(model)),)))
    with pytest.raises(LaunchError, match="unknown GPU 'B9000'.*NVIDIA L4 24 GB"):
        serving.size_for_gpu(str(model), "B9000")
    with pytest.raises(LaunchError, match="do not split over 3 GPUs"):
        containers.vllm_docker_args(ServeSpec(model_dir=str(model), served_name="m", num_gpus=3, max_total_tokens=2048))
    with pytest.raises(LaunchError, match="no config.json"):
        containers.tgi_docker_args(ServeSpec(model_dir=str(tmp_path / "missing"), served_name="m"))
    # with both limits given, no config is needed: the command may be meant for a folder on another host
    remote = containers.tgi_docker_args(ServeSpec(model_dir="/srv/models/m", served_name="m", max_input_tokens=1000,
                                         max_total_tokens=2000))
    assert "-v" in remote and "/srv/models/m:/data/model:ro" in remote and remote[-2:] == ["--dtype", "bfloat16"]


# ---- sizing ----------------------------------------------------------------------------------------------------------

def test_default_model_fits_a_24gb_gpu_capped_by_its_context(default_model_dir):
    config = json.loads((Path(default_model_dir) / "config.json").read_text(encoding="utf-8"))
    assert config["max_position_embeddings"] == 8192
    sized = serving.size_for_gpu(str(default_model_dir), "A10G 24GB")
    assert sized["fits"] is True
    assert sized["max_total_tokens"] == 8192 and sized["max_input_tokens"] == 8192 - 1024
    # KV cache per token: 2 (K and V) · 30 layers · 3 kv heads · head_dim 64 · 2 bytes (bf16; the fp32 checkpoint
    # is served in 16-bit)
    assert sized["kv_bytes_per_token"] == 2 * 30 * 3 * 64 * 2
    from core.estimate import count_parameters, spec_from_config

    assert sized["weights_bytes"] == 2 * count_parameters(spec_from_config(config)).total
    assert sized["gpu_bytes"] == 23_609_475_072 and sized["dtype"] == "bfloat16"
    assert "context length (8,192)" in sized["why"] and "A10G" in sized["why"]
    # and the TGI command built from it carries those limits
    args = containers.tgi_docker_args(ServeSpec(model_dir=str(default_model_dir), served_name="smol", gpu="A10G 24GB"))
    assert args[args.index("--max-total-tokens") + 1] == "8192"
    assert args[args.index("--max-input-tokens") + 1] == "7168"


def test_llama_70b_does_not_fit_one_24gb_gpu(tmp_path):
    model = _model(tmp_path, "llama-2-70b", LLAMA_70B)  # a config only: the estimate never reads weights
    sized = serving.size_for_gpu(str(model), "A10G 24GB")
    assert sized["fits"] is False
    assert sized["weights_bytes"] > 120 * 1024**3  # ~69 B parameters in fp16
    why = sized["why"]
    assert "does not fit on one NVIDIA A10G 24 GB" in why and "128.5 GiB of weights" in why
    assert "num_gpus=8" in why and "quantize_4bit=True" in why
    # the suggestions hold: 8 A10Gs fit, and so does 4-bit on an A100 80 GB
    assert serving.size_for_gpu(str(model), "A10G 24GB", num_gpus=8)["fits"] is True
    assert serving.size_for_gpu(str(model), "A100 80GB", quantize_4bit=True)["fits"] is True
    # a memory-limited card gets a shorter window instead of failing when the weights fit
    long_ctx = _model(tmp_path, "llama-7b-128k", {**LLAMA_7B, "max_position_embeddings": 131072})
    l4 = serving.size_for_gpu(str(long_ctx), "L4")
    assert l4["fits"] is True and 2048 <= l4["max_total_tokens"] < 131072 and l4["max_total_tokens"] % 256 == 0
    assert "the model allows 131,072 tokens" in l4["why"]


# ---- no engine -------------------------------------------------------------------------------------------------------

def test_no_docker_engine_says_where_it_looked_and_what_to_run(tmp_path, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent.sock")
    client, reason = docker_sdk.docker_engine()
    assert client is None
    assert "no Docker engine reachable at unix:///nonexistent.sock" in reason and "GPU host" in reason
    model = _model(tmp_path, "merged", LLAMA_7B)
    spec = ServeSpec(model_dir=str(model), served_name="support-bot", gpu="A10G 24GB")
    with pytest.raises(LaunchError) as err:
        docker_sdk.launch_container(spec, "tgi")
    message = str(err.value)
    assert "unix:///nonexistent.sock" in message
    assert containers.docker_command_text(containers.tgi_docker_args(spec)) in message
    assert docker_sdk.container_status("0123456789ab") is None
    with pytest.raises(LaunchError, match="docker rm -f 0123456789ab"):
        docker_sdk.stop_container("0123456789ab")
    with pytest.raises(LaunchError, match="target must be one of tgi, vllm"):
        docker_sdk.launch_container(spec, "ollama")


def test_without_the_docker_sdk_everything_but_the_launch_works(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "docker", None)  # `import docker` now raises ImportError
    client, reason = docker_sdk.docker_engine()
    pin = docker_sdk.DOCKER_SDK_PIN
    assert client is None and reason == f"the docker Python SDK is not installed (pip install {pin})"
    model = _model(tmp_path, "merged", LLAMA_7B)
    spec = ServeSpec(model_dir=str(model), served_name="m", gpu="L4")
    assert containers.tgi_docker_args(spec)[:2] == ["docker", "run"]
    assert "MAX_TOTAL_TOKENS" in clouds.cloud_settings(spec, "sagemaker")
    with pytest.raises(LaunchError, match="pip install docker=="):
        docker_sdk.launch_container(spec, "vllm")


# ---- an engine with a registry (tests/fake_docker.py; SDK and errors real; the real engine: test_container.py) ----

def test_an_engine_without_a_registry_says_in_one_line_which_image_from_where_and_how_to_load_it(tmp_path,
                                                                                                 monkeypatch):
    """Issue 31: the row failed with the engine's raw '500 Server Error for http+docker://…/images/create?…ghcr.io…
    no such host'."""
    from tests.fake_docker import FakeEngine

    model = _model(tmp_path, "merged", LLAMA_7B)
    spec = ServeSpec(model_dir=str(model), served_name="support-bot", gpu="A10G 24GB")
    with FakeEngine(offline=True) as engine:
        monkeypatch.setenv("DOCKER_HOST", engine.address)
        with pytest.raises(LaunchError) as err:
            docker_sdk.launch_container(spec, "tgi")
    msg = str(err.value)
    assert "\n" not in msg and "500 Server Error" not in msg and "http+docker" not in msg
    assert msg.startswith(f"the image {containers.TGI_IMAGE} could not be pulled from ghcr.io: "
                          "ghcr.io cannot be resolved")
    tar = "text-generation-inference-3.3.7.tar"
    assert f"docker save {containers.TGI_IMAGE} -o {tar}" in msg and f"docker load -i {tar}" in msg
    assert not any(c.startswith("POST /containers") for c in engine.calls)  # nothing started
    assert docker_sdk.image_registry("vllm/vllm-openai:v0.31.0") == "docker.io"
    denied = docker_sdk.pull_failure(containers.TGI_IMAGE, "unauthorized: authentication required")
    assert "refused access (docker login ghcr.io" in denied


def test_an_engine_that_can_pull_reports_the_pull_then_starts_the_container(tmp_path, monkeypatch):
    from tests.fake_docker import FakeEngine

    model = _model(tmp_path, "merged", LLAMA_7B)
    spec = ServeSpec(model_dir=str(model), served_name="support-bot", gpu="A10G 24GB", port=8099)
    lines = []
    with FakeEngine(pull_s=1.5) as engine:
        monkeypatch.setenv("DOCKER_HOST", engine.address)
        out = docker_sdk.launch_container(spec, "tgi", on_progress=lines.append)
        assert engine.containers[out["container_id"]]["status"] == "running"
        assert out["url"] == "http://127.0.0.1:8099/v1"
        assert docker_sdk.container_status(out["container_id"]) == "running"
        # pulled once: a second launch finds the image and pulls nothing
        calls = len([c for c in engine.calls if c == "POST /images/create"])
        docker_sdk.stop_container(out["container_id"])
        other = ServeSpec(model_dir=str(model), served_name="other", gpu="A10G 24GB", port=8098)
        docker_sdk.launch_container(other, "tgi")
        assert calls == 1 and len([c for c in engine.calls if c == "POST /images/create"]) == 1
    assert lines[0] == f"pulling {containers.TGI_IMAGE} from ghcr.io: asking the registry"
    middle = [ln for ln in lines if " MB of 1.2 GB (" in ln or " GB of 1.2 GB (" in ln]
    assert middle and any("%" in ln and "of 3 layers done" in ln for ln in middle)
    assert lines[-1] == f"pulled {containers.TGI_IMAGE} (1.2 GB)"


def test_a_deployment_row_shows_the_pull_and_a_failed_one_claims_no_url(workspace, default_model_dir, monkeypatch):
    from core.deploy import deployment_rows
    from core.deploy import deployments as D
    from tests.conftest import wait_until
    from tests.fake_docker import FakeEngine
    from ui.deploy import deployment_details, deployments_frame

    with FakeEngine(offline=True) as engine:
        monkeypatch.setenv("DOCKER_HOST", engine.address)
        failed = D.deploy_container("default", "tgi", gpu="a10g", port=8097)["deployment"]
    assert failed["status"] == "failed" and failed["url"] == "" and failed["container_id"] is None
    assert failed["error"].startswith(f"the image {containers.TGI_IMAGE} could not be pulled from ghcr.io")
    row = deployments_frame().set_index("id").loc[failed["id"]]
    assert row["status"] == "failed" and row["url"] == ""
    text, curl, py, oai = deployment_details(str(failed["id"]))
    assert "could not be pulled" in text and "http://" not in text and curl == py == oai == ""

    with FakeEngine(pull_s=3) as engine:
        monkeypatch.setenv("DOCKER_HOST", engine.address)
        dep = D.deploy_container("default", "tgi", gpu="a10g", port=8096, wait=False)["deployment"]
        assert dep["status"] == "starting" and dep["url"] == ""  # pulling: nothing answers yet
        shown = wait_until(lambda: " %), " in (t := deployment_details(str(dep["id"]))[0]) and t, 30, poll_s=0.2)
        assert f"pulling {containers.TGI_IMAGE} from ghcr.io: " in shown and "layers done" in shown
        started = wait_until(lambda: D.peek(dep["id"]).container_id and D.peek(dep["id"]), 30, poll_s=0.2)
        assert started.status == "starting" and started.url == "http://127.0.0.1:8096/v1"  # until /health answers
        assert "container started; waiting for /health" in deployment_rows.log_tail(started).replace(
            f"container {started.container_id[:12]} started", "container started")
        assert D.stop(dep["id"]).status == "stopped"
        # stopped, then removed (its output kept in the row's log first)
        assert engine.removed[started.container_id]["status"] == "exited"
        assert started.container_id not in engine.containers


# ---- command text, tokens, cloud settings ------------------------------------------------------------------------

def test_command_text_round_trips_and_no_token_value_leaks(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    base = _model(tmp_path, "base dir with spaces", LLAMA_7B)
    adapter = _adapter(tmp_path, "it's-an-adapter", 16)
    spec = ServeSpec(model_dir=str(base), served_name="bot", gpu="A10G 24GB", hf_token_env=True,
                     lora_adapters=(("bot", str(adapter)),))
    for args in (containers.tgi_docker_args(spec), containers.vllm_docker_args(spec)):
        text = containers.docker_command_text(args)
        assert shlex.split(text) == args
        assert args[args.index("-e") + 1] == "HF_TOKEN"
        assert "hf_secret" not in text and all("hf_secret" not in a for a in args)
    for target in clouds.CLOUD_TARGETS:
        text = clouds.cloud_settings(spec, target)
        assert "hf_secret" not in text and "HF_TOKEN" in text


def test_cloud_settings_name_the_verified_images_and_env(tmp_path):
    model = _model(tmp_path, "merged", LLAMA_7B)
    spec = ServeSpec(model_dir=str(model), served_name="support-bot", gpu="A10G 24GB")
    limits = ['"MAX_INPUT_TOKENS": "3072"', '"MAX_TOTAL_TOKENS": "4096"', '"MAX_BATCH_PREFILL_TOKENS": "3122"']

    hf = clouds.cloud_settings(spec, "hf_endpoints")
    assert containers.TGI_IMAGE in hf and '"healthRoute": "/health"' in hf and '"port": 80' in hf
    assert "MODEL_ID=/repository" in hf and '"MODEL_ID": "/repository"' in hf and "MAX_TOTAL_TOKENS=4096" in hf
    assert 'instance_type="nvidia-a10g"' in hf and "create_inference_endpoint(" in hf
    assert all(x in hf for x in limits)

    sm = clouds.cloud_settings(spec, "sagemaker")
    assert 'get_huggingface_llm_image_uri("huggingface", version="3.3.6")' in sm
    assert '"HF_MODEL_ID": "/opt/ml/model"' in sm and '"SM_NUM_GPUS": "1"' in sm
    assert 'instance_type="ml.g5.xlarge"' in sm and all(x in sm for x in limits)

    vx = clouds.cloud_settings(spec, "vertex")
    assert clouds.VERTEX_TGI_IMAGE in vx and "aiplatform.Model.upload(" in vx
    assert "serving_container_image_uri=" in vx and "serving_container_environment_variables=" in vx
    assert '"MESSAGES_API_ENABLED": "true"' in vx and '"NUM_SHARD": "1"' in vx
    assert 'accelerator_type="NVIDIA_L4"' in vx and all(x in vx for x in limits)  # no A10G on Google Cloud

    four = ServeSpec(model_dir=str(model), served_name="support-bot", gpu="L4", quantize_4bit=True)
    assert '"HF_MODEL_QUANTIZE": "bitsandbytes-nf4"' in clouds.cloud_settings(four, "sagemaker")
    assert '"QUANTIZE": "bitsandbytes-nf4"' in clouds.cloud_settings(four, "vertex")
    for target in clouds.CLOUD_TARGETS:  # every snippet is valid Python
        compile(clouds.cloud_settings(spec, target), target, "exec")
        compile(clouds.cloud_settings(four, target), target, "exec")
    with pytest.raises(LaunchError, match="cloud target must be one of"):
        clouds.cloud_settings(spec, "azure")


def test_the_gpu_plans_differ_from_the_container_plan_only_in_image_args_and_gpu_flags(tmp_path):
    """TGI, vLLM and the studio's own image (``container``) go through one plan → docker run / SDK path: the same
    network (host; the server binds 127.0.0.1:PORT), read-only mounts, limits, labels and environment."""
    from dataclasses import asdict

    model = _model(tmp_path, "merged", LLAMA_7B)
    spec = ServeSpec(model_dir=str(model), served_name="bot", port=8795, max_input_tokens=1000,
                     max_total_tokens=2000, memory_gb=6, cpus=2, hf_token_env=True)
    studio = containers.studio_plan(spec)
    shared = {k: v for k, v in asdict(studio).items()
              if k not in ("engine", "name", "image", "server_args", "gpu", "ipc_host")}
    assert shared == {"port": 8795, "mounts": ((str(model), "/data/model"),), "env_names": ("HF_TOKEN",),
                      "memory_bytes": 6 * 2**30, "nano_cpus": 2 * 10**9, "labels": containers.studio_labels()}
    for plan in (containers.tgi_plan(spec), containers.vllm_plan(spec)):
        assert {k: v for k, v in asdict(plan).items() if k in shared} == shared
        assert plan.image != studio.image and plan.gpu and not studio.gpu
        assert plan.name == studio.name.replace("container", plan.engine)  # fts-<engine>-<name>-<port>
    # each server binds the plan's port on loopback itself (host network: nothing is published)
    assert studio.server_args[-6:] == ("--host", "127.0.0.1", "--port", "8795", "--device", "cpu")
    tgi, vllm = containers.tgi_plan(spec).server_args, containers.vllm_plan(spec).server_args
    assert tgi[tgi.index("--hostname") + 1] == "127.0.0.1" and tgi[tgi.index("--port") + 1] == "8795"
    assert vllm[vllm.index("--host") + 1] == "127.0.0.1" and vllm[vllm.index("--port") + 1] == "8795"
    # the docker run lists: the same flags apart from --gpus/--shm-size/--ipc, the image and the server's args
    run = containers.docker_run_args(studio)
    assert run[:4] == ["docker", "run", "-d", "--network"] and "--gpus" not in run and "-p" not in run
    gpu_run = containers.tgi_docker_args(spec)
    assert gpu_run[gpu_run.index("--memory"):gpu_run.index("--name")] == run[run.index("--memory"):run.index("--name")]
    # what the container target refuses, worded
    with pytest.raises(LaunchError, match="needs a GPU"):
        containers.studio_plan(ServeSpec(model_dir=str(model), served_name="m", quantize_4bit=True))
    with pytest.raises(LaunchError, match="memory_gb 0.5 is too little"):
        containers.studio_plan(ServeSpec(model_dir=str(model), served_name="m", memory_gb=0.5))
    # the memory limit sized from the weights: twice them plus 2 GB
    (model / "model.safetensors").write_bytes(b"\0" * (3 * 2**20))
    assert containers.resource_limits(ServeSpec(model_dir=str(model), served_name="m"))[0] == 2**31 + 6 * 2**20
