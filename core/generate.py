"""Load models and generate: shared by Evaluate, the Playground, Deploy's smoke test and the CLI.

* :func:`resolve_source` turns what a person picked — ``default`` / a Hub id / a model folder, a finished training
  run (``run:7`` or ``7``), an adapter folder — into a :class:`ModelSource`: a base model plus, for LoRA/QLoRA, an
  adapter.
* :class:`ModelCache` keeps loaded base models under a memory budget (least recently used first out). Adapters of
  one base load into that base's PEFT model under their own names, so base and tuned share the weights.
* :class:`BatchDecoder` generates for many rows at once — each row with its own adapter (PEFT's ``adapter_names``;
  ``"__base__"`` = no adapter), so base and tuned come out of one forward pass per token. Rows that finish leave the
  batch (their KV cache rows are dropped). Greedy or temperature/top-p sampling with a per-request seed.
* :func:`stream` drives decoders for several slots and yields text deltas as tokens arrive (the Playground);
  :func:`generate` returns whole texts (Evaluate, the CLI).

Model code never runs in the dashboard's request threads without a lock per loaded model; loading is refused up front
when the model would not fit the cache's budget (``FTS_MODEL_CACHE_GB``, default 40 % of the machine's memory).
"""
from __future__ import annotations

import json
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

BASE_ADAPTER = "__base__"  # PEFT's name for "no adapter" in a mixed-adapter batch


class GenerateError(ValueError):
    """A model that cannot be used as asked, or a prompt that cannot be generated from; the message says why."""


# ---- what to load --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelSource:
    """A model a person can pick: a base model, optionally with a LoRA adapter on top."""

    label: str  # what to show: "SmolLM2-135M-Instruct (embedded)", "run #7 demo-lora", "adapter …/adapter"
    base: str  # a model reference core.models.resolve_model understands (an endpoint's served model name)
    adapter: str | None = None  # adapter folder (LoRA/QLoRA runs)
    run_id: int | None = None
    endpoint: str | None = None  # an OpenAI-compatible server's base URL (…/v1): a running deployment

    @property
    def key(self) -> str:
        return f"{self.endpoint}|{self.base}" if self.endpoint else f"{self.base}|{self.adapter or ''}"


def _adapter_base(adapter_dir: Path) -> str:
    """The base model an adapter was trained on: our train_config.yaml first, then PEFT's adapter_config.json."""
    cfg = adapter_dir / "train_config.yaml"
    if cfg.is_file():
        import yaml

        data = yaml.safe_load(cfg.read_text(encoding="utf-8")) or {}
        if data.get("base_model"):
            return str(data["base_model"])
    try:
        data = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise GenerateError(f"{adapter_dir} has no readable adapter_config.json ({exc})") from None
    base = data.get("base_model_name_or_path")
    if not base:
        raise GenerateError(f"{adapter_dir}/adapter_config.json does not name its base model "
                            "(base_model_name_or_path); pick the base model explicitly")
    return str(base)


def source_for_run(run_id: int) -> ModelSource:
    """A finished training run as a model: base + its adapter, or its full fine-tuned model folder."""
    from core import runs

    try:
        run = runs.get_run(run_id)
    except runs.JobError as exc:
        raise GenerateError(str(exc)) from None
    if run.kind != "train":
        raise GenerateError(f"run {run_id} is a {run.kind} job, not a training run")
    if not run.adapter_path or not Path(run.adapter_path).is_dir():
        raise GenerateError(f"run {run_id} has no trained adapter or model to load (status {run.status}"
                            + (f": {run.error.splitlines()[0]}" if run.error else "") + ")")
    label = f"run #{run.id} {run.name}"
    if run.method == "full":
        return ModelSource(label, run.adapter_path, None, run.id)
    return ModelSource(label, run.base_model or "default", run.adapter_path, run.id)


