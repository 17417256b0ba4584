"""Streaming: :func:`stream` drives decoders for several slots and yields text deltas as tokens arrive (the
Playground); :func:`generate` returns one whole answer (the CLI, Deploy's smoke test)."""
from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from core.generate.cache import ModelCache, Slot, model_cache
from core.generate.decoding import BatchDecoder, GenSettings, RowState
from core.generate.errors import GenerateError
from core.generate.prompts import prompt_ids
from core.generate.remote import EndpointDecoder
from core.generate.sources import ModelSource, resolve_source


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
