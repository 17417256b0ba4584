"""Export a merged Llama-architecture Hugging Face model folder as one GGUF file, for llama.cpp and Ollama.

What is written follows llama.cpp's ``convert_hf_to_gguf.py`` for ``LlamaForCausalLM``:

* metadata: ``general.architecture = llama``, name, file type (F16 = 1, Q8_0 = 7), context/embedding/feed-forward
  length, block count, head counts (query and key/value), rope dimension count and base, RMS-norm epsilon, vocab
  size, and for Llama 3 style or linear rope scaling the same extra keys/tensor llama.cpp writes;
* tensors: renamed with ``gguf.get_tensor_name_map(MODEL_ARCH.LLAMA, n_blocks)``; the Q and K projections permuted
  from Hugging Face's rotate-half layout to the interleaved pairs llama.cpp's rope expects (transformers' GGUF loader
  undoes exactly this permutation on load); no ``output.weight`` when the embeddings are tied;
* tokenizer: byte-level BPE (``tokenizer.ggml.model = gpt2``) with tokens, token types, merges, BOS/EOS/UNK/PAD ids,
  the add-BOS flag as the tokenizer really behaves, the pre-tokenizer name, and the chat template.

Quantisation: ``f16`` stores every 2-D weight as F16; ``q8_0`` stores them as Q8_0 blocks
(``gguf.quants.quantize``) — token embeddings included, as llama.cpp does — except a tensor whose rows are not a
multiple of the 32-value block, which stays F16 (listed under ``f16_fallback`` in the result). 1-D tensors (norms,
biases) are always F32.

Memory: the file is streamed. Every tensor's name, GGUF type and byte size is known from the safetensors headers
before any data is read, so the header, metadata and tensor table are written first (``add_tensor_info``,
``write_header_to_file``, ``write_kv_data_to_file``, ``write_ti_data_to_file``), then each tensor is read with
``safe_open``, converted and written (``write_tensor_data``) before the next one is read. Peak memory is about one
weight matrix in fp32 and its converted copy, not the model.

Safety: only safetensors are read (nothing is unpickled) and no model code is run. The output appears complete or
not at all: it is written to ``<out>.partial`` and renamed at the end; the partial file is removed on any error.

Not supported (refused with a message saying so): other architectures, SentencePiece-style tokenizers (Llama 2,
TinyLlama, Mistral: no ``tokenizer.ggml.model = llama`` writer here yet — which is also why ``MistralForCausalLM``
is not listed even though llama.cpp converts its weights the same way), byte-level BPE tokenizers whose
pre-tokenizer is not one of the three llama.cpp names this module can recognise from ``tokenizer.json``
(``gpt-2``, ``smollm``, ``llama-bpe``), rope types other than default/linear/llama3, and quantised checkpoints.
:func:`write_modelfile` writes the Ollama ``Modelfile`` that goes with the file.
"""
from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

SUPPORTED_ARCHITECTURES = frozenset({"LlamaForCausalLM"})
QUANTS = ("f16", "q8_0")
GGUF_ARCHITECTURE = "llama"

_FILE_TYPES = {"f16": 1, "q8_0": 7}  # gguf.LlamaFileType.MOSTLY_F16 / MOSTLY_Q8_0
_Q8_0_BLOCK = 32  # values per Q8_0 block (34 bytes: an f16 scale and 32 int8)
_Q8_0_BLOCK_BYTES = 34

# The Llama 3 pre-tokenizer split, as it appears in Llama 3's tokenizer.json (llama.cpp calls it "llama-bpe").
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

MODELFILE_NAME = "Modelfile"


class GGUFExportError(ValueError):
    """A model folder that cannot be exported as asked; the message says what is wrong and what would work."""


# --------------------------------------------------------------------------------------------------- folder checks


