"""Settings for three managed clouds (Hugging Face Inference Endpoints, SageMaker, Vertex AI), each running TGI:
text only, no cloud calls. The limits are sized like the ``docker run`` plans (core.deploy.containers).

What was checked, and where:

* Clouds: huggingface_hub 2.4.0 ``HfApi.create_inference_endpoint`` (custom image ``{"url", "port", "healthRoute"}``,
  ``env`` with ``MODEL_ID=/repository``; Inference Endpoints mount the repository at ``/repository``); sagemaker
  2.257.7 ``image_uri_config/huggingface-llm.json`` (newest TGI DLC version ``3.3.6``) and TGI's
  ``sagemaker-entrypoint.sh`` (``HF_MODEL_ID`` → ``MODEL_ID``, ``SM_NUM_GPUS`` → ``NUM_SHARD``, ``HF_MODEL_QUANTIZE``
  → ``QUANTIZE``, other launcher env such as ``MAX_INPUT_TOKENS`` pass through; SageMaker puts model data under
  ``/opt/ml/model``); github.com/huggingface/Google-Cloud-Containers (TGI DLC entrypoint downloads
  ``AIP_STORAGE_URI`` and sets ``MODEL_ID``; ``aiplatform.Model.upload(artifact_uri=..., serving_container_image_uri=
  ..., serving_container_environment_variables=..., serving_container_ports=[8080])``; ``MESSAGES_API_ENABLED=true``
  for the Messages API).

A token value never appears in the settings text: it is only ever referred to by name.
"""
from __future__ import annotations

import json
import re
import shlex

from core.deploy.containers import (
    PREFILL_HEADROOM,
    TGI_CONTAINER_PORT,
    TGI_IMAGE,
    ServeSpec,
    check_spec,
    host_path,
    token_limits,
)
from core.estimate.serving import (
    LaunchError,
    ServingSizer,
    context_length,
    find_gpu,
    model_spec,
    read_model_config,
    serve_dtype,
)

# The newest Hugging Face LLM (TGI) DLC version the SageMaker SDK knows (sagemaker 2.257.7: "3.3" -> "3.3.6").
SAGEMAKER_TGI_VERSION = "3.3.6"
# The newest Hugging Face TGI DLC for Vertex AI found published (TGI 3.0.1).
VERTEX_TGI_IMAGE = ("us-docker.pkg.dev/deeplearning-platform-release/gcr.io/"
                    "huggingface-text-generation-inference-cu124.3-0.ubuntu2204.py311")

CLOUD_TARGETS = ("hf_endpoints", "sagemaker", "vertex")

# Cloud instance suggestions per catalog GPU (core.estimate.gpus keys). Seen in the docs above: ml.g5.xlarge,
# nvidia-a10g / nvidia-l4 (HF endpoints), g2-standard-4 + NVIDIA_L4 (Vertex). The rest follow each cloud's naming;
# check availability and quota before deploying.
_HF_INSTANCE = {"t4": "nvidia-t4", "l4": "nvidia-l4", "a10g": "nvidia-a10g", "a100-80": "nvidia-a100",
                "h100": "nvidia-h100"}
_SAGEMAKER_INSTANCE = {
    "t4": {1: "ml.g4dn.xlarge", 4: "ml.g4dn.12xlarge"},
    "l4": {1: "ml.g6.xlarge", 4: "ml.g6.12xlarge", 8: "ml.g6.48xlarge"},
    "a10g": {1: "ml.g5.xlarge", 4: "ml.g5.12xlarge", 8: "ml.g5.48xlarge"},
    "a100-40": {8: "ml.p4d.24xlarge"}, "a100-80": {8: "ml.p4de.24xlarge"}, "h100": {8: "ml.p5.48xlarge"},
}
_VERTEX_MACHINE = {
    "t4": ("NVIDIA_TESLA_T4", {1: "n1-standard-8", 2: "n1-standard-16", 4: "n1-standard-32"}),
    "l4": ("NVIDIA_L4", {1: "g2-standard-4", 2: "g2-standard-24", 4: "g2-standard-48", 8: "g2-standard-96"}),
    "a100-40": ("NVIDIA_TESLA_A100", {1: "a2-highgpu-1g", 2: "a2-highgpu-2g", 4: "a2-highgpu-4g",
                                      8: "a2-highgpu-8g"}),
    "a100-80": ("NVIDIA_A100_80GB", {1: "a2-ultragpu-1g", 2: "a2-ultragpu-2g", 4: "a2-ultragpu-4g",
                                     8: "a2-ultragpu-8g"}),
    "h100": ("NVIDIA_H100_80GB", {8: "a3-highgpu-8g"}),
}


