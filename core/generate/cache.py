""":class:`ModelCache` keeps loaded base models under a memory budget (least recently used first out). Adapters of one
base load into that base's PEFT model under their own names, so base and tuned share the weights; a :class:`Slot` is
one side of a comparison (a loaded base and the adapter to run it with).

Loading is refused up front when the model would not fit the cache's budget (``FTS_MODEL_CACHE_GB``, default 40 % of
the machine's memory); model code runs under a lock per loaded model.
"""
from __future__ import annotations

import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from core.generate.errors import GenerateError
from core.generate.sources import ModelSource

BASE_ADAPTER = "__base__"  # PEFT's name for "no adapter" in a mixed-adapter batch


@dataclass
class LoadedBase:
    key: str
    path: str
    model: Any  # a core.inference.FastLoraModel, or (for adapters it cannot apply) a peft.PeftModel
    tokenizer: Any
    bytes: int
    adapters: dict[str, str] = field(default_factory=dict)  # adapter dir -> adapter name
    lock: threading.Lock = field(default_factory=threading.Lock)
    max_positions: int = 0
    engine: str = "fast"  # fast | peft

    @property
    def is_peft(self) -> bool:
        """Whether forward takes per-row ``adapter_names`` (always for the fast engine; PEFT once it has one)."""
        return self.engine == "fast" or bool(self.adapters)


@dataclass(frozen=True)
class Slot:
    """One side of a comparison: a loaded base and the adapter to run it with (None: the bare model)."""

    source: ModelSource
    loaded: LoadedBase | None  # None for an endpoint: it is served elsewhere
    adapter_name: str | None
    tokenizer: Any = None  # the prompt format: the adapter's own tokenizer (its training template), else the base's
    template_from: str | None = None  # set when this side borrows another side's prompt template

    def row_adapter(self) -> str:
        return self.adapter_name or BASE_ADAPTER

    @property
    def tok(self):
        return self.tokenizer if self.tokenizer is not None else (self.loaded.tokenizer if self.loaded else None)


def share_prompt_format(base: Slot, tuned: Slot) -> Slot:
    """A base model without a chat template is prompted with the template its fine-tuned run trained with (same
    loaded model), so base and tuned answer the same prompt; a base with its own template keeps it."""
    if base.loaded is None or tuned.loaded is None or tuned.tok is None or base.tok is tuned.tok:
        return base
    if getattr(base.tok, "chat_template", None) or not getattr(tuned.tok, "chat_template", None):
        return base
    if base.loaded.path != tuned.loaded.path:
        return base
    return replace(base, tokenizer=tuned.tok, template_from=tuned.source.label)


def _default_budget_bytes() -> int:
    raw = os.environ.get("FTS_MODEL_CACHE_GB")
    if raw:
        return int(float(raw) * 1024**3)
    import psutil

    return int(0.4 * psutil.virtual_memory().total)


def _weights_bytes_on_disk(path: str) -> int | None:
    p = Path(path)
    if not p.is_dir():
        return None
    files = list(p.glob("*.safetensors")) or list(p.glob("*.bin"))
    return sum(f.stat().st_size for f in files) or None


_HEAVY_IMPORTS = threading.Lock()


