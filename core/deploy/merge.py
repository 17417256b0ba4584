"""Merge a LoRA adapter into its base model, tensor by tensor, into a folder any server loads.

The base model's safetensors files are read one tensor at a time (``safe_open``) and written one tensor at a time
by :class:`StreamingSafetensorsWriter` (the format is an 8-byte header length, a JSON header, then the raw bytes), so
the merge holds one weight matrix and the adapter in memory, never the whole model twice — a 7B model merges on a
machine with a few GB free. ``W' = W + scale · B·A`` is computed in fp32 and stored in the base's own dtype; shards
and their index keep the base's layout. Tokenizer, chat template and generation config come along (the run's own
tokenizer files first: they carry the template the run trained with).

A QLoRA adapter is merged into the 16-bit base weights on disk (it was trained against their 4-bit quantisation;
the merged model is the usual way to serve it, and slightly differs from what was trained — the result says so).

Only safetensors are read; nothing is unpickled. The output is complete or absent (written under a temporary name,
marked complete, renamed).
"""
from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from core.data.templates import TEMPLATE_META
from core.models import ADAPTER_WEIGHTS_FILE
from core.runs.paths import COMPLETE_MARKER, save_atomically

SAFETENSORS_DTYPES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                      "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "chat_template.json", "tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json")
MODEL_FILES = ("config.json", "generation_config.json")


class MergeError(ValueError):
    """An adapter or model that cannot be merged as asked; the message says why and what to do."""


def _torch_dtype_name(t) -> str:
    import torch

    names = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
             torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
             torch.bool: "BOOL"}
    try:
        return names[t.dtype]
    except KeyError:
        raise MergeError(f"tensor dtype {t.dtype} cannot be written") from None


class StreamingSafetensorsWriter:
    """Write a safetensors file whose tensors' names, dtypes and shapes are known up front, one tensor at a time."""

    def __init__(self, path: Path, layout: list[tuple[str, str, list[int]]], metadata: dict[str, str] | None = None):
        header: dict[str, object] = {"__metadata__": metadata or {"format": "pt"}}
        offset = 0
        self._expected: list[tuple[str, int]] = []
        for name, dtype, shape in layout:
            size = math.prod(shape) * SAFETENSORS_DTYPES[dtype]
            header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
            self._expected.append((name, size))
            offset += size
        raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
        raw += b" " * ((8 - len(raw) % 8) % 8)  # the data starts 8-byte aligned
        self._f = open(path, "wb")
        self._f.write(len(raw).to_bytes(8, "little"))
        self._f.write(raw)
        self._next = 0
        self.bytes = 8 + len(raw) + offset

    def write(self, name: str, tensor) -> None:
        want, size = self._expected[self._next]
        if name != want:
            raise MergeError(f"internal: tensor {name} written out of order (expected {want})")
        import torch

        data = tensor.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy()
        if data.nbytes != size:
            raise MergeError(f"internal: tensor {name} has {data.nbytes} bytes, the header says {size}")
        self._f.write(memoryview(data))
        self._next += 1

    def abort(self) -> None:
        """Close without checking (the caller is failing; save_atomically removes the partial folder)."""
        self._f.close()

    def close(self) -> None:
        if self._next != len(self._expected):
            self._f.close()
            raise MergeError(f"internal: {len(self._expected) - self._next} tensors were not written")
        self._f.flush()
        self._f.close()


def read_header(path: Path) -> tuple[dict, int]:
    """(header, offset of the data) of a safetensors file: its tensors' dtypes, shapes and byte ranges."""
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise MergeError(f"{path} is not a safetensors file (too short)")
        n = int.from_bytes(raw, "little")
        if not 2 <= n <= 100 * 1024**2:
            raise MergeError(f"{path} is not a safetensors file (header size {n})")
        try:
            header = json.loads(f.read(n))
        except ValueError as exc:
            raise MergeError(f"{path} is not a safetensors file ({exc})") from None
    return header, 8 + n


def read_tensor(f, data_start: int, info: dict):
    """One tensor read into its own memory (no memory map: a merge's RSS holds the tensor at hand, not every page of
    the file read so far)."""
    import torch

    dtypes = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
              "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
              "BOOL": torch.bool}
    if info["dtype"] not in dtypes:
        raise MergeError(f"tensor dtype {info['dtype']} cannot be merged")
    begin, end = info["data_offsets"]
    f.seek(data_start + begin)
    buf = bytearray(end - begin)
    if f.readinto(buf) != len(buf):
        raise MergeError(f"{f.name} is truncated")
    if not buf:
        return torch.empty(info["shape"], dtype=dtypes[info["dtype"]])
    return torch.frombuffer(buf, dtype=dtypes[info["dtype"]]).reshape(info["shape"])