def _cloud_limits(spec: ServeSpec) -> tuple[int, int, dict | None, object | None]:
    check_spec(spec)
    cfg = read_model_config(spec.model_dir)
    card = find_gpu(spec.gpu) if spec.gpu else None
    inp, tot = token_limits(spec, cfg)
    return inp, tot, cfg, card


def _suggest_gpu(spec: ServeSpec):
    """The GPU to suggest: the spec's, else the smallest single catalog GPU the model fits on (None if unknown)."""
    if spec.gpu:
        return find_gpu(spec.gpu)
    from core.estimate.gpus import GPUS

    try:
        model, cfg = model_spec(spec.model_dir)
    except LaunchError:
        return None
    sizer = ServingSizer(model, serve_dtype(cfg, None), spec.quantize_4bit)
    context = context_length(model)
    for g in sorted((g for g in GPUS if g.count == 1), key=lambda g: g.usable_bytes):
        if sizer.fits(g, spec.num_gpus, context):
            return g
    return None


def _pick(table: dict[int, str], n: int) -> str | None:
    return next((table[k] for k in sorted(table) if k >= n), None)


def _tgi_env(spec: ServeSpec, inp: int, tot: int, cfg: dict | None, card, hub_adapters: bool) -> dict[str, str]:
    env = {"MAX_INPUT_TOKENS": str(inp), "MAX_TOTAL_TOKENS": str(tot),
           "MAX_BATCH_PREFILL_TOKENS": str(min(inp + PREFILL_HEADROOM, tot))}
    if spec.quantize_4bit:
        env["QUANTIZE"] = "bitsandbytes-nf4"
    else:
        env["DTYPE"] = serve_dtype(cfg, card)
    if spec.lora_adapters and hub_adapters:
        env["LORA_ADAPTERS"] = ",".join(f"<hub-namespace>/{n}" for n, _ in spec.lora_adapters)
    return env


def _py_dict(d: dict[str, str], indent: str, extra: tuple[str, ...] = ()) -> str:
    lines = [f"{indent}    {json.dumps(k)}: {json.dumps(v)}," for k, v in d.items()]
    lines += [f"{indent}    {x}," for x in extra]
    return "{\n" + "\n".join(lines) + f"\n{indent}}}"


def _adapter_lines(spec: ServeSpec) -> list[str]:
    if not spec.lora_adapters:
        return []
    lines = ["# LoRA adapters: TGI downloads the LORA_ADAPTERS from the Hub at start; push each adapter folder first:"]
    lines += [f"#   hf upload <hub-namespace>/{n} {shlex.quote(host_path(f))} ." for n, f in spec.lora_adapters]
    lines += ["# Clients pick one by sending model=\"<hub-namespace>/<adapter>\"; any other name gets the base model."]
    return lines


