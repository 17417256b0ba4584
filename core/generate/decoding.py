"""Batched decoding: :class:`BatchDecoder` generates for many rows at once — each row with its own adapter (PEFT's
``adapter_names``; ``"__base__"`` = no adapter), so base and tuned come out of one forward pass per token. Rows that
finish leave the batch (their KV cache rows are dropped); prompts that start alike share their prefix's KV cache.
Greedy or temperature/top-p sampling with a per-request seed. :func:`generate_rows` batches many prompts (Evaluate)."""
from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from core.generate.cache import BASE_ADAPTER, LoadedBase
from core.generate.errors import GenerateError
from core.generate.prompts import stop_token_ids


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
