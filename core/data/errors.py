"""Errors and per-row problems of the data layer."""
from __future__ import annotations

from dataclasses import dataclass


class DatasetError(ValueError):
    """A dataset cannot be used at all (missing, unreadable, no usable rows). The message says why and what to do."""


@dataclass(frozen=True)
class RowProblem:
    """One thing wrong with one row. ``row`` is 1-based: the line number for JSONL/TXT, the record position for a
    JSON array / CSV / Parquet / Hub dataset."""

    row: int
    code: str
    reason: str


# code -> (short title, always dropped?) ; rows with a "fatal" problem cannot be represented and are always dropped,
# the others are dropped only when the user asks for it (drop_invalid).
PROBLEM_CODES: dict[str, tuple[str, bool]] = {
    "malformed_json": ("malformed JSON line", True),
    "not_an_object": ("row is not a JSON object", True),
    "missing_field": ("required field missing or empty", True),
    "bad_content": ("content is not text", True),
    # kept on request: a prompts-only set is something to evaluate or try in the Playground (training skips such rows)
    "no_assistant_turn": ("conversation has no assistant answer", False),
    "empty_turn": ("a turn has empty content", False),
    "role_order": ("roles out of order", False),
    "non_string_content": ("non-string content converted to text", False),
    "duplicate": ("duplicate of an earlier row", False),
    "too_long": ("longer than the max length (would be truncated)", False),
    "unfilled_placeholder": ("template placeholder like {{name}} left unfilled", False),
}


def is_fatal(code: str) -> bool:
    return PROBLEM_CODES.get(code, ("", True))[1]
