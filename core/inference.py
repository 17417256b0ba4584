"""A causal LM prepared for fast inference with several LoRA adapters applied per batch row.

PEFT can run a batch whose rows use different adapters (``adapter_names=[…]``), but on a CPU its per-call hooks and
index juggling cost about as much as the model itself for a two-row decode step. Here every ``nn.Linear`` of the
base model becomes a :class:`DecodeLinear` that

* computes the base product with ``torch.mm(W, xᵀ)`` for a few rows — measured on this project's 2-core CPU (MKL):
  the LM head of SmolLM2 (49152×576) takes 3.2 ms for 2 rows that way against 23 ms through ``F.linear``, and a
  one-row LM head is fastest as a two-row product (3.2 ms against 9.9 ms); a whole 2-row decode step drops from
  93 ms to 46 ms (1 row: 56 ms), so base and tuned decoded together each run faster than either model alone;
* adds each row's own LoRA delta, ``(x Aᵀ) Bᵀ · scale``, for the rows that use that adapter (``"__base__"``: none).

:class:`FastLoraModel` wraps the model with PEFT's calling convention (``adapter_names=`` in ``forward``,
``peft_config``, ``get_base_model()``), so the decoder, Evaluate's loss and the multiple-choice scorer use it as they
would a ``PeftModel``. Adapters it cannot apply exactly (DoRA, extra trained modules such as embeddings, non-Linear
targets) are refused with :class:`UnsupportedAdapter`, and the caller uses PEFT for that model instead. On a GPU the
small-batch trick is off (``F.linear`` throughout); the per-row LoRA still applies.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

BASE_ADAPTER = "__base__"
FEW_ROWS = 64  # up to this many rows the mm form is as fast or faster (measured: M=2..64)
WIDE_OUTPUT = 16384  # a one-row product this wide runs faster as a two-row one
TOKEN_DELTA = ".token_adapter.trainable_tokens_delta"  # PEFT's name for trained new-token rows  # noqa: S105 - a module name, not a password


class UnsupportedAdapter(ValueError):
    """An adapter this fast path cannot apply exactly; use PEFT for it."""


class DecodeLinear(nn.Module):
    """``nn.Linear`` with the few-rows matmul and per-row LoRA deltas."""

    def __init__(self, linear: nn.Linear, owner: FastLoraModel):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = linear.weight
        self.bias = linear.bias
        self.loras: dict[str, tuple[torch.Tensor, torch.Tensor, float]] = {}
        self.tokens: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # adapter -> (token ids, their output rows)
        object.__setattr__(self, "_owner", owner)  # not a submodule: no cycle in .modules()

    @classmethod
    def from_conv1d(cls, conv, owner: FastLoraModel) -> DecodeLinear:
        """transformers' ``Conv1D`` (GPT-2: ``y = x·W + b`` with W stored [in, out]) as a linear layer."""
        lin = nn.Linear(conv.weight.shape[0], conv.weight.shape[1], bias=conv.bias is not None,
                        device="meta")
        self = cls(lin, owner)
        self.weight = nn.Parameter(conv.weight.detach().t(), requires_grad=False)
        self.bias = conv.bias
        return self

    def _base(self, flat: torch.Tensor) -> torch.Tensor:
        n = flat.shape[0]
        if not self._owner.few_rows_mm or n > FEW_ROWS:
            return nn.functional.linear(flat, self.weight, self.bias)
        if n == 1 and self.out_features >= WIDE_OUTPUT:
            y = torch.mm(self.weight, flat.expand(2, -1).t()).t()[:1]
        else:
            y = torch.mm(self.weight, flat.t()).t()
        return y + self.bias if self.bias is not None else y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        y = self._base(flat)
        if self.loras:
            for name, idx in self._owner.row_groups(x):
                lora = self.loras.get(name)
                if lora is None:
                    continue
                a, b, scale = lora
                sub = flat if idx is None else flat.index_select(0, idx)
                delta = torch.mm(torch.mm(sub, a.t()), b.t()) * scale
                if idx is None:
                    y = y + delta
                else:
                    y = y.index_add(0, idx, delta)
        if self.tokens:  # an LM head with trained rows for new tokens: those logits per adapter row
            for name, idx in self._owner.row_groups(x):
                tok = self.tokens.get(name)
                if tok is None:
                    continue
                ids, rows = tok
                sub = flat if idx is None else flat.index_select(0, idx)
                logits = torch.mm(sub, rows.t())
                if self.bias is not None:
                    logits = logits + self.bias[ids]
                if idx is None:
                    y[:, ids] = logits
                else:
                    y[idx[:, None], ids[None, :]] = logits
        return y.reshape(*x.shape[:-1], self.out_features)


