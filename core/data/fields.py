"""Reading one field of a raw record: its text (numbers converted with a warning, typed parts joined), a list of chat
turns, and :class:`RowError` when a record cannot be represented. Shared by every format's normaliser.
"""
from __future__ import annotations

import json
from typing import Any


class RowError(Exception):
    """A record that cannot be normalised; ``code`` is one of errors.PROBLEM_CODES."""

    def __init__(self, code: str, reason: str):
        super().__init__(reason)
        self.code = code
        self.reason = reason


def _as_text(value: Any, where: str, warnings: list, *, required: bool) -> str:
    """A field's text. Numbers/bools are converted (with a warning); typed parts are joined; other types fail."""
    if value is None:
        if required:
            raise RowError("missing_field", f"'{where}' is missing")
        return ""
    if isinstance(value, str):
        text = value
    elif isinstance(value, bool) or isinstance(value, (int, float)):
        warnings.append(("non_string_content", f"'{where}' is a {type(value).__name__} ({value!r}); converted to text"))
        text = str(value)
    elif isinstance(value, list) and all(isinstance(p, dict) for p in value):
        parts = []
        for p in value:
            kind = p.get("type", "text")
            if kind not in ("text", "input_text", "output_text"):
                raise RowError("bad_content", f"'{where}' has a '{kind}' part; only text parts can be trained")
            t = p.get("text", p.get("value", p.get("content")))
            if not isinstance(t, str):
                raise RowError("bad_content", f"'{where}' has a text part without a string 'text'")
            parts.append(t)
        text = "".join(parts)
    else:
        raise RowError("bad_content", f"'{where}' is a {type(value).__name__}, not text")
    if required and not text.strip():
        raise RowError("missing_field", f"'{where}' is empty")
    return text


def _turns(turns: Any, where: str, role_key: str, content_key: str, role_map: dict, warnings: list) -> list[dict]:
    if not isinstance(turns, list):
        raise RowError("missing_field", f"'{where}' must be a list of turns")
    if not turns:
        raise RowError("missing_field", f"'{where}' is empty")
    messages = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise RowError("bad_content", f"'{where}[{i}]' is not an object")
        raw_role = turn.get(role_key, turn.get("role", turn.get("from")))
        role = role_map.get(str(raw_role).lower()) if raw_role is not None else None
        if role is None:
            raise RowError("bad_content", f"'{where}[{i}]' has unknown role {raw_role!r}")
        content = turn.get(content_key, turn.get("content", turn.get("value")))
        if content is None and role == "assistant" and turn.get("tool_calls"):
            content = json.dumps(turn["tool_calls"], ensure_ascii=False)
        elif str(raw_role).lower() == "function_call" and isinstance(content, (dict, list)):
            content = json.dumps(content, ensure_ascii=False)
        text = _as_text(content, f"{where}[{i}].{content_key}", warnings, required=False)
        messages.append({"role": role, "content": text})
    return messages