def weight_files(model_dir: Path) -> list[Path]:
    """The model's safetensors shards in index order (or its single file). Refuses pickled weights."""
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map") or {}
        return [model_dir / f for f in dict.fromkeys(weight_map.values())]
    files = sorted(model_dir.glob("*.safetensors"))
    if files:
        return files
    if list(model_dir.glob("*.bin")) or list(model_dir.glob("*.pt")):
        raise MergeError(f"{model_dir} holds only pickled weights (.bin/.pt), which the studio does not load; "
                         "convert the model to safetensors first")
    raise MergeError(f"{model_dir} has no model weights (*.safetensors)")


@dataclass
class AdapterWeights:
    """A plain LoRA adapter folder, read: its config, {module: (A, B)}, the scale, and (for runs trained with a
    prompt template's new tokens) {module: (token ids, trained rows)} plus the template record."""

    cfg: dict
    loras: dict[str, tuple[object, object]]
    scale: float
    token_rows: dict[str, tuple[list[int], object]] = field(default_factory=dict)
    meta: dict | None = None

    @property
    def fan_in_fan_out(self) -> bool:  # GPT-2's Conv1D stores weights as (in, out)
        return bool(self.cfg.get("fan_in_fan_out"))


def read_lora(adapter_dir: Path) -> AdapterWeights:
    """Read a plain LoRA adapter folder (trainable token rows included)."""
    from safetensors.torch import load_file

    from core.data.templates import read_meta
    from core.inference import lora_scale, split_adapter_tensors, token_ids_for, unsupported_reason
    from core.models import AdapterReadError, adapter_weights_file, read_adapter_config

    try:
        cfg = read_adapter_config(adapter_dir)
        why = unsupported_reason(cfg)
        if why:
            raise MergeError(f"this adapter {why}; merging it is not supported — serve it with PEFT, or keep the "
                             "adapter separate for multi-LoRA serving")
        weights = adapter_weights_file(adapter_dir)
    except AdapterReadError as exc:
        raise MergeError(str(exc)) from None
    try:
        pairs, saved_rows = split_adapter_tensors(load_file(str(weights)))
    except ValueError as exc:
        raise MergeError(f"{exc}; only plain LoRA adapters are merged") from None
    out = {}
    for module, ab in pairs.items():
        if set(ab) != {"lora_A", "lora_B"}:
            raise MergeError(f"adapter module {module} lacks its {'lora_B' if 'lora_A' in ab else 'lora_A'} matrix")
        out[module] = (ab["lora_A"], ab["lora_B"])
    token_rows = {}
    for module, rows in saved_rows.items():
        ids = token_ids_for(cfg.get("trainable_token_indices"), module)
        if ids is None or len(ids) != rows.shape[0]:
            raise MergeError(f"the adapter's trained token rows for {module} do not match its trainable_token_indices")
        token_rows[module] = (ids, rows)
    return AdapterWeights(cfg, out, lora_scale(cfg), token_rows, read_meta(adapter_dir))


class _Names:
    """Adapter module names (PEFT's, under the model class: ``transformer.h.0.attn.c_attn``) matched to checkpoint
    tensor names, which some checkpoints store without the base-model prefix (GPT-2's ``h.0.attn.c_attn.weight``)."""

    def __init__(self, modules):
        self.modules = set(modules)
        self.prefixes = {m.split(".", 1)[0] for m in self.modules if "." in m}

    def module(self, tensor_name: str, suffix: str = ".weight") -> str | None:
        if not tensor_name.endswith(suffix):
            return None
        m = tensor_name.removesuffix(suffix)
        if m in self.modules:
            return m
        for p in self.prefixes:
            if f"{p}.{m}" in self.modules:
                return f"{p}.{m}"
        return None


def _grow_rows(t, vocab: int, ids: list[int] | None, rows):
    """A vocabulary tensor (embedding / LM head weight, or head bias) grown to ``vocab`` rows the way training grew
    it (new rows = the mean of the old), then the trained rows put in."""
    import torch

    if t.shape[0] < vocab:
        mean = t.float().mean(0, keepdim=True).to(t.dtype)
        t = torch.cat([t, mean.expand(vocab - t.shape[0], *t.shape[1:])])
    if ids:
        if max(ids) >= t.shape[0] or tuple(rows.shape[1:]) != tuple(t.shape[1:]):
            raise MergeError(f"trained token rows {tuple(rows.shape)} do not fit the base tensor {tuple(t.shape)}: "
                             "wrong base model?")
        t = t.clone()
        t[torch.tensor(ids)] = rows.to(t.dtype)
    return t


