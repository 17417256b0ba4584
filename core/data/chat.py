"""Render chat ``messages`` through a model's chat template and mark which tokens carry loss.

Loss goes on assistant turns only. Chat templates rarely carry ``{% generation %}`` markers, so the assistant spans
are found by rendering prefixes: the tokens between "conversation up to this turn + generation prompt" and
"conversation including this turn" belong to the assistant. This works for any template whose rendering of a
prefix is a prefix of the full rendering (ChatML, Llama, Mistral, Gemma, Qwen ...); if a template breaks that, the
function falls back to marking the text of the assistant content by character offsets.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

Message = dict[str, Any]


@dataclass
class TokenizedConversation:
    input_ids: list[int]
    assistant_mask: list[int]  # 1 = this token is predicted with loss
    truncated: bool

    @property
    def num_loss_tokens(self) -> int:
        return sum(self.assistant_mask)


def _render(tokenizer, messages: Sequence[Message], add_generation_prompt: bool, tools=None) -> str:
    kwargs = {"tokenize": False, "add_generation_prompt": add_generation_prompt}
    if tools:
        kwargs["tools"] = tools
    return tokenizer.apply_chat_template(list(messages), **kwargs)


def render_text(tokenizer, messages: Sequence[Message], tools=None) -> str:
    """The exact training text of a conversation."""
    return _render(tokenizer, messages, False, tools)


def assistant_char_spans(tokenizer, messages: Sequence[Message], tools=None) -> tuple[str, list[tuple[int, int]]]:
    """Full rendered text and the [start, end) character spans that belong to assistant turns."""
    full = _render(tokenizer, messages, False, tools)
    spans: list[tuple[int, int]] = []
    for i, msg in enumerate(messages):
        if msg.get("role") != "assistant":
            continue
        before = _render(tokenizer, messages[:i], True, tools) if i else ""
        upto = _render(tokenizer, messages[: i + 1], False, tools)
        if full.startswith(upto) and upto.startswith(before):
            spans.append((len(before), len(upto)))
        else:  # template is not prefix-stable: fall back to locating the content itself
            content = _content_text(msg.get("content"))
            start = full.find(content, spans[-1][1] if spans else 0)
            if start >= 0:
                spans.append((start, start + len(content)))
    return full, spans


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return "" if content is None else str(content)


def tokenize_conversation(tokenizer, messages: Sequence[Message], max_length: int | None = None,
                          tools=None) -> TokenizedConversation:
    """Token ids of the rendered conversation and a 0/1 mask of the assistant (loss) tokens."""
    full, spans = assistant_char_spans(tokenizer, messages, tools)
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = enc["input_ids"]
    mask = [0] * len(ids)
    if spans:
        offsets = enc["offset_mapping"]
        si = 0
        for t, (start, end) in enumerate(offsets):
            while si < len(spans) and spans[si][1] <= start:
                si += 1
            if si < len(spans) and start >= spans[si][0] and end <= spans[si][1] and end > start:
                mask[t] = 1
    truncated = False
    if max_length is not None and len(ids) > max_length:
        ids, mask, truncated = ids[:max_length], mask[:max_length], True
    return TokenizedConversation(ids, mask, truncated)


def answer_only_mask(mask: list[int], prompt_spans: int) -> list[int]:
    """The assistant mask kept only from the (prompt_spans+1)-th assistant span on: a preference pair's answer, not
    the prompt's own earlier assistant turns."""
    out = [0] * len(mask)
    span = -1
    prev = 0
    for i, m in enumerate(mask):
        if m and not prev:
            span += 1
        if m and span >= prompt_spans:
            out[i] = 1
        prev = m
    return out
