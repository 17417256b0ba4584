"""Detect a dataset's format and normalise its records to chat ``messages`` rows. Pure functions.

Formats (the names the CLI and UI use):

- ``alpaca``: instruction / input / output (+ optional system, history [[user, assistant], ...])
- ``sharegpt``: conversations [{from: human|gpt|system|function_call|observation, value}] (+ tools)
- ``openai``: messages [{role, content}] with content a string or typed parts ([{type: text, text|value}])
- ``prompt_completion``: prompt/completion, question/answer, input/output, instruction/response(+context) (Dolly)
- ``text``: a ``text`` column (or a .txt file) for continued pre-training
- ``preference``: prompt/chosen/rejected, or conversations + chosen/rejected (DPO / ORPO objectives, not SFT)
- ``multiple_choice``: benchmark questions for Evaluate (never trained on). Layouts read: ``question`` + ``choices``
  list + ``answer`` (index, letter or the choice's text; MMLU / generic); ``question`` + letter columns ``A``, ``B``,
  ... + ``answer`` (MMLU CSV); ARC's ``question: {stem, choices: [{text, label}]}`` + ``answerKey`` and the flat
  ``choices: {text: [...], label: [...]}`` + ``answerKey`` (also OpenBookQA's ``question_stem``); HellaSwag's
  ``ctx`` (or ``ctx_a`` + ``ctx_b``) + ``endings`` + ``label`` (+ ``activity_label``); TruthfulQA-MC's ``question`` +
  ``mc1_targets`` and / or ``mc2_targets``

Normalised rows:

- sft: ``{"messages": [{"role": "system"|"user"|"assistant"|"tool", "content": str}, ...], "tools": [...]?}``
  (sharegpt ``function_call`` turns become assistant turns whose content is the call JSON; ``observation`` turns
  become ``tool`` turns)
- text: ``{"text": str}``
- preference: ``{"prompt": [messages...], "chosen": [assistant msg], "rejected": [assistant msg]}`` (TRL layout), plus
  ``"source": {...}`` when the record has one as an object (where the pair came from: Playground votes, an
  evaluation's rows — core.data.feedback; the trainer ignores it)
- multiple_choice: ``{"question": str, "choices": [str, ...], "answer": int (0-based)}`` plus ``"context": str`` when
  the source has a passage apart from the question. Numbers among the choices become text silently (math answers).
  What the reference harness's own formulation of the layout needs is kept beside it (``core.evaluate``'s ``native``
  style reads it): ``"layout"`` names a benchmark's own layout (``arc``, ``openbookqa``, ``hellaswag``,
  ``truthfulqa``; absent for the generic / MMLU layouts); ``"subject"`` (MMLU's subject, when the row has one);
  HellaSwag's raw ``"activity_label"``, ``"ctx_a"``, ``"ctx_b"``; TruthfulQA's ``"mc2": {"choices", "labels"}`` (the
  MC2 targets). A TruthfulQA row with only ``mc2_targets`` has ``"mc2_only": true``: its ``choices`` are the MC2
  choices and ``answer`` the first true one (for display; no MC1 accuracy is scored on it). Normalising a normalised
  row gives it back unchanged.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

from core.data.chat_formats import (
    PROMPT_COMPLETION_PAIRS,
    _alpaca,
    _openai,
    _preference,
    _prompt_completion,
    _sharegpt,
    _text,
)
from core.data.fields import RowError
from core.data.multiple_choice import _multiple_choice

FORMATS = ("alpaca", "sharegpt", "openai", "prompt_completion", "text", "preference", "multiple_choice")
KIND_OF_FORMAT = {
    "alpaca": "sft",
    "sharegpt": "sft",
    "openai": "sft",
    "prompt_completion": "sft",
    "text": "text",
    "preference": "preference",
    "multiple_choice": "multiple_choice",
}
# the training objectives that learn from preference pairs (a "preference" dataset's rows); core.train.config's
# objectives, named here because the data layer (and Estimate, Evaluate) sit below core.train
PREFERENCE_OBJECTIVES = ("dpo", "orpo")
# the canonical field names a column map may target, per format
CANONICAL_FIELDS = {
    "alpaca": ("instruction", "input", "output", "system", "history"),
    "sharegpt": ("conversations", "system", "tools"),
    "openai": ("messages", "tools"),
    "prompt_completion": ("prompt", "completion", "system", "context"),
    "text": ("text",),
    "preference": ("prompt", "chosen", "rejected", "conversations", "system"),
    "multiple_choice": ("question", "choices", "answer", "context"),
}


# ---------------------------------------------------------------------------------------------------------- detect
def detect_format(records: Iterable[Any], sample: int = 200) -> str | None:
    """The most likely format of the records (a majority vote over the first ``sample`` dict records), or None."""
    votes: Counter[str] = Counter()
    for n, rec in enumerate(records):
        if n >= sample:
            break
        if isinstance(rec, dict):
            fmt = detect_record_format(rec)
            if fmt:
                votes[fmt] += 1
    return votes.most_common(1)[0][0] if votes else None


def detect_record_format(rec: dict) -> str | None:
    keys = {k for k, v in rec.items() if v is not None}
    if "chosen" in keys and "rejected" in keys:
        return "preference"
    if "messages" in keys and isinstance(rec.get("messages"), list):
        return "openai"
    if "conversations" in keys and isinstance(rec.get("conversations"), list):
        return "sharegpt"
    if "instruction" in keys and "output" in keys:
        return "alpaca"
    if _looks_multiple_choice(rec, keys):  # before prompt/completion: question + answer + choices is a benchmark
        return "multiple_choice"
    for p, c, _ctx in PROMPT_COMPLETION_PAIRS:
        if p in keys and c in keys:
            return "prompt_completion"
    if "text" in keys and isinstance(rec.get("text"), str):
        return "text"
    if "content" in keys and isinstance(rec.get("content"), str) and len(keys) <= 3:
        return "text"
    return None


def _looks_multiple_choice(rec: dict, keys: set[str]) -> bool:
    """One of the multiple-choice benchmark layouts (see the module docstring)."""
    question = rec.get("question")
    if isinstance(question, dict) and "stem" in question:  # ARC's original JSONL
        return True
    if isinstance(rec.get("mc1_targets"), dict) or isinstance(rec.get("mc2_targets"), dict):  # TruthfulQA-MC
        return True
    if "endings" in keys and ("ctx" in keys or "ctx_a" in keys):  # HellaSwag
        return True
    if "question" not in keys and "question_stem" not in keys:
        return False
    choices = rec.get("choices")
    if isinstance(choices, (list, dict)) or (isinstance(choices, str) and choices.lstrip().startswith("[")):
        return True
    return "A" in keys and "B" in keys  # MMLU CSV: one column per lettered option


def describe_columns(records: Iterable[Any], sample: int = 200) -> list[str]:
    """Column names seen in the first records (for the column mapper)."""
    seen: dict[str, None] = {}
    for n, rec in enumerate(records):
        if n >= sample:
            break
        if isinstance(rec, dict):
            for k in rec:
                seen.setdefault(str(k), None)
    return list(seen)


def apply_column_map(rec: Any, column_map: dict[str, str] | None) -> Any:
    """Rename source columns to canonical names: ``column_map`` is {canonical field: source column}."""
    if not column_map or not isinstance(rec, dict):
        return rec
    out = dict(rec)
    for canonical, source in column_map.items():
        if not source or source == canonical:
            continue
        if source in rec:
            out[canonical] = rec[source]
            if source not in column_map:  # don't leave the old name to confuse detection
                out.pop(source, None)
    return out


# ------------------------------------------------------------------------------------------------------- normalise
def normalise_record(rec: Any, fmt: str) -> tuple[dict, list[tuple[str, str]]]:
    """One raw record -> (normalised row, warnings [(code, reason)]). Raises RowError if it cannot be represented."""
    if not isinstance(rec, dict):
        raise RowError("not_an_object", f"is a JSON {type(rec).__name__}, not an object with fields")
    warnings: list[tuple[str, str]] = []
    normalise = _NORMALISERS.get(fmt)
    if normalise is None:
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    return normalise(rec, warnings), warnings


_NORMALISERS = {
    "alpaca": _alpaca,
    "sharegpt": _sharegpt,
    "openai": _openai,
    "prompt_completion": _prompt_completion,
    "text": _text,
    "preference": _preference,
    "multiple_choice": _multiple_choice,
}