class DecodeEmbedding(nn.Module):
    """``nn.Embedding`` whose rows for some token ids are replaced per batch row (an adapter's trained new-token
    embeddings, PEFT's trainable tokens)."""

    def __init__(self, emb: nn.Embedding, owner: FastLoraModel):
        super().__init__()
        self.weight = emb.weight
        self.num_embeddings, self.embedding_dim = emb.num_embeddings, emb.embedding_dim
        self.padding_idx = emb.padding_idx
        self.tokens: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        object.__setattr__(self, "_owner", owner)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        y = nn.functional.embedding(ids, self.weight, self.padding_idx)
        rows = self._owner._rows
        if not self.tokens or not rows:
            return y
        for name, (tok_ids, vectors) in self.tokens.items():
            sel = [i for i, r in enumerate(rows) if r == name]
            if not sel:
                continue
            lut = torch.full((max(int(tok_ids.max()) + 1, 1),), -1, dtype=torch.long, device=ids.device)
            lut[tok_ids] = torch.arange(len(tok_ids), device=ids.device)
            batch = ids if ids.dim() == 2 else ids[None]
            for i in sel:
                row = batch[i]
                pos = torch.where(row < lut.shape[0], lut[row.clamp(max=lut.shape[0] - 1)], -1)
                hit = pos >= 0
                if bool(hit.any()):
                    target = y[i] if ids.dim() == 2 else y
                    target[hit] = vectors[pos[hit]].to(target.dtype)
        return y


class FastLoraModel(nn.Module):
    """A causal LM whose linears are :class:`DecodeLinear`; ``forward(…, adapter_names=[…])`` like PEFT."""

    def __init__(self, model: nn.Module, *, few_rows_mm: bool | None = None):
        super().__init__()
        self.model = model
        self.peft_config: dict[str, dict] = {}
        self.few_rows_mm = (next(model.parameters()).device.type == "cpu") if few_rows_mm is None else few_rows_mm
        self._rows: list[str] | None = None
        self._groups: dict[tuple, list] = {}
        self.linears: dict[str, DecodeLinear] = {}
        self.embeddings: dict[str, DecodeEmbedding] = {}
        try:
            from transformers.pytorch_utils import Conv1D
        except ImportError:  # pragma: no cover
            Conv1D = ()
        emb = model.get_input_embeddings()
        for name, module in list(model.named_modules()):
            for child_name, child in list(module.named_children()):
                full = f"{name}.{child_name}" if name else child_name
                if type(child) is nn.Linear:
                    fast = DecodeLinear(child, self)
                elif Conv1D and type(child) is Conv1D:
                    fast = DecodeLinear.from_conv1d(child, self)
                elif child is emb and type(child) is nn.Embedding:
                    self.embeddings[full] = DecodeEmbedding(child, self)
                    setattr(module, child_name, self.embeddings[full])
                    continue
                else:
                    continue
                setattr(module, child_name, fast)
                self.linears[full] = fast

    # what callers of a PeftModel / a transformers model read
    @property
    def config(self):
        return self.model.config

    @property
    def generation_config(self):
        return self.model.generation_config

    @property
    def device(self):
        return next(self.model.parameters()).device

    def get_base_model(self) -> nn.Module:
        return self.model

    def row_groups(self, x: torch.Tensor) -> list[tuple[str, torch.Tensor | None]]:
        """For this forward's rows: (adapter name, flat token indices or None for every token) per adapter."""
        rows = self._rows
        if not rows:
            return []
        batch = x.shape[0] if x.dim() >= 2 else 1
        per_row = x.numel() // x.shape[-1] // max(batch, 1)
        key = (batch, per_row)
        groups = self._groups.get(key)
        if groups is None:
            groups = []
            names = [r for r in dict.fromkeys(rows) if r and r != BASE_ADAPTER]
            for name in names:
                sel = [i for i, r in enumerate(rows) if r == name]
                if len(sel) == len(rows):
                    groups.append((name, None))
                else:
                    base = torch.tensor(sel, device=x.device)[:, None] * per_row
                    idx = (base + torch.arange(per_row, device=x.device)[None, :]).reshape(-1)
                    groups.append((name, idx))
            self._groups[key] = groups
        return groups

    def forward(self, *args, adapter_names: list[str] | None = None, **kwargs):
        if adapter_names is not None:
            unknown = [n for n in adapter_names if n not in self.peft_config and n not in (BASE_ADAPTER, None)]
            if unknown:
                raise ValueError(f"unknown adapter {unknown[0]!r} (loaded: {', '.join(self.peft_config) or 'none'})")
        self._rows, self._groups = (list(adapter_names) if adapter_names is not None else None), {}
        try:
            return self.model(*args, **kwargs)
        finally:
            self._rows, self._groups = None, {}

    def load_adapter(self, adapter_dir: str | Path, adapter_name: str) -> None:
        """Load a LoRA adapter folder (PEFT's format) under ``adapter_name``; UnsupportedAdapter if it is not plain
        LoRA on linear layers."""
        from safetensors.torch import load_file

        from core.models import AdapterReadError, adapter_weights_file, read_adapter_config

        try:
            cfg = read_adapter_config(adapter_dir)
            why = unsupported_reason(cfg)
            if why:
                raise UnsupportedAdapter(why)
            weights = adapter_weights_file(adapter_dir)
        except AdapterReadError as exc:
            raise UnsupportedAdapter(str(exc)) from None
        tensors = load_file(str(weights))
        r, scale = int(cfg["r"]), lora_scale(cfg)
        try:
            pairs, token_rows = split_adapter_tensors(tensors)
        except ValueError as exc:
            raise UnsupportedAdapter(f"{exc} (extra trained modules)") from None
        dtype, device = self.model.dtype, self.device
        tokens = self._token_rows(cfg, token_rows, dtype, device)
        loaded = {}
        for module, ab in pairs.items():
            lin = self.linears.get(module)
            if lin is None or set(ab) != {"lora_A", "lora_B"}:
                raise UnsupportedAdapter(f"adapter targets {module}, which is not a linear layer of this model")
            a, b = ab["lora_A"].to(device, dtype), ab["lora_B"].to(device, dtype)
            if a.shape != (r, lin.in_features) or b.shape != (lin.out_features, r):
                raise UnsupportedAdapter(f"adapter shapes for {module} do not fit the model ({tuple(a.shape)}, "
                                         f"{tuple(b.shape)})")
            loaded[module] = (a, b, scale)
        for module, lora in loaded.items():
            self.linears[module].loras[adapter_name] = lora
        for layer, rows in tokens:
            layer.tokens[adapter_name] = rows
        self.peft_config[adapter_name] = cfg

    def _token_rows(self, cfg: dict, saved: dict[str, torch.Tensor], dtype, device) -> list:
        """(layer, (token ids, rows)) for an adapter's trained new-token rows (PEFT ``trainable_token_indices``)."""
        spec = cfg.get("trainable_token_indices")
        if not spec:
            if saved:
                raise UnsupportedAdapter("the adapter has trained token rows but no trainable_token_indices")
            return []
        out = []
        for module, rows in saved.items():
            ids = token_ids_for(spec, module)
            layer = self.embeddings.get(module) or self.linears.get(module)
            if ids is None or layer is None:
                raise UnsupportedAdapter(f"trained token rows for {module}, which this model has no embedding or "
                                         "LM head for")
            ids_t = torch.tensor(list(ids), dtype=torch.long, device=device)
            width = layer.weight.shape[0]
            if rows.shape != (len(ids_t), layer.weight.shape[1]) or int(ids_t.max()) >= width:
                raise UnsupportedAdapter(f"trained token rows for {module} ({tuple(rows.shape)}) do not fit the model "
                                         f"({width} rows): grow its vocabulary first")
            out.append((layer, (ids_t, rows.to(device, dtype))))
        if isinstance(spec, dict):  # a tied LM head has no saved rows of its own: it reads the embedding's
            head = self.model.get_output_embeddings()
            emb = self.model.get_input_embeddings()
            if head is not None and head.weight is emb.weight and not any(lay is head for lay, _ in out):
                for lay, rows in list(out):
                    if lay is emb:
                        out.append((head, rows))
        return out


