"""TGI / vLLM container plans: a :class:`ServeSpec` (a merged model folder, or a base model + LoRA adapters, on a GPU
host) turned into the exact ``docker run`` argument list for each engine (a list, never a shell string). Both engines
answer the OpenAI Messages API (``/v1/chat/completions``). The token limits come from core.estimate.serving.

What was checked, and where (so the flags below are not guesses):

* TGI 3.3.7 (tag ``v3.3.7`` of github.com/huggingface/text-generation-inference): ``launcher/src/main.rs`` and
  ``docs/source/reference/launcher.md`` define ``--model-id``, ``--max-input-tokens``, ``--max-total-tokens``,
  ``--max-batch-prefill-tokens``, ``--num-shard``, ``--dtype {float16,bfloat16}`` ("cannot be used with
  --quantize"), ``--quantize bitsandbytes-nf4`` and ``--lora-adapters`` (env ``LORA_ADAPTERS``, comma-separated,
  ``name=/local/path`` for a local adapter: ``server/text_generation_server/utils/adapter.py``); the launcher refuses
  ``max_input_tokens >= max_total_tokens``, and the v3 router refuses ``max_batch_prefill_tokens < max_input_tokens``
  unless chunking is supported (``backends/v3/src/main.rs``). The image sets ``PORT=80`` (``Dockerfile``); the
  README runs it with ``--gpus all --shm-size 1g -p 8080:80``. For chat requests TGI uses the ``model`` field as
  the adapter id unless it is ``"tgi"``, and an unknown id falls back to the base model (``router/src/server.rs``,
  ``flash_causal_lm.py``: ``ADAPTER_TO_INDEX.get(adapter_id, 0)``) — so TGI answers any model name.
* vLLM (github.com/vllm-project/vllm): the ``vllm/vllm-openai`` image's entrypoint is ``vllm serve`` (``docker/
  Dockerfile``) and the model is its positional argument — ``--model`` still parses but logs "the --model option will
  be removed in a future version" (``vllm/utils/argparse_utils.py``), so it is not used here. ``--lora-modules``
  takes ``name=path`` items after one flag (``vllm/entrypoints/openai/cli_args.py``); ``--max-lora-rank`` must be one
  of 1, 8, 16, 32, 64, 128, 256, 320, 512 and ``--max-loras`` defaults to 1 (``vllm/config/lora.py``); the API port
  is 8000; ``docs/deployment/docker.md`` runs the image with ``--ipc=host`` (or ``--shm-size``). Since v0.28.0
  bitsandbytes lives in the out-of-tree ``vllm-bnb-plugin`` (vllm PR #43529), which the stock image does not ship.

A token value never appears in an argument list: ``-e HF_TOKEN`` passes it by name.

Every target — TGI, vLLM and ``container`` (the studio's own image running its local server, the same
OpenAI-compatible server as the ``local`` target, on a host without a GPU) — has one plan shape: the host's network
(``--network host``: no bridge, no published port; the server binds ``127.0.0.1:PORT`` itself — TGI ``--hostname``
/ ``--port``, vLLM ``--host`` / ``--port``, the studio's server ``--host`` / ``--port``), the model (and adapters)
mounted read-only, memory and CPU limits, the studio's labels (to find its containers again, orphans included). The
plans differ only in the image, the server's arguments and the GPU flags (``--gpus all`` and TGI's ``--shm-size``
/ vLLM's ``--ipc host`` for their GPU workers' shared memory).
"""
from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass

from core.estimate.serving import (
    GPU_MEMORY_UTILIZATION,
    LaunchError,
    find_gpu,
    limits_for,
    read_model_config,
    serve_dtype,
    size_for_gpu,
)
from core.models import adapter_rank

TGI_IMAGE = "ghcr.io/huggingface/text-generation-inference:3.3.7"
# vLLM 0.31.0 (released 2026-10-05): the newest release whose image tag is widely confirmed in public deployments;
# PyPI lists later versions, but their image tags could not be confirmed here. The default tag is built for CUDA 13
# (NVIDIA driver >= 580); hosts with older drivers need the ``-cu129`` variant (some report it broken at import).
VLLM_IMAGE = "vllm/vllm-openai:v0.31.0"