def resolve_source(text: str | None) -> ModelSource:
    """``default`` / a Hub id / a model folder; ``run:7`` or ``7`` (a training run); an adapter folder. A running
    deployment (``deployment:3``) is a source only where its endpoint can serve: the Playground and ``python -m core
    generate`` resolve it (core.deploy.sources), everything else is told to name the run it serves."""
    from core.models import DEFAULT_MODEL_NAME, ModelNotFoundError, resolve_model

    ref = (text or "").strip() or "default"
    low = ref.lower()
    if low.startswith("deployment:"):
        raise GenerateError(f"'{ref}' is a deployment's endpoint, which only the Playground and `python -m core "
                            "generate` can use: name the run it serves, a model or an adapter folder here")
    if low.startswith(("run:", "#")) or ref.isdigit():
        digits = ref.split(":", 1)[-1].lstrip("#").strip()
        if not digits.isdigit():
            raise GenerateError(f"'{ref}' is not a run id (use run:7 or 7)")
        return source_for_run(int(digits))
    from core.access import PathNotAllowed, locate

    try:  # the one resolver first: in a shared studio a folder outside the allowed roots is refused unopened
        loc = locate(ref, "the model folder")
    except PathNotAllowed as exc:
        raise GenerateError(str(exc)) from None
    p = loc.path if loc.kind == "path" else None
    if p is not None and p.is_dir() and (p / "adapter_config.json").is_file():
        from core.models import check_safe_to_load

        try:
            check_safe_to_load(p)  # safetensors only, as for every folder a user points at
            base = _adapter_base(p)
            # the base an adapter names (its adapter_config.json is the uploader's text) passes the resolver too
            resolve_model(base, prepare_default=False, what=f"the base model named by adapter {p.name}")
        except ModelNotFoundError as exc:
            raise GenerateError(str(exc)) from None
        return ModelSource(f"adapter {p}", base, str(p))
    try:
        resolved = resolve_model(ref, prepare_default=False)
    except ModelNotFoundError as exc:
        raise GenerateError(str(exc)) from None
    label = f"{DEFAULT_MODEL_NAME} (embedded)" if resolved.kind == "default" else resolved.display_name
    return ModelSource(label, ref, None)


# ---- loaded models -------------------------------------------------------------------------------------------------

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


# ---- prompts -------------------------------------------------------------------------------------------------------

def render_prompt(tokenizer, messages: Sequence[dict]) -> str:
    """The conversation so far + the assistant's generation prompt, through the model's own chat template."""
    if not getattr(tokenizer, "chat_template", None):
        raise GenerateError("this model's tokenizer has no chat template, so a conversation cannot be turned into "
                            "its prompt; use a chat/instruct model or a run trained with a prompt template")
    return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)


def prompt_ids(tokenizer, messages: Sequence[dict]) -> list[int]:
    return tokenizer(render_prompt(tokenizer, messages), add_special_tokens=False)["input_ids"]


def stop_token_ids(loaded: LoadedBase, tokenizer=None) -> set[int]:
    ids: set[int] = set()
    tok = tokenizer if tokenizer is not None else loaded.tokenizer
    if tok.eos_token_id is not None:
        ids.add(int(tok.eos_token_id))
    gen = getattr(loaded.model, "generation_config", None)
    eos = getattr(gen, "eos_token_id", None) if gen is not None else None
    for x in eos if isinstance(eos, (list, tuple)) else [eos]:
        if x is not None:
            ids.add(int(x))
    for t in ("<|im_end|>", "<|eot_id|>", "<|end|>", "</s>"):
        tid = tok.convert_tokens_to_ids(t) if t in tok.get_vocab() else None
        if tid is not None and tid != tok.unk_token_id:
            ids.add(int(tid))
    return ids


# ---- generation ----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class GenSettings:
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int = 0

    def validated(self) -> GenSettings:
        if self.max_new_tokens < 1:
            raise GenerateError(f"max new tokens must be at least 1 (got {self.max_new_tokens})")
        if self.temperature < 0:
            raise GenerateError(f"temperature must not be negative (got {self.temperature})")
        if not 0 < self.top_p <= 1:
            raise GenerateError(f"top-p must be in (0, 1] (got {self.top_p})")
        return self


MIN_SHARED_PREFIX = 16  # shorter common prefixes are not worth a separate forward pass


def shared_prefix_len(prompts: Sequence[Sequence[int]]) -> int:
    """Tokens every prompt starts with, leaving each at least one token of its own."""
    if not prompts:
        return 0
    first = prompts[0]
    n = min(len(p) for p in prompts) - 1
    for p in prompts[1:]:
        k = 0
        while k < n and p[k] == first[k]:
            k += 1
        n = k
        if n == 0:
            break
    return max(n, 0)


