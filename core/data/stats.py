"""Token-length statistics with a model's tokenizer (batched), a histogram, and the preview with the loss mask."""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

Progress = Callable[..., Any]
TOKEN_STAT_KEYS = ("model", "total_tokens", "rows", "min", "mean", "p50", "p95", "max", "over_max_length", "max_length")


def multiple_choice_text(row: dict) -> tuple[str, str]:
    """A multiple-choice row as a person reads it: (the context, the question and its lettered options ending in
    "Answer:", then " B. <text of the gold choice>"). For the Data tab's preview and token counts; Evaluate renders
    the exact benchmark prompts itself (core.evaluate.multiple_choice)."""
    letters = [chr(ord("A") + i) if i < 26 else str(i) for i in range(len(row["choices"]))]
    lines = [row["context"].strip(), ""] if (row.get("context") or "").strip() else []
    lines.append(row["question"].strip())
    lines += [f"{letter}. {choice}" for letter, choice in zip(letters, row["choices"])]
    lines.append("Answer:")
    gold = row["answer"]
    return "\n".join(lines), f" {letters[gold]}. {row['choices'][gold]}"


def training_text(tokenizer, row: dict) -> str:
    """The exact text a row is trained on (chat template for conversations, the text itself for plain text).
    Multiple-choice questions are never trained on: their text is the question with its options and the answer."""
    from core.data.chat import render_text

    if "text" in row:
        return row["text"]
    if "choices" in row:
        return "".join(multiple_choice_text(row))
    if "messages" in row:
        return render_text(tokenizer, row["messages"], row.get("tools"))
    # preference: prompt + chosen, the longer of the two sequences a DPO step sees
    return render_text(tokenizer, list(row["prompt"]) + list(row["chosen"]))


def _render_batch(tokenizer, rows: Sequence[dict]) -> list[str]:
    """Training texts of many rows. Conversations without tools go through one batched ``apply_chat_template`` call
    (the same template rendering as ``chat.render_text``, without the per-call overhead)."""
    texts: list[str | None] = [None] * len(rows)
    plain_idx, plain_convs = [], []
    for i, r in enumerate(rows):
        if "messages" in r and not r.get("tools"):
            plain_idx.append(i)
            plain_convs.append(r["messages"])
        else:
            texts[i] = training_text(tokenizer, r)
    if plain_convs:
        rendered = tokenizer.apply_chat_template(plain_convs, tokenize=False, add_generation_prompt=False)
        for i, t in zip(plain_idx, rendered):
            texts[i] = t
    return texts  # type: ignore[return-value]


def _count_tokens(tokenizer, texts: list[str]) -> list[int]:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and hasattr(backend, "encode_batch_fast"):  # Rust, no offsets: the fastest path
        return [len(e.ids) for e in backend.encode_batch_fast(texts, add_special_tokens=False)]
    enc = tokenizer(texts, add_special_tokens=False, return_attention_mask=False)
    return [len(ids) for ids in enc["input_ids"]]


def token_lengths(tokenizer, rows: Sequence[dict], *, batch_size: int = 2000, progress: Progress | None = None,
                  progress_range: tuple[float, float] = (0.0, 1.0)) -> list[int]:
    """Token count of each row as trained (chat template applied), rendered and tokenised in batches."""
    lengths: list[int] = []
    total = len(rows)
    lo, hi = progress_range
    for start in range(0, total, batch_size):
        batch = rows[start : start + batch_size]
        lengths.extend(_count_tokens(tokenizer, _render_batch(tokenizer, batch)))
        if progress is not None:
            done = min(total, start + batch_size)
            progress(lo + (hi - lo) * done / max(1, total), desc=f"counting tokens: {done:,} of {total:,} rows")
    return lengths


def percentile(sorted_values: Sequence[int], q: float) -> float:
    """Linear-interpolated percentile (numpy's default) of already sorted values."""
    if not sorted_values:
        return 0.0
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = math.ceil(pos)
    return float(sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo))