def _read_json(path: Path, what: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as exc:
        raise GGUFExportError(f"{path} is not valid JSON ({exc}); re-save the model's {what}") from None
    if not isinstance(data, dict):
        raise GGUFExportError(f"{path} should hold a JSON object ({what})")
    return data


def _load_config(model_dir: Path) -> dict:
    if not model_dir.is_dir():
        raise GGUFExportError(f"{model_dir} is not a folder: point the export at a merged model folder "
                              "(config.json, *.safetensors, tokenizer files)")
    config_path = model_dir / "config.json"
    if not config_path.is_file():
        hint = (" It holds a LoRA adapter (adapter_config.json): merge it into its base model first."
                if (model_dir / "adapter_config.json").is_file() else "")
        raise GGUFExportError(f"{model_dir} has no config.json, so it is not a Hugging Face model folder.{hint}")
    return _read_json(config_path, "config")


def _check_architecture(config: dict) -> str:
    archs = config.get("architectures") or []
    supported = ", ".join(sorted(SUPPORTED_ARCHITECTURES))
    if not archs:
        raise GGUFExportError(f"config.json names no architecture; GGUF export supports {supported}")
    arch = archs[0]
    if arch not in SUPPORTED_ARCHITECTURES:
        raise GGUFExportError(f"GGUF export supports Llama-architecture models ({supported}); this model is {arch}. "
                              "Export it as safetensors instead, or convert it with llama.cpp's "
                              "convert_hf_to_gguf.py if llama.cpp supports it.")
    if config.get("quantization_config"):
        method = config["quantization_config"].get("quant_method", "quantised")
        raise GGUFExportError(f"the weights in this folder are {method}-quantised; GGUF export needs full-precision "
                              "weights (export a merged 16-bit model, not a 4/8-bit checkpoint)")
    return arch


def _weight_files(model_dir: Path) -> list[Path]:
    """The safetensors files holding the model, in index order when sharded. Refuses pickled weights."""
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map = _read_json(index, "weight index").get("weight_map") or {}
        files = list(dict.fromkeys(weight_map.values()))
        if not files:
            raise GGUFExportError(f"{index} lists no tensors")
        missing = [f for f in files if not (model_dir / f).is_file()]
        if missing:
            raise GGUFExportError(f"{model_dir} is missing weight shard(s) {', '.join(missing)} listed in "
                                  f"{index.name}; copy the whole model folder")
        return [model_dir / f for f in files]
    files = sorted(p for p in model_dir.glob("*.safetensors") if p.name != "adapter_model.safetensors")
    if files:
        return files
    pickled = sorted(p.name for p in model_dir.glob("*.bin")) + sorted(p.name for p in model_dir.glob("*.pt*"))
    if pickled:
        raise GGUFExportError(f"{model_dir} has only pickled weights ({', '.join(pickled[:3])}); GGUF export reads "
                              "safetensors only (pickles can run code): re-save the model with "
                              "save_pretrained(safe_serialization=True)")
    if (model_dir / "adapter_model.safetensors").is_file():
        raise GGUFExportError(f"{model_dir} holds a LoRA adapter, not a model: merge it into its base model first")
    raise GGUFExportError(f"{model_dir} has no model weights (*.safetensors); GGUF export needs the merged "
                          "model's safetensors files next to config.json")


# ------------------------------------------------------------------------------------------------------ hparams


def _hparams(config: dict) -> dict:
    """The numbers the llama metadata and the Q/K permutation need, checked for consistency."""
    try:
        hidden = int(config["hidden_size"])
        n_layers = int(config["num_hidden_layers"])
        n_heads = int(config["num_attention_heads"])
        ffn = int(config["intermediate_size"])
        vocab = int(config["vocab_size"])
    except (KeyError, TypeError, ValueError) as exc:
        raise GGUFExportError(f"config.json lacks a usable {exc} value for a Llama model") from None
    n_kv = int(config.get("num_key_value_heads") or n_heads)
    head_dim = int(config.get("head_dim") or hidden // n_heads)
    # transformers 5 keeps rope settings in rope_parameters; 4.x in rope_theta + rope_scaling
    rope = dict(config.get("rope_parameters") or config.get("rope_scaling") or {})
    rope_theta = float(rope.get("rope_theta", config.get("rope_theta", 10000.0)))
    rope_type = str(rope.get("rope_type") or rope.get("type") or "default")
    if rope_type not in ("default", "linear", "llama3"):
        raise GGUFExportError(f"rope type {rope_type!r} is not supported by this exporter (default, linear and "
                              "llama3 are); use llama.cpp's convert_hf_to_gguf.py for this model")
    return {
        "hidden": hidden, "n_layers": n_layers, "n_heads": n_heads, "n_kv": n_kv, "head_dim": head_dim, "ffn": ffn,
        "vocab": vocab, "context": int(config.get("max_position_embeddings") or 2048),
        "rms_eps": float(config.get("rms_norm_eps", 1e-6)), "rope_theta": rope_theta, "rope_type": rope_type,
        "rope": rope, "tied": bool(config.get("tie_word_embeddings", False)),
    }


def _llama3_rope_factors(hp: dict) -> np.ndarray:
    """Per-frequency rope scaling for Llama 3.1+ (``rope_freqs.weight``), computed as llama.cpp's converter does."""
    rope, dim = hp["rope"], hp["head_dim"]
    freqs = 1.0 / (hp["rope_theta"] ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
    factor = float(rope.get("factor", 8.0))
    low_freq_factor = float(rope.get("low_freq_factor", 1.0))
    high_freq_factor = float(rope.get("high_freq_factor", 4.0))
    old_context = float(rope.get("original_max_position_embeddings", 8192))
    low_freq_wavelen, high_freq_wavelen = old_context / low_freq_factor, old_context / high_freq_factor
    factors = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < high_freq_wavelen:
            factors.append(1.0)
        elif wavelen > low_freq_wavelen:
            factors.append(factor)
        else:
            smooth = (old_context / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return np.asarray(factors, dtype=np.float32)


def _permute_qk(w: np.ndarray, n_heads: int) -> np.ndarray:
    """HF rotate-half rows → llama.cpp interleaved pairs, per head (llama.cpp's ``LlamaModel.permute``).

    Hugging Face's Llama rotates dimension ``i`` with ``i + head_dim/2``; llama.cpp (like Meta's original weights)
    rotates ``2i`` with ``2i+1``. Reordering the output rows of ``q_proj``/``k_proj`` (and their bias) head by head
    turns one into the other without changing the attention scores.
    """
    rows = w.shape[0]
    if rows % (2 * n_heads):
        raise GGUFExportError(f"a Q/K projection has {rows} rows, not a multiple of 2 × {n_heads} heads; the "
                              "config's head counts do not match the weights")
    return w.reshape(n_heads, 2, rows // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


# ---------------------------------------------------------------------------------------------------- tokenizer


def _bpe_pre_tokenizer(tokenizer_json: dict) -> str:
    """llama.cpp's ``tokenizer.ggml.pre`` name for this tokenizer.json's normalizer + pre-tokenizer.

    llama.cpp's converter identifies the pre-tokenizer by hashing the token ids of a test string and looking the hash
    up in a table of known models; that misses any tokenizer whose vocabulary differs from the table's model (a
    fine-tune that added tokens, or a tokenizer rebuilt from a GGUF as this project's default model is). The
    pre-tokenizer itself is what matters, so it is recognised from its structure instead. Anything else is refused
    rather than written with a guess: a wrong pre-tokenizer makes llama.cpp split text differently from training.
    """
    if tokenizer_json.get("normalizer"):
        raise GGUFExportError("the tokenizer has a normalizer, which llama.cpp's byte-level BPE does not apply; "
                              "this tokenizer cannot be exported faithfully")
    pre = tokenizer_json.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    kinds = [s.get("type") for s in steps]
    last = steps[-1] if steps else {}
    if kinds[-1:] == ["ByteLevel"] and not last.get("add_prefix_space", False):
        if kinds == ["ByteLevel"] and last.get("use_regex", True):
            return "gpt-2"  # the GPT-2 split regex, nothing else
        if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and last.get("use_regex", True):
            return "smollm"  # each digit alone, then the GPT-2 regex (llama.cpp's SMOLLM pre-tokenizer)
        if (kinds == ["Split", "ByteLevel"] and (steps[0].get("pattern") or {}).get("Regex") == _LLAMA3_SPLIT
                and not last.get("use_regex", True)):
            return "llama-bpe"
    raise GGUFExportError(f"the tokenizer's pre-tokenizer ({' → '.join(map(str, kinds)) or 'none'}) is not one this "
                          "exporter can name for llama.cpp (recognised: GPT-2, SmolLM and Llama 3 style byte-level "
                          "BPE); use llama.cpp's convert_hf_to_gguf.py for this model")


def _looks_special(token: str) -> bool:
    # llama.cpp marks added tokens spelled like control tokens as CONTROL even when the tokenizer does not
    return token.startswith("<|") and token.endswith("|>")


def _read_tokenizer(model_dir: Path, n_vocab: int) -> dict:
    """Tokens, token types, pre-tokenizer name and add-BOS/EOS behaviour of the folder's tokenizer.json."""
    import gguf

    path = model_dir / "tokenizer.json"
    if not path.is_file():
        raise GGUFExportError(f"{model_dir} has no tokenizer.json; save the tokenizer with the model "
                              "(tokenizer.save_pretrained(folder)) — a GGUF carries its own tokenizer")
    tj = _read_json(path, "tokenizer")
    model = tj.get("model") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback") or (tj.get("decoder") or {}).get("type") != "ByteLevel":
        kind = "SentencePiece-style BPE" if model.get("byte_fallback") else f"{model.get('type')}"
        raise GGUFExportError(f"the tokenizer is {kind}; GGUF export supports byte-level (GPT-2 style) BPE "
                              "tokenizers such as SmolLM's and Llama 3's. SentencePiece tokenizers (Llama 2, "
                              "TinyLlama, Mistral) are not supported yet.")
    pre = _bpe_pre_tokenizer(tj)

    by_id: dict[int, str] = {i: t for t, i in (model.get("vocab") or {}).items()}
    added = {int(a["id"]): a for a in tj.get("added_tokens") or []}
    for i, a in added.items():
        by_id[i] = a["content"]
    if by_id and max(by_id) >= n_vocab:
        raise GGUFExportError(f"the tokenizer has token id {max(by_id)} but config.json's vocab_size is {n_vocab}; "
                              "resize the model's embeddings to the tokenizer before exporting")
    tokens, types = [], []
    for i in range(n_vocab):
        if i not in by_id:  # embedding rows past the tokenizer, as llama.cpp pads them
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(by_id[i])
            special = added[i].get("special") or _looks_special(by_id[i])
            types.append(gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)

    # whether encoding adds BOS/EOS, from the tokenizer itself rather than from parsing its post-processor
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(path))
    plain = tok.encode("Hello world", add_special_tokens=False).ids
    full = tok.encode("Hello world", add_special_tokens=True).ids
    return {"tokens": tokens, "types": types, "pre": pre,
            "adds_bos": len(full) > len(plain) and full[0] != plain[0],
            "adds_eos": len(full) > len(plain) and full[-1] != plain[-1]}


def _chat_template(model_dir: Path) -> str | None:
    """The chat template: tokenizer_config.json's, else chat_template.jinja / chat_template.json (transformers 5)."""
    cfg_path = model_dir / "tokenizer_config.json"
    if cfg_path.is_file():
        template = _read_json(cfg_path, "tokenizer config").get("chat_template")
        if isinstance(template, str) and template:
            return template
    if (model_dir / "chat_template.jinja").is_file():
        return (model_dir / "chat_template.jinja").read_text(encoding="utf-8")
    if (model_dir / "chat_template.json").is_file():
        template = _read_json(model_dir / "chat_template.json", "chat template").get("chat_template")
        if isinstance(template, str) and template:
            return template
    return None


def _add_tokenizer(writer, model_dir: Path, n_vocab: int) -> None:
    import gguf

    tok = _read_tokenizer(model_dir, n_vocab)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(tok["pre"])
    writer.add_token_list(tok["tokens"])
    writer.add_token_types(tok["types"])
    special = gguf.SpecialVocab(model_dir, load_merges=True, n_vocab=n_vocab)
    if not special.merges:
        raise GGUFExportError("tokenizer.json has no BPE merges; the tokenizer cannot be rebuilt from the GGUF")
    # written below from how the tokenizer actually encodes, so not from SpecialVocab's post-processor parse
    special.add_special_token.pop("bos", None)
    special.add_special_token.pop("eos", None)
    template = special.chat_template if isinstance(special.chat_template, str) else _chat_template(model_dir)
    special.chat_template = None
    special.add_to_gguf(writer, quiet=True)
    writer.add_add_bos_token(tok["adds_bos"])
    writer.add_add_eos_token(tok["adds_eos"])
    if template:
        writer.add_chat_template(template)


def _add_model_metadata(writer, hp: dict, name: str, quant: str) -> None:
    import gguf

    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    writer.add_file_type(_FILE_TYPES[quant])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_vocab_size(hp["vocab"])
    writer.add_context_length(hp["context"])
    writer.add_embedding_length(hp["hidden"])
    writer.add_block_count(hp["n_layers"])
    writer.add_feed_forward_length(hp["ffn"])
    writer.add_head_count(hp["n_heads"])
    writer.add_head_count_kv(hp["n_kv"])
    writer.add_key_length(hp["head_dim"])
    writer.add_value_length(hp["head_dim"])
    writer.add_rope_dimension_count(hp["head_dim"])
    writer.add_rope_freq_base(hp["rope_theta"])
    writer.add_layer_norm_rms_eps(hp["rms_eps"])
    if hp["rope_type"] == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(hp["rope"].get("factor", 1.0)))


# ------------------------------------------------------------------------------------------------------ tensors


def _natural_key(name: str) -> list:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def _open_weights(path: Path):
    """``safe_open`` with a readable error for a truncated or corrupt file."""
    from safetensors import SafetensorError, safe_open

    try:
        return safe_open(str(path), framework="pt")
    except (SafetensorError, OSError) as exc:
        raise GGUFExportError(f"cannot read the weights file {path.name}: {exc}; re-save or re-download it") from None


def _plan_tensors(files: list[Path], hp: dict, quant: str) -> list[dict]:
    """One entry per GGUF tensor, from the safetensors headers only: source, GGUF name, shape, storage type."""
    import gguf

    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, hp["n_layers"])
    plan, unknown = [], []
    for path in files:
        with _open_weights(path) as f:
            for key in f.keys():
                if key.endswith(".rotary_emb.inv_freq"):
                    continue  # a buffer some old checkpoints saved; llama.cpp recomputes it
                if key == "lm_head.weight" and hp["tied"]:
                    continue  # tied to the embeddings: llama.cpp writes no output.weight then
                found = name_map.get_type_and_name(key, try_suffixes=(".weight", ".bias"))
                if found is None:
                    unknown.append(key)
                    continue
                kind, gguf_name = found
                shape = tuple(f.get_slice(key).get_shape())
                plan.append({"file": path, "key": key, "name": gguf_name, "kind": kind, "shape": shape})
    if unknown:
        raise GGUFExportError(f"{len(unknown)} tensor(s) have no place in a llama GGUF (e.g. {unknown[0]}); this is "
                              "not a plain Llama checkpoint")
    embed = next((t for t in plan if t["kind"] == gguf.MODEL_TENSOR.TOKEN_EMBD), None)
    if embed is None:
        raise GGUFExportError("the weights have no token embedding (model.embed_tokens.weight)")
    if embed["shape"][0] != hp["vocab"]:
        raise GGUFExportError(f"the token embedding has {embed['shape'][0]} rows but config.json's vocab_size is "
                              f"{hp['vocab']}; the folder's config and weights do not belong together")
    if hp["rope_type"] == "llama3":
        plan.append({"file": None, "key": None, "name": gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight",
                     "kind": gguf.MODEL_TENSOR.ROPE_FREQS, "shape": (hp["head_dim"] // 2,)})
    plan.sort(key=lambda t: _natural_key(t["name"]))

    for t in plan:
        shape, n = t["shape"], math.prod(t["shape"])
        if len(shape) == 1:
            t["type"], t["nbytes"] = gguf.GGMLQuantizationType.F32, 4 * n
        elif quant == "q8_0" and shape[-1] % _Q8_0_BLOCK == 0:
            t["type"], t["nbytes"] = gguf.GGMLQuantizationType.Q8_0, n // _Q8_0_BLOCK * _Q8_0_BLOCK_BYTES
        else:
            t["type"], t["nbytes"] = gguf.GGMLQuantizationType.F16, 2 * n
    return plan


def _tensor_data(t: dict, handles: dict, hp: dict) -> np.ndarray:
    """Read one tensor, apply llama.cpp's layout changes, and encode it in its planned GGUF type."""
    import gguf

    if t["kind"] == gguf.MODEL_TENSOR.ROPE_FREQS:
        data = _llama3_rope_factors(hp)
    else:
        data = handles[t["file"]].get_tensor(t["key"]).float().numpy()
        if t["kind"] == gguf.MODEL_TENSOR.ATTN_Q:
            data = _permute_qk(data, hp["n_heads"])
        elif t["kind"] == gguf.MODEL_TENSOR.ATTN_K:
            data = _permute_qk(data, hp["n_kv"])
    if t["type"] == gguf.GGMLQuantizationType.F32:
        return np.ascontiguousarray(data, dtype=np.float32)
    if t["type"] == gguf.GGMLQuantizationType.F16:
        return np.ascontiguousarray(data, dtype=np.float16)
    return gguf.quants.quantize(np.ascontiguousarray(data), gguf.GGMLQuantizationType.Q8_0)


# ------------------------------------------------------------------------------------------------------- export


def export_gguf(model_dir: str | Path, out_path: str | Path, quant: str = "f16",
                progress: Callable[[int, int], None] | None = None) -> dict:
    """Write a GGUF file from a merged HF model folder (config.json, *.safetensors — one file or sharded with
    model.safetensors.index.json —, tokenizer.json + tokenizer_config.json / chat_template.jinja,
    generation_config.json).

    Returns ``{"path", "bytes", "quant", "architecture" (the GGUF one: "llama"), "tensors", "f16_fallback" (GGUF
    names of 2-D tensors kept F16 in a q8_0 export because their rows are not a multiple of 32), "export_s"}``.
    ``progress(done, total)`` is called after each tensor is written. Raises :class:`GGUFExportError` for a folder,
    architecture, tokenizer or quant it cannot export, before anything is written.
    """
    import gguf

    t0 = time.monotonic()
    quant = str(quant).lower()
    if quant not in QUANTS:
        raise GGUFExportError(f"unknown GGUF quantisation {quant!r}; choose one of {', '.join(QUANTS)}")
    model_dir = Path(model_dir).expanduser().resolve()
    out_path = Path(out_path).expanduser().resolve()
    config = _load_config(model_dir)
    _check_architecture(config)
    files = _weight_files(model_dir)
    hp = _hparams(config)
    plan = _plan_tensors(files, hp, quant)

    writer = gguf.GGUFWriter(None, GGUF_ARCHITECTURE)
    # general.name: the output's name without a quant suffix ("my-run-f16.gguf" -> "my-run"); a merged model's
    # folder is usually just "merged"
    name = re.sub(r"[-_.](f16|q8_0)$", "", out_path.stem, flags=re.IGNORECASE) or model_dir.name
    _add_model_metadata(writer, hp, name, quant)
    _add_tokenizer(writer, model_dir, hp["vocab"])
    for t in plan:
        writer.add_tensor_info(t["name"], t["shape"], np.float32, t["nbytes"], raw_dtype=t["type"])

    out_path.parent.mkdir(parents=True, exist_ok=True)
    partial = out_path.with_name(out_path.name + ".partial")
    try:
        with ExitStack() as stack:
            handles = {path: stack.enter_context(_open_weights(path)) for path in files}
            writer.write_header_to_file(partial)
            writer.write_kv_data_to_file()
            writer.write_ti_data_to_file()
            for done, t in enumerate(plan, 1):
                writer.write_tensor_data(_tensor_data(t, handles, hp))  # one tensor in memory at a time
                if progress:
                    progress(done, len(plan))
            writer.close()
        os.replace(partial, out_path)
    except OSError as exc:
        raise GGUFExportError(f"writing {out_path} failed: {exc}") from exc
    finally:
        writer.close()
        partial.unlink(missing_ok=True)  # left only by an error: the finished file was renamed
    fallback = [t["name"] for t in plan if len(t["shape"]) > 1 and quant == "q8_0"
                and t["type"] != gguf.GGMLQuantizationType.Q8_0]
    return {"path": str(out_path), "bytes": out_path.stat().st_size, "quant": quant,
            "architecture": GGUF_ARCHITECTURE, "tensors": len(plan), "f16_fallback": fallback,
            "export_s": round(time.monotonic() - t0, 2)}


# ----------------------------------------------------------------------------------------------- Ollama Modelfile

# Ollama (Go text/template) equivalents of chat formats, used only after the model's own Jinja template has been
# checked to render sample conversations exactly as these do (see _detect_chat_format).
_OLLAMA_TEMPLATES = {
    "chatml": (
        "{{- range $i, $_ := .Messages }}\n"
        "{{- $last := eq (len (slice $.Messages $i)) 1 -}}\n"
        "<|im_start|>{{ .Role }}\n"
        "{{ .Content }}<|im_end|>\n"
        "{{ if and $last (ne .Role \"assistant\") }}<|im_start|>assistant\n"
        "{{ end }}\n"
        "{{- end }}"
    ),
    "llama3": (
        "{{- range $i, $_ := .Messages }}\n"
        "{{- $last := eq (len (slice $.Messages $i)) 1 -}}\n"
        "<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n"
        "{{ .Content }}<|eot_id|>\n"
        "{{- if and $last (ne .Role \"assistant\") }}<|start_header_id|>assistant<|end_header_id|>\n\n"
        "{{ end }}\n"
        "{{- end }}"
    ),
}
_FORMAT_STOPS = {"chatml": ["<|im_end|>", "<|im_start|>"],
                 "llama3": ["<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>"]}


def _turns(fmt: str, messages: list[dict], add_generation_prompt: bool) -> str:
    """What the Ollama template above renders for these messages (BOS excluded: llama.cpp adds it)."""
    if fmt == "chatml":
        text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
        return text + ("<|im_start|>assistant\n" if add_generation_prompt else "")
    text = "".join(f"<|start_header_id|>{m['role']}<|end_header_id|>\n\n{m['content']}<|eot_id|>" for m in messages)
    return text + ("<|start_header_id|>assistant<|end_header_id|>\n\n" if add_generation_prompt else "")


def _render(template: str, messages: list[dict], add_generation_prompt: bool, bos: str, eos: str) -> str:
    """Render a HF chat template as transformers does (sandboxed Jinja, trim_blocks + lstrip_blocks)."""
    from jinja2.exceptions import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = lambda x, indent=None, **_: json.dumps(x, ensure_ascii=False, indent=indent)
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: time.strftime(fmt)
    return env.from_string(template).render(messages=messages, add_generation_prompt=add_generation_prompt,
                                            bos_token=bos, eos_token=eos)


def _detect_chat_format(template: str | None, bos: str, eos: str) -> tuple[str | None, str | None]:
    """``(format, default system prompt)`` when the Jinja template provably renders like a known Ollama template.

    The template is rendered for a conversation with a system message and for one without; it must produce exactly
    the known format's turns (after an optional leading BOS), optionally preceded — when no system message is given —
    by one system turn, whose text is then the template's default system prompt. Anything else returns
    ``(None, None)`` and the Modelfile relies on the template embedded in the GGUF.
    """
    if not template:
        return None, None
    convo = [{"role": "system", "content": "SYS"}, {"role": "user", "content": "Hi there"},
             {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Bye"}]
    no_system = convo[1:]

    def variants(out: str) -> list[str]:
        # the output as it is, and without a leading BOS (llama.cpp adds BOS itself). Both are tried because a
        # model's BOS can be a turn marker: SmolLM2's is <|im_start|>.
        return [out, out[len(bos):]] if bos and out.startswith(bos) else [out]

    for fmt in _OLLAMA_TEMPLATES:
        try:
            if not all(_turns(fmt, convo, gen) in variants(_render(template, convo, gen, bos, eos))
                       for gen in (True, False)):
                continue
            rendered = variants(_render(template, no_system, True, bos, eos))
        except Exception:  # noqa: BLE001, S112 - a template that does not render for this format is just not this format
            continue
        tail = _turns(fmt, no_system, True)
        if tail in rendered:
            return fmt, None
        prefix, suffix = ("<|im_start|>system\n", "<|im_end|>\n") if fmt == "chatml" else (
            "<|start_header_id|>system<|end_header_id|>\n\n", "<|eot_id|>")
        for out in rendered:
            head = out[: len(out) - len(tail)] if out.endswith(tail) else ""
            if head.startswith(prefix) and head.endswith(suffix) and len(head) >= len(prefix) + len(suffix):
                system = head[len(prefix): len(head) - len(suffix)]
                if prefix not in system and suffix not in system:
                    return fmt, system
    return None, None


def _token_text(tokenizer_json: dict, token_id: int) -> str | None:
    for a in tokenizer_json.get("added_tokens") or []:
        if int(a["id"]) == token_id:
            return a["content"]
    for t, i in ((tokenizer_json.get("model") or {}).get("vocab") or {}).items():
        if i == token_id:
            return t
    return None


def _special_tokens(model_dir: Path) -> tuple[str, str, list[str]]:
    """``(bos, eos, end-of-turn token texts)`` from tokenizer_config.json, config.json and generation_config.json."""
    def text(entry) -> str:
        return entry.get("content", "") if isinstance(entry, dict) else (entry or "")

    tc = _read_json(model_dir / "tokenizer_config.json", "tokenizer config") \
        if (model_dir / "tokenizer_config.json").is_file() else {}
    tj = _read_json(model_dir / "tokenizer.json", "tokenizer") if (model_dir / "tokenizer.json").is_file() else {}
    bos, eos = text(tc.get("bos_token")), text(tc.get("eos_token"))
    stops = [eos] if eos else []
    for name in ("generation_config.json", "config.json"):
        if (model_dir / name).is_file():
            ids = _read_json(model_dir / name, name).get("eos_token_id")
            for i in ids if isinstance(ids, list) else [ids]:
                if isinstance(i, int) and (t := _token_text(tj, i)):
                    stops.append(t)
    return bos, eos, list(dict.fromkeys(stops))


def _go_string(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def write_modelfile(gguf_path: str | Path, model_dir: str | Path, out_dir: str | Path | None = None) -> Path:
    """Write an Ollama ``Modelfile`` beside the GGUF (or in ``out_dir``); return its path.

    It holds ``FROM`` with the GGUF's path relative to the Modelfile (``./<file>.gguf`` beside it), a ``TEMPLATE`` in
    Ollama's Go template syntax when the model's chat template is one this module can translate and has verified by
    rendering (ChatML ``<|im_start|>`` models such as SmolLM2, and Llama 3), ``SYSTEM`` with the template's default
    system prompt if it inserts one, ``PARAMETER stop`` lines for the end-of-turn tokens, and sampling defaults from
    generation_config.json. A template it cannot translate is left out, with a comment saying Ollama will use the
    chat template embedded in the GGUF instead.
    """
    gguf_path = Path(gguf_path).expanduser().resolve()
    model_dir = Path(model_dir).expanduser().resolve()
    target_dir = Path(out_dir).expanduser().resolve() if out_dir is not None else gguf_path.parent
    if not model_dir.is_dir():
        raise GGUFExportError(f"{model_dir} is not a folder: pass the model folder the GGUF was exported from")
    target_dir.mkdir(parents=True, exist_ok=True)

    rel = os.path.relpath(gguf_path, target_dir)
    source = rel if rel.startswith("..") or os.path.isabs(rel) else f"./{rel}"
    bos, eos, stops = _special_tokens(model_dir)
    template = _chat_template(model_dir)
    fmt, system = _detect_chat_format(template, bos, eos)

    lines = [f"# Ollama Modelfile for {gguf_path.name}, exported from {model_dir.name}.",
             f"# Create the model with: ollama create <name> -f {MODELFILE_NAME}", f"FROM {source}", ""]
    if fmt:
        lines += [f"# {fmt} chat format, translated from the model's chat template (checked by rendering it).",
                  f'TEMPLATE """{_OLLAMA_TEMPLATES[fmt]}"""', ""]
        stops = _FORMAT_STOPS[fmt] + stops
    elif template:
        lines += ["# The model's chat template could not be translated to Ollama's template syntax here, so no",
                  "# TEMPLATE is set: Ollama uses the chat template embedded in the GGUF (tokenizer.chat_template).",
                  ""]
    else:
        lines += ["# The model has no chat template: Ollama will send prompts as they are.", ""]
    if system:
        if '"""' in system:
            lines += ["# The template's default system prompt contains triple quotes and is left out.", ""]
        else:
            lines += ["# The default system prompt the model's chat template inserts when none is given.",
                      f'SYSTEM """{system}"""', ""]
    for stop in dict.fromkeys(s for s in stops if s):
        lines.append(f"PARAMETER stop {_go_string(stop)}")
    gen_path = model_dir / "generation_config.json"
    gen = _read_json(gen_path, "generation config") if gen_path.is_file() else {}
    if gen.get("do_sample", True):
        for key, param in (("temperature", "temperature"), ("top_p", "top_p"), ("top_k", "top_k"),
                           ("repetition_penalty", "repeat_penalty")):
            if isinstance(gen.get(key), int | float) and not isinstance(gen.get(key), bool):
                lines.append(f"PARAMETER {param} {gen[key]}")

    path = target_dir / MODELFILE_NAME
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def _describe(info: dict[str, Any]) -> str:  # pragma: no cover - a CLI nicety
    return f"{info['path']} ({info['bytes'] / 1e6:.0f} MB, {info['quant']}, {info['tensors']} tensors)"


if __name__ == "__main__":  # pragma: no cover
    import sys

    result = export_gguf(sys.argv[1], sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else "f16")
    print(_describe(result), "Modelfile:", write_modelfile(result["path"], sys.argv[1]))