# the studio's own image (Dockerfile; `make image`): the ``container`` target runs its local server
STUDIO_IMAGE = os.environ.get("FTS_STUDIO_IMAGE") or "finetune-studio:latest"
STUDIO_SERVER = (".venv/bin/python", "-m", "core.deploy.local_server")
STUDIO_UID = 1000  # the image's user (Dockerfile)

TARGETS = ("tgi", "vllm", "container")
LABEL_MANAGED = "fts.managed"  # = "finetune-studio" on every container the studio starts
LABEL_WORKSPACE = "fts.workspace"  # the workspace whose deployment it is
LABEL_DEPLOYMENT = "fts.deployment"  # the deployment row's id (set at launch)
MIN_MEMORY_GB = 2.0
CONTAINER_MODEL_DIR = "/data/model"
CONTAINER_LORA_DIR = "/data/lora"
# the images' own ports (cloud endpoints publish these); here the server binds the plan's port on the host's network
TGI_CONTAINER_PORT = 80
VLLM_CONTAINER_PORT = 8000
PREFILL_HEADROOM = 50  # TGI's documented default: max_batch_prefill_tokens = max_input_tokens + 50
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class ServeSpec:
    """What to serve and where: one merged model folder (or a base model plus LoRA adapter folders) on a GPU host."""

    model_dir: str  # host folder holding the merged model (or the base model when serving adapters)
    served_name: str  # the model name clients send (vLLM --served-model-name; TGI answers any)
    port: int = 8080  # host port
    gpu: str | None = None  # a GPU of the Estimate tab's catalog ("A10G 24GB", "L4", "A100 80GB", a key like "a10g")
    num_gpus: int = 1
    max_input_tokens: int | None = None  # None: sized from the estimate (see size_for_gpu)
    max_total_tokens: int | None = None
    quantize_4bit: bool = False  # TGI --quantize bitsandbytes-nf4; vLLM --quantization bitsandbytes (see below)
    lora_adapters: tuple[tuple[str, str], ...] = ()  # (name, host adapter folder) for multi-LoRA serving
    hf_token_env: bool = False  # pass HF_TOKEN from the host env by NAME only (never its value)
    memory_gb: float | None = None  # the container's memory limit; None: sized from the weights (resource_limits)
    cpus: float | None = None  # CPUs it may use; None: all of this machine's


@dataclass(frozen=True)
class ContainerPlan:
    """One container, engine-neutral: what both the ``docker run`` list and the SDK call are built from. On the host's
    network: the server binds ``127.0.0.1:port`` itself (its arguments say so)."""

    engine: str
    image: str
    name: str
    port: int  # where the server answers, on 127.0.0.1 (host network)
    mounts: tuple[tuple[str, str], ...]  # (host folder, container folder), read-only
    env_names: tuple[str, ...]  # passed by name from the host environment
    server_args: tuple[str, ...]
    memory_bytes: int  # --memory
    nano_cpus: int  # --cpus × 1e9
    labels: tuple[tuple[str, str], ...]
    gpu: bool = True  # --gpus all (+ the shared memory its GPU workers use)
    ipc_host: bool = False  # vLLM: --ipc host; TGI: --shm-size 1g


def check_spec(spec: ServeSpec) -> None:
    if not isinstance(spec.model_dir, str) or not spec.model_dir.strip():
        raise LaunchError("model_dir is empty: choose the merged model folder (or the base model folder)")
    if not spec.served_name or any(c.isspace() for c in spec.served_name) or len(spec.served_name) > 200:
        raise LaunchError(f"served name {spec.served_name!r} must be a non-empty name without spaces (clients send it "
                          "as the OpenAI 'model' field)")
    if not isinstance(spec.port, int) or not 1 <= spec.port <= 65535:
        raise LaunchError(f"port must be a whole number between 1 and 65535 (got {spec.port!r})")
    for label, value in (("memory_gb", spec.memory_gb), ("cpus", spec.cpus)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float) or not value > 0):
            raise LaunchError(f"{label} must be a number above 0 (got {value!r})")
    if spec.memory_gb is not None and spec.memory_gb < MIN_MEMORY_GB:
        raise LaunchError(f"memory_gb {spec.memory_gb:g} is too little to load a model server: give at least "
                          f"{MIN_MEMORY_GB:g}")
    if not isinstance(spec.num_gpus, int) or spec.num_gpus < 1:
        raise LaunchError(f"num_gpus must be a whole number of at least 1 (got {spec.num_gpus!r})")
    seen: set[str] = set()
    for item in spec.lora_adapters:
        if not (isinstance(item, tuple | list) and len(item) == 2):
            raise LaunchError(f"each LoRA adapter is a (name, folder) pair (got {item!r})")
        name, folder = item
        if not isinstance(name, str) or not _NAME.match(name):
            raise LaunchError(f"LoRA adapter name {name!r} must start with a letter or digit and use only letters, "
                              "digits, '.', '_' and '-' (it becomes a path and the 'model' clients send)")
        if name in seen:
            raise LaunchError(f"two LoRA adapters are named '{name}': give each a distinct name")
        seen.add(name)
        if not isinstance(folder, str) or not folder.strip():
            raise LaunchError(f"LoRA adapter '{name}' has no folder")
    for folder in [spec.model_dir] + [f for _, f in spec.lora_adapters]:
        if ":" in folder:
            raise LaunchError(f"folder {folder!r} contains ':', which docker -v cannot mount: move or rename it")