def adapter_fingerprint(adapter_dir: Path) -> dict | None:
    """What identifies an adapter's weights as they are now (size and modification time of its weights file)."""
    try:
        st = (Path(adapter_dir) / ADAPTER_WEIGHTS_FILE).stat()
    except OSError:
        return None
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _copy_side_files(base_dir: Path, extra_dirs: list[Path], out: Path) -> list[str]:
    """config + generation config from the base; tokenizer files from the first folder that has a tokenizer."""
    copied = []
    for name in MODEL_FILES:
        if (base_dir / name).is_file():
            shutil.copy2(base_dir / name, out / name)
            copied.append(name)
    for src in [*extra_dirs, base_dir]:
        if (src / "tokenizer.json").is_file() or (src / "tokenizer.model").is_file() or (src / "vocab.json").is_file():
            for name in TOKENIZER_FILES:
                if (src / name).is_file():
                    shutil.copy2(src / name, out / name)
                    copied.append(name)
            break
    _template_in_tokenizer_config(out)
    return copied


def _template_in_tokenizer_config(out: Path) -> None:
    """transformers 5 saves the chat template as chat_template.jinja; servers that read only tokenizer_config.json
    (TGI's router, older transformers) would serve without it — a model answering with another template than it was
    trained on. The same text goes into tokenizer_config.json too."""
    jinja, cfg_path = out / "chat_template.jinja", out / "tokenizer_config.json"
    if not jinja.is_file() or not cfg_path.is_file():
        return
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except ValueError:
        return
    if not cfg.get("chat_template"):
        cfg["chat_template"] = jinja.read_text(encoding="utf-8")
        cfg_path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False), encoding="utf-8")


def _vocab_plan(base_dir: Path, headers: dict, ad: AdapterWeights) -> tuple[int, dict[str, tuple]]:
    """(vocabulary size of the merged model, {tensor name: (token ids, rows) or (None, None)} for every tensor that
    grows with it): the embedding and LM head (weight and bias) of a run trained with new template tokens."""
    cfg = json.loads((base_dir / "config.json").read_text(encoding="utf-8"))
    text_cfg = cfg.get("text_config") or cfg
    old = int(text_cfg.get("vocab_size") or 0)
    vocab = int((ad.meta or {}).get("vocab_size") or 0)
    if not ad.token_rows and vocab <= old:
        return old, {}
    if not old:
        raise MergeError(f"{base_dir}/config.json has no vocab_size; the adapter's new tokens cannot be added")
    names = _Names(ad.token_rows)
    plan: dict[str, tuple] = {}
    emb_rows = None
    for header, _ in headers.values():
        for name, info in header.items():
            if name == "__metadata__" or not info.get("shape") or info["shape"][0] != old:
                continue
            module = names.module(name)
            if module is not None:
                plan[name] = ad.token_rows[module]
                if not module.endswith("lm_head"):
                    emb_rows = ad.token_rows[module]
            elif name.removeprefix("model.") in ("lm_head.weight", "lm_head.bias"):
                plan[name] = (None, None)
    if emb_rows is None and ad.token_rows:
        raise MergeError(f"the adapter's trained token rows ({sorted(ad.token_rows)[0]}) match no tensor of "
                         f"{base_dir}: it was trained on another base model")
    tied = bool(text_cfg.get("tie_word_embeddings", cfg.get("tie_word_embeddings", True)))
    for name, (ids, _rows) in list(plan.items()):
        if ids is None and name.endswith("lm_head.weight") and tied:
            plan[name] = emb_rows  # a tied head stored separately carries the embedding's rows
    return max(vocab, old), plan


def _write_model_config(base_dir: Path, out: Path, vocab: int, meta: dict | None) -> None:
    """config.json / generation_config.json with the merged vocabulary and the template's end-of-turn token as EOS
    (a server stops there, as the run learned to)."""
    cfg = json.loads((base_dir / "config.json").read_text(encoding="utf-8"))
    target = cfg.get("text_config") if isinstance(cfg.get("text_config"), dict) else cfg
    target["vocab_size"] = vocab
    eos = (meta or {}).get("eos_token_id")
    if eos is not None:
        target["eos_token_id"] = int(eos)
    (out / "config.json").write_text(json.dumps(cfg, indent=2), encoding="utf-8")
    gen_path = base_dir / "generation_config.json"
    gen = json.loads(gen_path.read_text(encoding="utf-8")) if gen_path.is_file() else {}
    if eos is not None:
        old = gen.get("eos_token_id")
        olds = old if isinstance(old, list) else ([old] if old is not None else [])
        ids = list(dict.fromkeys([int(eos), *[int(x) for x in olds]]))
        gen["eos_token_id"] = ids[0] if len(ids) == 1 else ids
    if gen or gen_path.is_file():
        (out / "generation_config.json").write_text(json.dumps(gen, indent=2), encoding="utf-8")


