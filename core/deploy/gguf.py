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
core.deploy.ollama writes the Ollama ``Modelfile`` that goes with the file; ``python -m core.deploy.gguf MODEL_DIR
OUT.gguf [f16|q8_0]`` writes both.
"""
from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

from core.deploy.gguf_folder import GGUFExportError, check_architecture, load_config, weight_files
from core.deploy.gguf_tokenizer import add_tokenizer

QUANTS = ("f16", "q8_0")
GGUF_ARCHITECTURE = "llama"

_FILE_TYPES = {"f16": 1, "q8_0": 7}  # gguf.LlamaFileType.MOSTLY_F16 / MOSTLY_Q8_0
_Q8_0_BLOCK = 32  # values per Q8_0 block (34 bytes: an f16 scale and 32 int8)
_Q8_0_BLOCK_BYTES = 34


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
    config = load_config(model_dir)
    check_architecture(config)
    files = weight_files(model_dir)
    hp = _hparams(config)
    plan = _plan_tensors(files, hp, quant)

    writer = gguf.GGUFWriter(None, GGUF_ARCHITECTURE)
    # general.name: the output's name without a quant suffix ("my-run-f16.gguf" -> "my-run"); a merged model's
    # folder is usually just "merged"
    name = re.sub(r"[-_.](f16|q8_0)$", "", out_path.stem, flags=re.IGNORECASE) or model_dir.name
    _add_model_metadata(writer, hp, name, quant)
    add_tokenizer(writer, model_dir, hp["vocab"])
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


def _describe(info: dict[str, Any]) -> str:  # pragma: no cover - a CLI nicety
    return f"{info['path']} ({info['bytes'] / 1e6:.0f} MB, {info['quant']}, {info['tensors']} tensors)"


if __name__ == "__main__":  # pragma: no cover
    import sys

    from core.deploy.ollama import write_modelfile

    result = export_gguf(sys.argv[1], sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else "f16")
    print(_describe(result), "Modelfile:", write_modelfile(result["path"], sys.argv[1]))