def host_path(folder: str) -> str:
    """Absolute, as ``docker -v`` needs (a relative name would be taken for a named volume)."""
    return os.path.abspath(os.path.expanduser(folder))


def token_limits(spec: ServeSpec, cfg: dict | None) -> tuple[int, int]:
    """(max_input_tokens, max_total_tokens): the spec's, else sized from the estimate; checked against each other and
    against the model's context length."""
    inp, tot = spec.max_input_tokens, spec.max_total_tokens
    for label, value in (("max_input_tokens", inp), ("max_total_tokens", tot)):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise LaunchError(f"{label} must be a whole number of at least 1 (got {value!r})")
    if inp is None or tot is None:
        sized = size_for_gpu(spec.model_dir, spec.gpu, spec.num_gpus, spec.quantize_4bit)
        if tot is None:
            tot = sized["max_total_tokens"]
        if inp is None:
            inp = limits_for(tot)[0]
    if inp >= tot:
        raise LaunchError(f"max_input_tokens ({inp}) must be smaller than max_total_tokens ({tot}): the difference is "
                          "what the model may generate")
    context = (cfg or {}).get("max_position_embeddings")
    if isinstance(context, int) and context > 0 and tot > context:
        raise LaunchError(f"max_total_tokens ({tot}) is longer than the model's context ({context} tokens, "
                          "max_position_embeddings): lower it")
    return inp, tot


def _check_heads(cfg: dict | None, n: int) -> None:
    heads = (cfg or {}).get("num_attention_heads")
    if n > 1 and isinstance(heads, int) and heads % n:
        raise LaunchError(f"the model has {heads} attention heads, which do not split over {n} GPUs (tensor "
                          f"parallelism): choose num_gpus among {[d for d in range(1, 9) if heads % d == 0]}")


def _container_name(engine: str, spec: ServeSpec) -> str:
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", spec.served_name).strip("-.")[:60] or "model"
    return f"fts-{engine}-{slug}-{spec.port}"


def weights_bytes(folder: str) -> int:
    """The model's weight files' size (safetensors / bin), 0 when none are found."""
    try:
        return sum(e.stat().st_size for e in os.scandir(host_path(folder))
                   if e.is_file() and e.name.endswith((".safetensors", ".bin")))
    except OSError:
        return 0


def unreadable_for(folder: str, uid: int) -> str | None:
    """The first thing in ``folder`` (itself, or a file in it) that user ``uid`` (not in its group) cannot read
    through a bind mount; None when all is readable, or the folder is not on this machine (another host's path)."""
    root = host_path(folder)
    try:
        st = os.stat(root)
    except OSError:
        return None
    if st.st_uid != uid and (st.st_mode & 0o005) != 0o005:
        return root
    try:
        entries = list(os.scandir(root))
    except OSError:
        return root
    for e in entries:
        try:
            est = e.stat()
        except OSError:
            continue
        if e.is_file() and est.st_uid != uid and not est.st_mode & 0o004:
            return e.path
    return None