def merge_lora(base_dir: str | Path, adapter_dir: str | Path, out_dir: str | Path, *,
               progress: Callable[[int, int], None] | None = None, note: str = "") -> dict:
    """Write base + adapter as one model folder. Returns what was written (files, bytes, tensors merged, seconds)."""
    base_dir, adapter_dir, out_dir = Path(base_dir), Path(adapter_dir), Path(out_dir)
    t0 = time.time()
    if not (base_dir / "config.json").is_file():
        raise MergeError(f"the base model folder {base_dir} has no config.json")
    shards = weight_files(base_dir)
    fingerprint = adapter_fingerprint(adapter_dir)  # taken before reading: a newer adapter makes this merge stale
    ad = read_lora(adapter_dir)
    loras, scale = ad.loras, ad.scale
    headers = {shard: read_header(shard) for shard in shards}
    vocab, grow = _vocab_plan(base_dir, headers, ad)
    names = _Names(loras)
    total = sum(len([k for k in h if k != "__metadata__"]) for h, _ in headers.values())
    info: dict = {"tensors": total, "merged_modules": 0, "files": [], "vocab_size": vocab,
                  "token_rows": sum(len(ids) for ids, _ in ad.token_rows.values())}
    remaining = set(loras)

    def write(tmp: Path) -> None:
        done = 0
        for shard in shards:
            header, data_start = headers[shard]
            names_here = sorted((k for k in header if k != "__metadata__"),
                                key=lambda k: header[k]["data_offsets"][0])
            layout = [(name, header[name]["dtype"],
                       [vocab, *header[name]["shape"][1:]] if name in grow else list(header[name]["shape"]))
                      for name in names_here]
            with open(shard, "rb") as f:
                writer = StreamingSafetensorsWriter(tmp / shard.name, layout, header.get("__metadata__")
                                                    or {"format": "pt"})
                try:
                    for name in names_here:
                        t = read_tensor(f, data_start, header[name])
                        module = names.module(name)
                        if module is not None:
                            a, b = loras[module]
                            want = (a.shape[1], b.shape[0]) if ad.fan_in_fan_out else (b.shape[0], a.shape[1])
                            if tuple(t.shape) != want:
                                raise MergeError(f"adapter matrices for {module} ({tuple(a.shape)}, {tuple(b.shape)}) "
                                                 f"do not fit the base weight {tuple(t.shape)}: wrong base model?")
                            delta = b.float() @ a.float()
                            t = (t.float() + scale * (delta.T if ad.fan_in_fan_out else delta)).to(t.dtype)
                            remaining.discard(module)
                            info["merged_modules"] += 1
                        if name in grow:
                            ids, rows = grow[name]
                            t = _grow_rows(t, vocab, ids, rows)
                        writer.write(name, t)
                        del t
                        done += 1
                        if progress:
                            progress(done, total)
                except BaseException:
                    writer.abort()
                    raise
                writer.close()
            info["files"].append(shard.name)
        if remaining:
            raise MergeError(f"the adapter targets {sorted(remaining)[0]}, which is not a weight of {base_dir} "
                             f"({len(remaining)} module(s) missing): it was trained on another base model")
        index = base_dir / "model.safetensors.index.json"
        if index.is_file():
            data = json.loads(index.read_text(encoding="utf-8"))
            if grow and isinstance(data.get("metadata"), dict):
                data["metadata"]["total_size"] = sum((tmp / f).stat().st_size for f in info["files"])
            (tmp / index.name).write_text(json.dumps(data, indent=2), encoding="utf-8")
        info["files"] += _copy_side_files(base_dir, [adapter_dir], tmp)
        if grow or ad.meta:
            _write_model_config(base_dir, tmp, vocab, ad.meta)
        if ad.meta:
            shutil.copy2(adapter_dir / TEMPLATE_META, tmp / TEMPLATE_META)
        (tmp / "fts_merge.json").write_text(json.dumps({
            "base_model": str(base_dir), "adapter": str(adapter_dir), "adapter_weights": fingerprint,
            "lora_r": ad.cfg.get("r"), "lora_alpha": ad.cfg.get("lora_alpha"), "scale": scale,
            "vocab_size": vocab, "prompt_template": (ad.meta or {}).get("template"), "note": note,
            "merged_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, indent=2))

    needed = sum(p.stat().st_size for p in shards)
    save_atomically(out_dir, write, needed_bytes=needed, what="the merged model")
    info["bytes"] = sum(p.stat().st_size for p in out_dir.iterdir() if p.is_file())
    info["seconds"] = round(time.time() - t0, 2)
    info["path"] = str(out_dir)
    return info


def is_complete(model_dir: Path) -> bool:
    return (model_dir / COMPLETE_MARKER).is_file() and (model_dir / "config.json").is_file()