def summarise_lengths(lengths: Sequence[int], *, model: str, max_length: int) -> dict:
    """The ``Dataset.meta["token_stats"]`` dict (keys: TOKEN_STAT_KEYS). ``total_tokens`` counts tokens as trained,
    i.e. each row capped at ``max_length``."""
    s = sorted(lengths)
    n = len(s)
    return {
        "model": model,
        "total_tokens": int(sum(min(x, max_length) for x in s)),
        "rows": n,
        "min": int(s[0]) if n else 0,
        "mean": round(sum(s) / n, 1) if n else 0.0,
        "p50": round(percentile(s, 50), 1),
        "p95": round(percentile(s, 95), 1),
        "max": int(s[-1]) if n else 0,
        "over_max_length": int(sum(1 for x in s if x > max_length)),
        "max_length": int(max_length),
    }


def histogram(lengths: Sequence[int], bins: int = 30) -> list[dict]:
    """[{"start", "end", "label", "rows"}] equal-width bins over the lengths (for a bar plot)."""
    if not lengths:
        return []
    lo, hi = min(lengths), max(lengths)
    width = max(1, math.ceil((hi - lo + 1) / bins))
    counts: dict[int, int] = {}
    for x in lengths:
        b = (x - lo) // width
        counts[b] = counts.get(b, 0) + 1
    out = []
    for b in range(max(counts) + 1):
        start = lo + b * width
        out.append({"start": start, "end": start + width - 1, "label": f"{start}-{start + width - 1}",
                    "rows": counts.get(b, 0)})
    return out


def loss_mask_segments(tokenizer, row: dict, max_length: int | None = None) -> list[tuple[str, str]]:
    """The row rendered as training text, cut into (text, label) segments: "trained" for tokens that carry loss,
    "masked" for the rest, "truncated" for tokens past max_length (never seen in training); a multiple-choice row is
    two segments, "question" (context, question, lettered options) and "answer" (the gold one). The mask comes from the
    training worker's own ``tokenize_conversation``, so the preview is exactly what is trained; the text of each
    segment is cut from the rendered string by token offsets (no re-decoding, so multi-byte characters survive)."""
    from core.data.chat import answer_only_mask, assistant_char_spans, tokenize_conversation

    if "chosen" in row and "rejected" in row:  # a preference pair: prompt + chosen, then prompt + rejected
        prompt = list(row.get("prompt") or [])
        prompt_spans = sum(1 for m in prompt if m.get("role") == "assistant")
        out: list[tuple[str, str | None]] = []
        for side in ("chosen", "rejected"):
            messages = prompt + list(row[side])
            full, _spans = assistant_char_spans(tokenizer, messages, None)
            enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
            mask = answer_only_mask(tokenize_conversation(tokenizer, messages, None).assistant_mask, prompt_spans)
            if out:
                out.append(("\n\n", None))
            out.extend(_segments(full, enc["offset_mapping"], mask, max_length, trained=side))
        return out
    if "choices" in row:  # a multiple-choice question (for Evaluate): nothing is trained; show the gold answer
        question, answer = multiple_choice_text(row)
        return [(question, "question"), (answer, "answer")]
    if "text" in row:  # plain text: every token is trained
        full = row["text"]
        enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
        mask = [1] * len(enc["input_ids"])
    else:
        messages = row["messages"] if "messages" in row else list(row["prompt"]) + list(row["chosen"])
        tools = row.get("tools")
        full, _spans = assistant_char_spans(tokenizer, messages, tools)
        enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
        mask = tokenize_conversation(tokenizer, messages, None, tools).assistant_mask
    return _segments(full, enc["offset_mapping"], mask, max_length)


def _segments(full: str, offsets, mask: list[int], max_length: int | None,
              trained: str = "trained") -> list[tuple[str, str]]:
    """Cut ``full`` into (text, label) runs by token offsets: ``trained`` where the mask is set, "masked" elsewhere,
    "truncated" past max_length."""
    labels = []
    for t in range(len(offsets)):
        if max_length is not None and t >= max_length:
            labels.append("truncated")
        else:
            labels.append(trained if t < len(mask) and mask[t] else "masked")
    segments: list[tuple[str, str]] = []
    pos = 0
    for (_start, end), label in zip(offsets, labels):
        end = max(end, pos)
        piece = full[pos:end]  # includes any gap before the token (spaces the offsets skip)
        pos = end
        if not piece:
            continue
        if segments and segments[-1][1] == label:
            segments[-1] = (segments[-1][0] + piece, label)
        else:
            segments.append((piece, label))
    if pos < len(full):
        tail_label = segments[-1][1] if segments else "masked"
        segments.append((full[pos:], tail_label))
    return segments