def resource_limits(spec: ServeSpec) -> tuple[int, int]:
    """(memory bytes, nano-CPUs): the spec's, else memory sized from the weights (twice them, for loading, plus
    2 GB for the server and its libraries) and every CPU of this machine."""
    if spec.memory_gb is not None:
        memory = int(spec.memory_gb * 2**30)
    else:
        weights = weights_bytes(spec.model_dir) + sum(weights_bytes(f) for _, f in spec.lora_adapters)
        memory = max(int(MIN_MEMORY_GB * 2**30), 2 * weights + 2 * 2**30)
    cpus = spec.cpus if spec.cpus is not None else float(os.cpu_count() or 1)
    return -(-memory // 2**20) * 2**20, int(cpus * 1e9)  # whole MiB: what `docker run --memory Nm` says


def studio_labels() -> tuple[tuple[str, str], ...]:
    from core.config import get_settings

    return ((LABEL_MANAGED, "finetune-studio"), (LABEL_WORKSPACE, str(get_settings().workspace)))


def _plan(engine: str, image: str, spec: ServeSpec, args: list[str], *, gpu: bool = True,
          ipc_host: bool = False) -> ContainerPlan:
    memory, nano_cpus = resource_limits(spec)
    return ContainerPlan(engine, image, _container_name(engine, spec), spec.port, _mounts(spec),
                         ("HF_TOKEN",) if spec.hf_token_env else (), tuple(args), memory, nano_cpus,
                         studio_labels(), gpu=gpu, ipc_host=ipc_host)


def _mounts(spec: ServeSpec) -> tuple[tuple[str, str], ...]:
    return ((host_path(spec.model_dir), CONTAINER_MODEL_DIR),) + tuple(
        (host_path(folder), f"{CONTAINER_LORA_DIR}/{name}") for name, folder in spec.lora_adapters)


def tgi_plan(spec: ServeSpec) -> ContainerPlan:
    check_spec(spec)
    cfg = read_model_config(spec.model_dir)
    _check_heads(cfg, spec.num_gpus)
    inp, tot = token_limits(spec, cfg)
    card = find_gpu(spec.gpu) if spec.gpu else None
    args = ["--model-id", CONTAINER_MODEL_DIR, "--hostname", "127.0.0.1", "--port", str(spec.port),
            "--max-input-tokens", str(inp), "--max-total-tokens", str(tot),
            # the v3 router refuses a prefill budget below max_input_tokens (when it cannot chunk); TGI's docs give
            # max_input_tokens + 50 as the intended default
            "--max-batch-prefill-tokens", str(min(inp + PREFILL_HEADROOM, tot)),
            # explicit: without it TGI shards over every GPU it sees (--gpus all)
            "--num-shard", str(spec.num_gpus)]
    if spec.quantize_4bit:
        args += ["--quantize", "bitsandbytes-nf4"]  # --dtype cannot be combined with --quantize
    else:
        args += ["--dtype", serve_dtype(cfg, card)]
    if spec.lora_adapters:
        args += ["--lora-adapters", ",".join(f"{n}={CONTAINER_LORA_DIR}/{n}" for n, _ in spec.lora_adapters)]
    return _plan("tgi", TGI_IMAGE, spec, args)


def vllm_plan(spec: ServeSpec, image: str = VLLM_IMAGE) -> ContainerPlan:
    check_spec(spec)
    cfg = read_model_config(spec.model_dir)
    _check_heads(cfg, spec.num_gpus)
    if spec.quantize_4bit and image == VLLM_IMAGE:
        raise LaunchError(
            f"4-bit on the fly needs bitsandbytes, which vLLM moved into the separate vllm-bnb-plugin in v0.28; the "
            f"stock {VLLM_IMAGE} image does not ship it. Serve with TGI (quantize_4bit works there), or build an "
            f"image FROM {VLLM_IMAGE} with `pip install --no-deps vllm-bnb-plugin` and pass it as image=...")
    _inp, tot = token_limits(spec, cfg)
    card = find_gpu(spec.gpu) if spec.gpu else None
    args = [CONTAINER_MODEL_DIR,  # positional: `vllm serve <model>` (--model is deprecated there)
            "--served-model-name", spec.served_name, "--host", "127.0.0.1", "--port", str(spec.port),
            "--max-model-len", str(tot),
            "--gpu-memory-utilization", f"{GPU_MEMORY_UTILIZATION:.2f}",
            "--dtype", serve_dtype(cfg, card)]
    if spec.num_gpus > 1:
        args += ["--tensor-parallel-size", str(spec.num_gpus)]
    if spec.quantize_4bit:
        args += ["--quantization", "bitsandbytes"]
    if spec.lora_adapters:
        ranks = [r for r in (adapter_rank(f) for _, f in spec.lora_adapters) if r]
        args += ["--enable-lora", "--max-loras", str(len(spec.lora_adapters))]
        if ranks:
            rank = next((r for r in VLLM_LORA_RANKS if r >= max(ranks)), None)
            if rank is None:
                raise LaunchError(f"LoRA rank {max(ranks)} is above vLLM's largest --max-lora-rank (512)")
            args += ["--max-lora-rank", str(rank)]
        # recent vLLM looks a request's model up among the LoRA names before the base name, so an adapter named like
        # the served model answers that name
        args += ["--lora-modules", *(f"{n}={CONTAINER_LORA_DIR}/{n}" for n, _ in spec.lora_adapters)]
    return _plan("vllm", image, spec, args, ipc_host=True)


def studio_plan(spec: ServeSpec, image: str | None = None) -> ContainerPlan:
    """The ``container`` target: the studio's image running its local server (core.deploy.local_server, what the
    ``local`` target runs) on the merged model folder, on a CPU (no GPU flags). LoRA adapters are merged first."""
    check_spec(spec)
    if spec.lora_adapters:
        raise LaunchError("the studio's server serves one merged model: export the run (safetensors) and serve that "
                          "folder, or use TGI / vLLM for base + adapters")
    if spec.quantize_4bit:
        raise LaunchError("4-bit serving needs a GPU (bitsandbytes): the container target runs on the CPU")
    unreadable = unreadable_for(spec.model_dir, STUDIO_UID)
    if unreadable:
        raise LaunchError(f"the studio's image runs as uid {STUDIO_UID}, which cannot read {unreadable} (mounted "
                          f"read-only as it is): make the folder readable to others (chmod -R o+rX "
                          f"{host_path(spec.model_dir)})")
    args = [*STUDIO_SERVER, "--model", CONTAINER_MODEL_DIR, "--name", spec.served_name,
            "--host", "127.0.0.1", "--port", str(spec.port), "--device", "cpu"]
    return _plan("container", image or STUDIO_IMAGE, spec, args, gpu=False)


def plan_for(target: str, spec: ServeSpec, image: str | None = None) -> ContainerPlan:
    if target == "tgi":
        return tgi_plan(spec)
    if target == "vllm":
        return vllm_plan(spec, image or VLLM_IMAGE)
    if target == "container":
        return studio_plan(spec, image)
    raise LaunchError(f"target must be one of {', '.join(TARGETS)} (got {target!r})")


def docker_run_args(plan: ContainerPlan) -> list[str]:
    args = ["docker", "run", "-d", "--network", "host"]  # the server binds 127.0.0.1:PORT itself
    if plan.gpu:
        args += ["--gpus", "all"]
        args += ["--ipc", "host"] if plan.ipc_host else ["--shm-size", "1g"]
    args += ["--memory", f"{plan.memory_bytes // 2**20}m", "--cpus", f"{plan.nano_cpus / 1e9:g}"]
    for key, value in plan.labels:
        args += ["--label", f"{key}={value}"]
    for host, inside in plan.mounts:
        args += ["-v", f"{host}:{inside}:ro"]
    args += ["--name", plan.name]
    for name in plan.env_names:
        args += ["-e", name]  # by name: docker copies the value from the caller's environment
    return args + [plan.image, *plan.server_args]


def container_docker_args(spec: ServeSpec, image: str | None = None) -> list[str]:
    """The exact ``docker run`` list for the studio's image serving ``spec`` on the CPU."""
    return docker_run_args(studio_plan(spec, image))


def tgi_docker_args(spec: ServeSpec) -> list[str]:
    """The exact ``docker run`` list for TGI 3.3.7 serving ``spec`` (detached, all GPUs visible, ``--num-shard`` of
    them used, the model and each adapter mounted read-only)."""
    return docker_run_args(tgi_plan(spec))


def vllm_docker_args(spec: ServeSpec, image: str = VLLM_IMAGE) -> list[str]:
    """The exact ``docker run`` list for vLLM's OpenAI server serving ``spec``. ``image`` may name an image built on
    :data:`VLLM_IMAGE` with the vllm-bnb-plugin, which ``quantize_4bit`` needs."""
    return docker_run_args(vllm_plan(spec, image))


def docker_command_text(args: list[str]) -> str:
    """One copy-paste shell line for the page (``shlex.split`` of it gives ``args`` back)."""
    return shlex.join(args)
