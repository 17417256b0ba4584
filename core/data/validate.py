"""Validate normalised rows and fill ``{{placeholder}}`` templates. Pure functions over rows."""
from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from typing import Any

PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


def row_strings(row: dict) -> Iterable[str]:
    """Every trainable string in a normalised row."""
    if "text" in row:
        yield row["text"]
        return
    if "choices" in row:  # a multiple-choice question
        yield from (row.get("context") or "", row["question"], *row["choices"])
        return
    for key in ("messages", "prompt", "chosen", "rejected"):
        for m in row.get(key) or ():
            yield m["content"]


def find_placeholders(rows: Iterable[dict], limit: int = 50_000) -> list[str]:
    """Names of ``{{name}}`` placeholders found in the rows (sorted)."""
    names: set[str] = set()
    for n, row in enumerate(rows):
        if n >= limit:
            break
        for s in row_strings(row):
            if "{{" in s:
                names.update(PLACEHOLDER.findall(s))
    return sorted(names)


def fill_placeholders(row: dict, values: dict[str, str]) -> dict:
    """A copy of the row with ``{{name}}`` replaced by ``values[name]`` (unknown names are left as they are)."""
    if not values:
        return row

    def sub(s: str) -> str:
        if "{{" not in s:
            return s
        return PLACEHOLDER.sub(lambda m: str(values[m.group(1)]) if m.group(1) in values else m.group(0), s)

    if "text" in row:
        return {**row, "text": sub(row["text"])}
    if "choices" in row:
        filled = {**row, "question": sub(row["question"]), "choices": [sub(c) for c in row["choices"]]}
        if "context" in row:
            filled["context"] = sub(row["context"])
        return filled
    out = dict(row)
    for key in ("messages", "prompt", "chosen", "rejected"):
        if key in row:
            out[key] = [{**m, "content": sub(m["content"])} for m in row[key]]
    return out


def check_conversation(messages: list[dict]) -> list[tuple[str, str]]:
    """Problems of one chat conversation: [(code, reason)]. Empty list = fine."""
    problems: list[tuple[str, str]] = []
    if not any(m["role"] == "assistant" and m["content"].strip() for m in messages):
        problems.append(("no_assistant_turn", "has no assistant turn with content"))
        return problems
    for i, m in enumerate(messages):
        if not m["content"].strip():
            problems.append(("empty_turn", f"turn {i + 1} ({m['role']}) is empty"))
            break
    prev = None
    for i, m in enumerate(messages):
        role = m["role"]
        reason = None
        if role == "system" and i != 0:
            reason = f"turn {i + 1} is a system message after the conversation started"
        elif role == "user" and prev == "user":
            reason = f"turns {i} and {i + 1} are both user turns"
        elif role == "assistant" and prev in (None, "system"):
            reason = f"turn {i + 1}: the conversation starts with the assistant"
        elif role == "tool" and prev not in ("assistant", "tool"):
            reason = f"turn {i + 1}: a tool result that follows no assistant call"
        if reason:
            problems.append(("role_order", reason))
            break
        prev = role
    if messages[-1]["role"] not in ("assistant",) and not any(c == "role_order" for c, _ in problems):
        problems.append(("role_order", f"ends with a {messages[-1]['role']} turn that is never answered"))
    return problems


def check_row(row: dict, kind: str) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    if kind == "sft":
        problems += check_conversation(row["messages"])
    elif kind == "preference":
        if row["prompt"]:
            if not any(m["role"] == "user" for m in row["prompt"]):
                problems.append(("role_order", "the prompt has no user turn"))
        if row["chosen"] == row["rejected"]:
            problems.append(("missing_field", "'chosen' and 'rejected' are identical"))
    elif kind == "text":
        if not row["text"].strip():
            problems.append(("missing_field", "'text' is empty"))
    elif kind == "multiple_choice":  # the normaliser checked the layout; this guards rows built elsewhere
        choices, answer = row.get("choices"), row.get("answer")
        if not isinstance(choices, list) or len(choices) < 2:
            problems.append(("missing_field", "'choices' needs at least 2 options"))
        elif isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < len(choices):
            problems.append(("bad_content", f"'answer' is {answer!r} but there are only {len(choices)} choices"))
    for s in row_strings(row):
        if "{{" in s:
            found = PLACEHOLDER.findall(s)
            if found:
                problems.append(("unfilled_placeholder", "placeholder {{" + found[0] + "}} is not filled"))
                break
    return problems


def row_hash(row: dict) -> str:
    text = json.dumps(row, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def canonical_line(row: dict) -> str:
    return json.dumps(row, ensure_ascii=False, separators=(",", ":"))


def content_hash(rows: Iterable[dict], kind: str) -> str:
    """A hash of the rows that does not depend on their order (a shuffled copy is the same content)."""
    return content_hash_of_hashes((row_hash(r) for r in rows), kind)


def content_hash_of_hashes(row_hashes: Iterable[str], kind: str) -> str:
    h = hashlib.sha256(kind.encode())
    for rh in sorted(row_hashes):
        h.update(rh.encode())
    return h.hexdigest()


def json_safe(value: Any) -> Any:
    """Parquet/Hub records may hold numpy/arrow values; make them plain JSON types."""
    try:
        json.dumps(value)
        return value
    except TypeError:
        return json.loads(json.dumps(value, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))