@dataclass
class RowState:
    prompt_len: int
    adapter: str
    tokens: list[int] = field(default_factory=list)
    done: bool = False
    first_token_s: float | None = None
    end_s: float | None = None
    # its own decoding time: its share of every forward pass it took part in after its first token (rows decoded in
    # one batch split a pass's time; another decoder's passes are not its time) and how many passes that was
    decode_s: float = 0.0
    decode_steps: int = 0


class BatchDecoder:
    """Greedy/sampled decoding of many rows on one loaded model, each row with its own adapter; rows that finish
    leave the batch. ``step()`` advances every unfinished row by one token."""

    def __init__(self, loaded: LoadedBase, prompts: Sequence[Sequence[int]], adapters: Sequence[str | None],
                 settings: GenSettings, *, started: float | None = None, tokenizers: Sequence[Any] | None = None):
        import torch

        self.loaded = loaded
        self.settings = settings.validated()
        self.started = started if started is not None else time.perf_counter()
        self.rows = [RowState(len(p), a or BASE_ADAPTER) for p, a in zip(prompts, adapters)]
        self.tokenizers = [t if t is not None else loaded.tokenizer
                           for t in (tokenizers or [None] * len(self.rows))]
        stops: dict[int, set[int]] = {}
        for t in self.tokenizers:
            if id(t) not in stops:
                stops[id(t)] = stop_token_ids(loaded, t)
        self.row_stop_ids = [stops[id(t)] for t in self.tokenizers]
        self.stop_ids = set().union(*self.row_stop_ids) if self.row_stop_ids else set()
        limit = loaded.max_positions
        for p in prompts:
            if not p:
                raise GenerateError("the prompt is empty")
            if limit and len(p) + settings.max_new_tokens > limit:
                raise GenerateError(f"the prompt is {len(p)} tokens; with {settings.max_new_tokens} new tokens it "
                                    f"exceeds the model's context of {limit} tokens — shorten it or lower max new "
                                    "tokens")
        self._prompts = [list(p) for p in prompts]
        self.active = list(range(len(prompts)))  # row index of each batch position
        self._gen = torch.Generator().manual_seed(int(settings.seed))
        self._cache = None
        self._mask = None
        self._next_pos = None
        self._logits = None
        self.forward_passes = 0

    @property
    def done(self) -> bool:
        return not self.active

    def _forward(self, **kw):
        import torch

        model = self.loaded.model
        if self.loaded.is_peft:
            kw["adapter_names"] = [self.rows[i].adapter for i in self.active]
        with self.loaded.lock, torch.no_grad():
            out = model(**kw, use_cache=True, logits_to_keep=1)
        self.forward_passes += 1
        return out

    def _pad_id(self) -> int:
        pad = self.loaded.tokenizer.pad_token_id
        return pad if pad is not None else (self.loaded.tokenizer.eos_token_id or 0)

    def _prefill(self) -> None:
        prefix = shared_prefix_len(self._prompts)
        if prefix >= MIN_SHARED_PREFIX and len(self._prompts) > 1:
            self._prefill_shared(prefix)
        else:
            self._prefill_plain()

    def _prefill_shared(self, prefix: int) -> None:
        """Prompts that start alike (a system prompt, a few-shot header) share that prefix's KV cache: it is computed
        once per adapter, copied to every row, and only the rest of each prompt is prefilled, as
        [prefix | padding | rest] with the padding masked out and positions continuing after the prefix."""
        import torch

        device = next(self.loaded.model.parameters()).device
        names = list(dict.fromkeys(self.rows[i].adapter for i in self.active))
        head = torch.tensor([self._prompts[0][:prefix]] * len(names), device=device)
        positions = torch.arange(prefix, device=device)[None].expand(len(names), -1)
        saved = self.active
        self.active = [next(i for i in saved if self.rows[i].adapter == n) for n in names]  # one row per adapter
        out = self._forward(input_ids=head, attention_mask=torch.ones_like(head), position_ids=positions)
        self.active = saved
        cache = out.past_key_values
        cache.batch_select_indices(torch.tensor([names.index(self.rows[i].adapter) for i in saved], device=device))
        rests = [p[prefix:] for p in self._prompts]
        longest = max(len(r) for r in rests)
        ids = torch.full((len(rests), longest), self._pad_id(), dtype=torch.long)
        mask = torch.zeros((len(rests), prefix + longest), dtype=torch.long)
        pos = torch.full((len(rests), longest), prefix, dtype=torch.long)
        mask[:, :prefix] = 1
        for i, r in enumerate(rests):
            ids[i, longest - len(r):] = torch.tensor(r)
            mask[i, prefix + longest - len(r):] = 1
            pos[i, longest - len(r):] = torch.arange(prefix, prefix + len(r))
        ids, mask, pos = ids.to(device), mask.to(device), pos.to(device)
        out = self._forward(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache)
        self._cache, self._mask = out.past_key_values, mask
        self._next_pos = pos[:, -1] + 1
        self._logits = out.logits[:, -1, :].float()

    def _prefill_plain(self) -> None:
        import torch

        device = next(self.loaded.model.parameters()).device
        pad = self._pad_id()
        longest = max(len(p) for p in self._prompts)
        ids = torch.full((len(self._prompts), longest), pad, dtype=torch.long)
        mask = torch.zeros((len(self._prompts), longest), dtype=torch.long)
        for i, p in enumerate(self._prompts):
            ids[i, longest - len(p):] = torch.tensor(p)
            mask[i, longest - len(p):] = 1
        ids, mask = ids.to(device), mask.to(device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = self._forward(input_ids=ids, attention_mask=mask, position_ids=positions)
        self._cache, self._mask = out.past_key_values, mask
        self._next_pos = positions[:, -1] + 1
        self._logits = out.logits[:, -1, :].float()

    def _choose(self, logits):
        import torch

        s = self.settings
        if s.temperature <= 0:
            return logits.argmax(-1)
        probs = torch.softmax(logits / s.temperature, dim=-1)
        if s.top_p < 1.0:
            sorted_p, order = probs.sort(dim=-1, descending=True)
            keep = sorted_p.cumsum(-1) - sorted_p < s.top_p
            sorted_p = sorted_p * keep
            probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
        return torch.multinomial(probs.cpu(), 1, generator=self._gen).squeeze(-1).to(logits.device)

    def step(self) -> list[tuple[int, int]]:
        """Advance every unfinished row by one token. Returns (row index, token id) for the tokens produced."""
        import torch

        if self.done:
            return []
        if self._cache is None:
            self._prefill()
        chosen = self._choose(self._logits).tolist()
        now = time.perf_counter()
        produced, keep = [], []
        for pos, (row_i, tok) in enumerate(zip(self.active, chosen)):
            row = self.rows[row_i]
            if row.first_token_s is None:
                row.first_token_s = now - self.started
            if tok in self.row_stop_ids[row_i]:
                row.done, row.end_s = True, now - self.started
                continue
            row.tokens.append(tok)
            produced.append((row_i, tok))
            if len(row.tokens) >= self.settings.max_new_tokens:
                row.done, row.end_s = True, now - self.started
            else:
                keep.append(pos)
        if len(keep) < len(self.active):  # finished rows leave the batch
            self.active = [self.active[p] for p in keep]
            if not keep:
                return produced
            idx = torch.tensor(keep, device=self._mask.device)
            self._cache.batch_select_indices(idx)
            self._mask = self._mask[idx]
            self._next_pos = self._next_pos[idx]
            chosen = [chosen[p] for p in keep]
        device = self._mask.device
        t0 = time.perf_counter()
        new = torch.tensor(chosen, dtype=torch.long, device=device)[:, None]
        self._mask = torch.cat([self._mask, torch.ones_like(new)], dim=1)
        out = self._forward(input_ids=new, attention_mask=self._mask, position_ids=self._next_pos[:, None],
                            past_key_values=self._cache)
        self._cache = out.past_key_values
        self._next_pos = self._next_pos + 1
        self._logits = out.logits[:, -1, :].float()
        share = (time.perf_counter() - t0) / len(self.active)
        for row_i in self.active:
            self.rows[row_i].decode_s += share
            self.rows[row_i].decode_steps += 1
        return produced

    def run(self) -> list[RowState]:
        while not self.done:
            self.step()
        return self.rows

    def text(self, pos: int) -> str:
        return self.tokenizers[pos].decode(self.rows[pos].tokens, skip_special_tokens=True)


class EndpointDecoder:
    """One conversation streamed from an OpenAI-compatible endpoint (a running deployment) through
    ``huggingface_hub.InferenceClient``, read by a background thread; ``step()`` takes what has arrived, so it
    interleaves with local decoders in :func:`stream`. Each streamed delta counts as a token."""

    remote = True

    def __init__(self, source: ModelSource, messages: Sequence[dict], settings: GenSettings, *,
                 started: float | None = None):
        import queue

        self.settings = settings.validated()
        self.started = started if started is not None else time.perf_counter()
        self.rows = [RowState(0, "endpoint")]
        self._parts: list[str] = []
        self._queue: queue.Queue = queue.Queue()
        self._cancel = threading.Event()
        self._endpoint = source.endpoint
        self.active = [0]
        self._thread = threading.Thread(target=self._read, args=(source, list(messages)), daemon=True)
        self._thread.start()

    def _read(self, source: ModelSource, messages: list[dict]) -> None:
        s = self.settings
        chunks = None
        try:
            from huggingface_hub import InferenceClient

            client = InferenceClient(base_url=source.endpoint, timeout=300)
            chunks = client.chat_completion(messages=messages, model=source.base, max_tokens=s.max_new_tokens,
                                            temperature=s.temperature, top_p=s.top_p if s.top_p < 1 else None,
                                            seed=s.seed, stream=True)
            for chunk in chunks:
                if self._cancel.is_set():  # the page went away: stop reading, so the server stops generating
                    break
                delta = chunk.choices[0].delta.content if chunk.choices else None
                if delta:
                    self._queue.put(delta)
            self._queue.put(None)
        except Exception as exc:  # noqa: BLE001 - the endpoint's failure is this side's message
            self._queue.put(GenerateError(f"the endpoint {source.endpoint} failed: {type(exc).__name__}: "
                                          f"{str(exc)[:300]}"))
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:  # noqa: BLE001, S110 - closing a finished or broken stream
                    pass

    def close(self) -> None:
        """Stop reading the stream (the consumer is gone)."""
        self._cancel.set()
        self.active = []

    @property
    def done(self) -> bool:
        return not self.active

    def step(self, timeout_s: float = 0.0) -> list[tuple[int, int]]:
        import queue

        if self.done:
            return []
        items = []
        try:
            items.append(self._queue.get(timeout=timeout_s) if timeout_s > 0 else self._queue.get_nowait())
            while True:
                items.append(self._queue.get_nowait())
        except queue.Empty:
            pass
        if not items and not self._thread.is_alive() and self._queue.empty():
            self.active = []
            raise GenerateError(f"the stream from {self._endpoint} ended without a word")
        row = self.rows[0]
        now = time.perf_counter() - self.started
        for item in items:
            if item is None:
                row.done, row.end_s, self.active = True, now, []
                break
            if isinstance(item, Exception):
                self.active = []
                raise item
            row.first_token_s = now if row.first_token_s is None else row.first_token_s
            row.tokens.append(0)
            self._parts.append(item)
            row.end_s = now
        return [(0, 0)] * len(items)

    def text(self, pos: int) -> str:
        return "".join(self._parts)


@dataclass
class SideResult:
    label: str
    text: str
    tokens: int
    time_to_first_token_s: float | None
    tokens_per_s: float | None
    error: str | None = None

    def as_dict(self) -> dict:
        return dict(label=self.label, text=self.text, tokens=self.tokens,
                    time_to_first_token_s=self.time_to_first_token_s, tokens_per_s=self.tokens_per_s,
                    error=self.error)


def _rate(row: RowState) -> float | None:
    """A finished row's tokens per second over its own decoding time (RowState.decode_s): a side that stops early
    is not charged the time the other side went on decoding, nor another model's passes. A remote endpoint's rows
    (no passes here) are timed from their first token to their last."""
    if row.first_token_s is None or row.end_s is None or len(row.tokens) < 2:
        return None
    if row.decode_steps:
        return row.decode_steps / row.decode_s if row.decode_s > 0 else None
    span = row.end_s - row.first_token_s
    return (len(row.tokens) - 1) / span if span > 0 else None


def stream(slots: Sequence[Slot], conversations: Sequence[Sequence[dict]], settings: GenSettings
           ) -> Iterator[list[SideResult]]:
    """Generate for each (slot, conversation) pair at once, yielding every side's text so far after each token.

    Slots that share a loaded base model decode in one batch (base and adapters side by side via adapter names);
    different bases decode in turn, one token each, so every side streams."""
    started = time.perf_counter()
    groups: dict[int, list[int]] = {}
    decoders: list[tuple[BatchDecoder | EndpointDecoder, list[int]]] = []
    results = [SideResult(s.source.label, "", 0, None, None) for s in slots]
    for i, slot in enumerate(slots):
        if slot.loaded is None:  # an endpoint streams on its own
            decoders.append((EndpointDecoder(slot.source, conversations[i], settings, started=started), [i]))
        else:
            groups.setdefault(id(slot.loaded), []).append(i)
    for members in groups.values():
        loaded = slots[members[0]].loaded
        prompts: dict[int, list[int]] = {}
        for i in members:
            try:
                prompts[i] = prompt_ids(slots[i].tok, conversations[i])
            except GenerateError as exc:
                results[i].error = str(exc)
        ok = [i for i in members if i in prompts]
        if not ok:
            continue
        try:
            dec = BatchDecoder(loaded, [prompts[i] for i in ok], [slots[i].adapter_name for i in ok], settings,
                               started=started, tokenizers=[slots[i].tok for i in ok])
        except GenerateError as exc:
            for i in ok:
                results[i].error = str(exc)
            continue
        decoders.append((dec, ok))
    try:
        while any(not d.done for d, _ in decoders):
            # endpoints wait a little for their next delta only when no local model is decoding (no busy loop)
            only_remote = all(getattr(d, "remote", False) for d, _ in decoders if not d.done)
            changed = False
            for dec, members in decoders:
                if dec.done:
                    continue
                try:
                    produced = dec.step(timeout_s=0.05) if only_remote else dec.step()
                    changed = changed or bool(produced) or dec.done
                except GenerateError as exc:
                    for i in members:
                        results[i].error = str(exc)
                    dec.active, changed = [], True
                except Exception as exc:  # noqa: BLE001 - a model failing mid-way ends that side only, with why
                    for i in members:
                        results[i].error = f"{type(exc).__name__}: {str(exc)[:300]}"
                    dec.active, changed = [], True
                for pos, i in enumerate(members):
                    row = dec.rows[pos]
                    results[i].text = dec.text(pos)
                    results[i].tokens = len(row.tokens)
                    results[i].time_to_first_token_s = row.first_token_s
                    results[i].tokens_per_s = _rate(row)
            if changed:
                yield [SideResult(**r.__dict__) for r in results]
        if not decoders:
            yield results
    finally:  # the consumer stopped early (a closed page) or we are done: no endpoint keeps streaming
        for dec, _ in decoders:
            close = getattr(dec, "close", None)
            if close is not None:
                close()


def generate(source: ModelSource | str, messages: Sequence[dict], settings: GenSettings | None = None, *,
             cache: ModelCache | None = None) -> SideResult:
    """One answer from one model (the CLI's ``generate``; Deploy's smoke test compares against it)."""
    src = resolve_source(source) if isinstance(source, str) else source
    slot = (cache or model_cache()).slot(src)
    result = None
    for sides in stream([slot], [messages], settings or GenSettings()):
        result = sides[0]
    if result.error:
        raise GenerateError(result.error)
    return result


def generate_rows(loaded: LoadedBase, prompts: Sequence[Sequence[int]], adapters: Sequence[str | None],
                  settings: GenSettings, *, batch_size: int = 16, on_batch=None,
                  tokenizers: Sequence[Any] | None = None) -> list[RowState]:
    """Many prompts, length-sorted into batches (similar lengths pad less), each row with its adapter; returns the
    rows in the input order. Evaluate uses it with every prompt twice: once per adapter (base and tuned)."""
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[RowState | None] = [None] * len(prompts)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        dec = BatchDecoder(loaded, [prompts[i] for i in idx], [adapters[i] for i in idx], settings,
                           tokenizers=[tokenizers[i] for i in idx] if tokenizers else None)
        for i, row in zip(idx, dec.run()):
            out[i] = row
        if on_batch:
            on_batch(min(start + batch_size, len(order)), len(order))
    return out  # type: ignore[return-value]


def decode(loaded: LoadedBase, row: RowState, tokenizer=None) -> str:
    return (tokenizer if tokenizer is not None else loaded.tokenizer).decode(row.tokens, skip_special_tokens=True)