class ModelCache:
    """Loaded base models (with their adapters) under a memory budget; least recently used goes first."""

    def __init__(self, budget_bytes: int | None = None):
        self.budget_bytes = budget_bytes if budget_bytes is not None else _default_budget_bytes()
        self._items: OrderedDict[str, LoadedBase] = OrderedDict()
        self._loading: dict[str, threading.Lock] = {}
        self._tokenizers: dict[tuple, Any] = {}
        self._lock = threading.RLock()

    def loaded(self) -> list[LoadedBase]:
        with self._lock:
            return list(self._items.values())

    def used_bytes(self) -> int:
        return sum(x.bytes for x in self.loaded())

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def _load_base(self, base_ref: str, engine: str = "fast") -> LoadedBase:
        with _HEAVY_IMPORTS:  # transformers' lazy attributes are not safe to resolve from two threads at once
            import torch
            from transformers import AutoModelForCausalLM

            from core.inference import FastLoraModel
        from core.models import ModelNotFoundError, load_tokenizer, resolve_model

        try:
            resolved = resolve_model(base_ref)
            tokenizer = load_tokenizer(resolved)
        except ModelNotFoundError as exc:
            raise GenerateError(str(exc)) from None
        expected = _weights_bytes_on_disk(resolved.path)
        if expected and expected > self.budget_bytes:
            raise GenerateError(f"{resolved.display_name} needs about {expected / 1024**3:.1f} GB, more than the "
                                f"model cache may use ({self.budget_bytes / 1024**3:.1f} GB, FTS_MODEL_CACHE_GB)")
        if expected:
            self._make_room(expected)
        dtype = torch.float32
        if torch.cuda.is_available():
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        try:
            from core.models import load_kwargs

            model = AutoModelForCausalLM.from_pretrained(resolved.path, dtype=dtype, attn_implementation="sdpa",
                                                         **load_kwargs())
        except (OSError, ValueError) as exc:
            raise GenerateError(f"could not load {resolved.display_name}: {exc}") from None
        if torch.cuda.is_available():
            model = model.to("cuda")
        model.eval()
        size = sum(p.numel() * p.element_size() for p in model.parameters())
        max_pos = int(getattr(model.config, "max_position_embeddings", 0) or 0)
        if engine == "fast":
            model = FastLoraModel(model).eval()
        return LoadedBase(key=base_ref, path=resolved.path, model=model, tokenizer=tokenizer, bytes=size,
                          max_positions=max_pos, engine=engine)

    def _make_room(self, need: int) -> None:
        with self._lock:
            while self._items and self.used_bytes() + need > self.budget_bytes:
                self._items.popitem(last=False)

    def base(self, base_ref: str, engine: str = "fast") -> LoadedBase:
        key = base_ref if engine == "fast" else f"{base_ref}|{engine}"
        with self._lock:
            item = self._items.get(key)
            if item is not None:
                self._items.move_to_end(key)
                return item
            loading = self._loading.setdefault(key, threading.Lock())
        with loading:  # two people asking for the same model at once: one loads it, the other waits for it
            with self._lock:
                existing = self._items.get(key)
                if existing is not None:
                    self._items.move_to_end(key)
                    return existing
            item = self._load_base(base_ref, engine)
            item.key = key
            with self._lock:
                self._make_room(item.bytes)
                self._items[key] = item
                return item

    def slot(self, source: ModelSource) -> Slot:
        """The loaded model for a source. Plain LoRA adapters go onto the fast engine; others (DoRA, trained
        embeddings, …) onto a PEFT copy of the base."""
        from core.inference import UnsupportedAdapter

        if source.endpoint:
            return Slot(source, None, None)
        loaded = self.base(source.base)
        if not source.adapter:
            return Slot(source, loaded, None)
        tok = self._adapter_tokenizer(source.adapter)
        try:
            return Slot(source, loaded, self._attach(loaded, source), tok)
        except UnsupportedAdapter:
            peft_loaded = self.base(source.base, engine="peft")
            return Slot(source, peft_loaded, self._attach(peft_loaded, source), tok)

    def _adapter_tokenizer(self, adapter_dir: str):
        """The tokenizer saved with an adapter (the template it was trained with), or None to use the base's."""
        d = Path(adapter_dir)
        if not ((d / "tokenizer.json").is_file() or (d / "tokenizer_config.json").is_file()):
            return None
        key = (str(d), (d / "tokenizer_config.json").stat().st_mtime_ns
               if (d / "tokenizer_config.json").is_file() else 0)
        with self._lock:
            tok = self._tokenizers.get(key)
        if tok is None:
            from transformers import AutoTokenizer

            try:
                tok = AutoTokenizer.from_pretrained(str(d))
            except (OSError, ValueError) as exc:
                raise GenerateError(f"could not load the tokenizer saved with {d}: {exc}") from None
            if tok.pad_token is None:
                tok.pad_token = tok.eos_token
            with self._lock:
                self._tokenizers[key] = tok
        return tok

    @staticmethod
    def _attach(loaded: LoadedBase, source: ModelSource) -> str:
        from core.inference import UnsupportedAdapter

        with loaded.lock:
            name = loaded.adapters.get(source.adapter)
            if name is not None:
                return name
            name = f"a{len(loaded.adapters) + 1}"
            try:
                _grow_for_adapter(loaded, source.adapter)
                if loaded.engine == "fast":
                    loaded.model.load_adapter(source.adapter, name)
                else:
                    from peft import PeftModel

                    if loaded.adapters:
                        loaded.model.load_adapter(source.adapter, adapter_name=name)
                    else:
                        loaded.model = PeftModel.from_pretrained(loaded.model, source.adapter, adapter_name=name)
                    loaded.model.eval()
            except UnsupportedAdapter:
                raise
            except (OSError, ValueError, KeyError, RuntimeError) as exc:
                raise GenerateError(f"could not load the adapter {source.adapter} on {source.base}: "
                                    f"{type(exc).__name__}: {str(exc)[:300]}") from None
            loaded.adapters[source.adapter] = name
            return name


def _grow_for_adapter(loaded: LoadedBase, adapter_dir: str) -> None:
    """An adapter trained with new template tokens needs the base's vocabulary grown to its size first (new rows =
    the mean row, exactly as training grew it; the adapter carries the trained values)."""
    from core.data.templates import grow_vocab, read_meta

    meta = read_meta(adapter_dir)
    if not meta or not meta.get("vocab_size"):
        return
    model = loaded.model.get_base_model() if hasattr(loaded.model, "get_base_model") else loaded.model
    if loaded.engine != "fast" and loaded.adapters:
        rows = model.get_input_embeddings().weight.shape[0]
        if int(meta["vocab_size"]) > rows:
            raise GenerateError(f"{adapter_dir} needs the base grown to {meta['vocab_size']} tokens; load it first "
                                "or on its own")
        return
    grow_vocab(model, int(meta["vocab_size"]))


_CACHE: ModelCache | None = None
_CACHE_LOCK = threading.Lock()


def model_cache() -> ModelCache:
    """The process's shared cache (the dashboard's Playground and Evaluate previews use it)."""
    global _CACHE
    with _CACHE_LOCK:
        if _CACHE is None:
            _CACHE = ModelCache()
        return _CACHE