def _hf_endpoints_text(spec: ServeSpec) -> str:
    inp, tot, cfg, card = _cloud_limits(spec)
    gpu = card or _suggest_gpu(spec)
    instance = _HF_INSTANCE.get(gpu.key) if gpu else None
    size = {1: "x1", 2: "x2", 4: "x4", 8: "x8"}.get(spec.num_gpus, f"x{spec.num_gpus}")
    env = {"MODEL_ID": "/repository", **_tgi_env(spec, inp, tot, cfg, gpu, True),
           "NUM_SHARD": str(spec.num_gpus)}
    repo = f"<hub-namespace>/{spec.served_name}"
    lines = [
        "# Hugging Face Inference Endpoints: custom container running TGI (settings only; nothing was created).",
        f"# 1. Push the merged model folder to a private Hub repo:  hf upload {repo} "
        f"{shlex.quote(host_path(spec.model_dir))} .",
        "# 2. New endpoint from that repo -> Container type: Custom ->",
        f"#      image: {TGI_IMAGE}",
        f"#      port: {TGI_CONTAINER_PORT}    health route: /health",
        f"#      instance: {instance or '<a GPU instance>'} {size}"
        + (f" ({spec.num_gpus} × {gpu.name})" if gpu else "")
        + "  (check HfApi().list_inference_endpoints_hardware() for what your namespace offers)",
        "#      environment variables:",
        *[f"#        {k}={v}" for k, v in env.items()],
    ]
    if spec.hf_token_env:
        lines.append("#      secret: HF_TOKEN (add it under Secrets in the endpoint form; never as a plain env var)")
    lines += _adapter_lines(spec)
    lines += [
        "# The same with huggingface_hub (>= 2.4):",
        "from huggingface_hub import HfApi",
        "",
        "endpoint = HfApi().create_inference_endpoint(",
        f"    {json.dumps(re.sub(r'[^a-z0-9-]+', '-', spec.served_name.lower()).strip('-')[:32] or 'tgi-endpoint')},",
        f"    repository={json.dumps(repo)},",
        '    framework="pytorch",',
        '    task="text-generation",',
        '    accelerator="gpu",',
        '    vendor="aws",',
        '    region="us-east-1",',
        '    type="protected",',
        f"    instance_size={json.dumps(size)},",
        f"    instance_type={json.dumps(instance or '<instance-type>')},",
        f'    custom_image={{"url": {json.dumps(TGI_IMAGE)}, "port": {TGI_CONTAINER_PORT}, "healthRoute": "/health"}},',
        f"    env={_py_dict(env, '    ')},",
    ]
    if spec.hf_token_env:
        lines.append('    secrets={"HF_TOKEN": os.environ["HF_TOKEN"]},  # read here by name, never written down')
    lines += [")", "endpoint.wait()",
              'print(endpoint.url + "/v1/chat/completions")  # the OpenAI Messages API']
    if spec.hf_token_env:
        lines.insert(lines.index("from huggingface_hub import HfApi"), "import os")
    return "\n".join(lines) + "\n"


def _sagemaker_text(spec: ServeSpec) -> str:
    inp, tot, cfg, card = _cloud_limits(spec)
    gpu = card or _suggest_gpu(spec)
    if gpu is not None and gpu.count > 1 and gpu.instance:
        instance = "ml." + gpu.instance
    else:
        instance = _pick(_SAGEMAKER_INSTANCE.get(gpu.key, {}), spec.num_gpus) if gpu else None
    env = {"HF_MODEL_ID": "/opt/ml/model", "SM_NUM_GPUS": str(spec.num_gpus),
           **_tgi_env(spec, inp, tot, cfg, gpu, True)}
    if "QUANTIZE" in env:  # the SageMaker entrypoint maps HF_MODEL_QUANTIZE to QUANTIZE
        env["HF_MODEL_QUANTIZE"] = env.pop("QUANTIZE")
    extra = ('"HF_TOKEN": os.environ["HF_TOKEN"]',) if spec.hf_token_env else ()
    s3 = f"s3://<bucket>/{spec.served_name}/"
    lines = [
        f"# Amazon SageMaker: Hugging Face LLM DLC (TGI {SAGEMAKER_TGI_VERSION}) (a snippet; nothing was created).",
        '# pip install "sagemaker>=2.257,<3"',
        f"# 1. Upload the merged model folder uncompressed:  aws s3 sync "
        f"{shlex.quote(host_path(spec.model_dir))} {s3}",
        *_adapter_lines(spec),
    ]
    if spec.hf_token_env:
        lines.append("import os")
        lines.append("")
    lines += [
        "import sagemaker",
        "from sagemaker.huggingface import HuggingFaceModel, get_huggingface_llm_image_uri",
        "",
        "role = sagemaker.get_execution_role()  # or the ARN of a role with SageMaker and S3 access",
        f'image_uri = get_huggingface_llm_image_uri("huggingface", version={json.dumps(SAGEMAKER_TGI_VERSION)})',
        "model = HuggingFaceModel(",
        "    role=role,",
        "    image_uri=image_uri,",
        f'    model_data={{"S3DataSource": {{"S3Uri": {json.dumps(s3)}, "S3DataType": "S3Prefix", '
        '"CompressionType": "None"}},',
        f"    env={_py_dict(env, '    ', extra)},",
        ")",
        "predictor = model.deploy(",
        "    initial_instance_count=1,",
        f"    instance_type={json.dumps(instance or '<ml.instance-type>')},"
        + (f"  # {spec.num_gpus} × {gpu.name}; check your quota" if gpu else ""),
        "    container_startup_health_check_timeout=900,",
        ")",
        '# TGI answers chat requests on /invocations: predictor.predict({"messages": [...], "max_tokens": 256})',
    ]
    return "\n".join(lines) + "\n"