def token_ids_for(spec, module: str) -> list[int] | None:
    """The token ids PEFT's ``trainable_token_indices`` trains in ``module`` (a list: the input embedding's; a dict
    keyed by module short names; a tied LM head's rows are saved under the embedding's indices)."""
    if not spec:
        return None
    if not isinstance(spec, dict):
        return [int(i) for i in spec]
    ids = spec.get(module.rsplit(".", 1)[-1])
    if ids is None and len(spec) == 1:
        ids = next(iter(spec.values()))
    return [int(i) for i in ids] if ids is not None else None


def lora_scale(cfg: dict[str, Any]) -> float:
    r, alpha = int(cfg["r"]), float(cfg.get("lora_alpha", cfg["r"]))
    return alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r


def split_adapter_tensors(tensors: dict[str, Any]) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """A PEFT LoRA adapter's saved tensors as ({module: {"lora_A": A, "lora_B": B}}, {module: new-token rows}), module
    names without PEFT's ``base_model.model.`` prefix. ValueError names a tensor that is neither."""
    pairs: dict[str, dict[str, Any]] = {}
    token_rows: dict[str, Any] = {}
    for key, t in tensors.items():
        if key.endswith(TOKEN_DELTA):
            token_rows[key.removesuffix(TOKEN_DELTA).removeprefix("base_model.model.")] = t
            continue
        for part in ("lora_A", "lora_B"):
            marker = f".{part}."
            if marker in key:
                pairs.setdefault(key.split(marker)[0].removeprefix("base_model.model."), {})[part] = t
                break
        else:
            raise ValueError(f"adapter tensor {key} is not a LoRA A/B matrix or trained token rows")
    return pairs, token_rows


def unsupported_reason(cfg: dict[str, Any]) -> str | None:
    if str(cfg.get("peft_type", "LORA")).upper() != "LORA":
        return f"a {cfg.get('peft_type')} adapter (only LoRA is applied by the fast path)"
    for key, what in (("use_dora", "DoRA"), ("modules_to_save", "extra trained modules"),
                      ("layer_replication", "layer replication"), ("lora_bias", "LoRA biases")):
        if cfg.get(key):
            return f"uses {what}"
    if cfg.get("rank_pattern") or cfg.get("alpha_pattern"):
        return "uses per-module ranks"
    return None