def _vertex_text(spec: ServeSpec) -> str:
    inp, tot, cfg, card = _cloud_limits(spec)
    gpu = card or _suggest_gpu(spec)
    key = gpu.key if gpu is not None else ""
    if key == "a10g":  # no A10G on Google Cloud: the L4 has the same 24 GB
        key = "l4"
    accel, machines = _VERTEX_MACHINE.get(key, (None, {}))
    machine = _pick(machines, spec.num_gpus)
    env = {"NUM_SHARD": str(spec.num_gpus), **_tgi_env(spec, inp, tot, cfg, gpu, True),
           "MESSAGES_API_ENABLED": "true"}
    extra = ('"HF_TOKEN": os.environ["HF_TOKEN"]',) if spec.hf_token_env else ()
    gs = f"gs://<bucket>/{spec.served_name}"
    lines = [
        "# Google Cloud Vertex AI: Hugging Face TGI DLC (TGI 3.0.1) (a snippet; nothing was created).",
        "# pip install google-cloud-aiplatform",
        f"# 1. Upload the merged model folder:  gcloud storage cp --recursive "
        f"{shlex.quote(host_path(spec.model_dir) + '/*')} {gs}/",
        "#    (the container downloads artifact_uri into /tmp/model and serves it: MODEL_ID is set for you)",
        *_adapter_lines(spec),
    ]
    if spec.hf_token_env:
        lines.append("import os")
        lines.append("")
    lines += [
        "from google.cloud import aiplatform",
        "",
        'aiplatform.init(project="<project-id>", location="us-central1")',
        "model = aiplatform.Model.upload(",
        f"    display_name={json.dumps(spec.served_name)},",
        f"    artifact_uri={json.dumps(gs)},",
        f"    serving_container_image_uri={json.dumps(VERTEX_TGI_IMAGE)},",
        f"    serving_container_environment_variables={_py_dict(env, '    ', extra)},",
        "    serving_container_ports=[8080],",
        ")",
        "model.wait()",
        "endpoint = model.deploy(",
        f"    machine_type={json.dumps(machine or '<machine-type>')},",
        f"    accelerator_type={json.dumps(accel or '<ACCELERATOR_TYPE>')},",
        f"    accelerator_count={spec.num_gpus},"
        + ("  # check your GPU quota in the region" if accel else ""),
        ")",
    ]
    return "\n".join(lines) + "\n"


def cloud_settings(spec: ServeSpec, target: str) -> str:
    """Settings text for a managed cloud (``hf_endpoints`` | ``sagemaker`` | ``vertex``), each TGI-based: the image,
    the launcher environment (limits sized like :func:`tgi_docker_args`), an instance suggestion and a Python snippet
    that is valid Python. Nothing is sent anywhere; a token is only ever referred to by name."""
    builders = {"hf_endpoints": _hf_endpoints_text, "sagemaker": _sagemaker_text, "vertex": _vertex_text}
    if target not in builders:
        raise LaunchError(f"cloud target must be one of {', '.join(CLOUD_TARGETS)} (got {target!r})")
    return builders[target](spec)
