"""Detect a dataset's format and normalise its records to chat ``messages`` rows. Pure functions.

Formats (the names the CLI and UI use):

- ``alpaca``: instruction / input / output (+ optional system, history [[user, assistant], ...])
- ``sharegpt``: conversations [{from: human|gpt|system|function_call|observation, value}] (+ tools)
- ``openai``: messages [{role, content}] with content a string or typed parts ([{type: text, text|value}])
- ``prompt_completion``: prompt/completion, question/answer, input/output, instruction/response(+context) (Dolly)
- ``text``: a ``text`` column (or a .txt file) for continued pre-training
- ``preference``: prompt/chosen/rejected, or conversations + chosen/rejected (stored for DPO; not used for SFT)

Normalised rows:

- sft: ``{"messages": [{"role": "system"|"user"|"assistant"|"tool", "content": str}, ...], "tools": [...]?}``
  (sharegpt ``function_call`` turns become assistant turns whose content is the call JSON; ``observation`` turns
  become ``tool`` turns)
- text: ``{"text": str}``
- preference: ``{"prompt": [messages...], "chosen": [assistant msg], "rejected": [assistant msg]}`` (TRL layout)
"""
from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from typing import Any

FORMATS = ("alpaca", "sharegpt", "openai", "prompt_completion", "text", "preference")
KIND_OF_FORMAT = {
    "alpaca": "sft",
    "sharegpt": "sft",
    "openai": "sft",
    "prompt_completion": "sft",
    "text": "text",
    "preference": "preference",
}
# the canonical field names a column map may target, per format
CANONICAL_FIELDS = {
    "alpaca": ("instruction", "input", "output", "system", "history"),
    "sharegpt": ("conversations", "system", "tools"),
    "openai": ("messages", "tools"),
    "prompt_completion": ("prompt", "completion", "system", "context"),
    "text": ("text",),
    "preference": ("prompt", "chosen", "rejected", "conversations", "system"),
}
# prompt/completion-like column pairs, first match wins: (prompt column, completion column, context column)
PROMPT_COMPLETION_PAIRS = (
    ("prompt", "completion", None),
    ("question", "answer", "context"),
    ("instruction", "response", "context"),
    ("query", "response", None),
    ("input", "output", None),
    ("input", "target", None),
    ("source", "target", None),
)
SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "model": "assistant",
    "bot": "assistant",
    "chatgpt": "assistant",
    "bing": "assistant",
    "system": "system",
    "function_call": "assistant",
    "observation": "tool",
    "tool": "tool",
    "function": "tool",
}
OPENAI_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant", "tool": "tool",
                "function": "tool"}


class RowError(Exception):
    """A record that cannot be normalised; ``code`` is one of errors.PROBLEM_CODES."""

    def __init__(self, code: str, reason: str):
        super().__init__(reason)
        self.code = code
        self.reason = reason


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
    for p, c, _ctx in PROMPT_COMPLETION_PAIRS:
        if p in keys and c in keys:
            return "prompt_completion"
    if "text" in keys and isinstance(rec.get("text"), str):
        return "text"
    if "content" in keys and isinstance(rec.get("content"), str) and len(keys) <= 3:
        return "text"
    return None


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


def _alpaca(rec: dict, warnings: list) -> dict:
    instruction = _as_text(rec.get("instruction"), "instruction", warnings, required=False)
    inp = _as_text(rec.get("input"), "input", warnings, required=False)
    output = _as_text(rec.get("output"), "output", warnings, required=True)
    prompt = "\n\n".join(s for s in (instruction, inp) if s.strip())
    if not prompt.strip():
        raise RowError("missing_field", "'instruction' and 'input' are both empty")
    messages = []
    system = _as_text(rec.get("system"), "system", warnings, required=False)
    if system.strip():
        messages.append({"role": "system", "content": system})
    history = rec.get("history") or []
    if not isinstance(history, list):
        raise RowError("bad_content", "'history' must be a list of [user, assistant] pairs")
    for i, pair in enumerate(history):
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise RowError("bad_content", f"'history[{i}]' must be a [user, assistant] pair")
        messages.append({"role": "user", "content": _as_text(pair[0], f"history[{i}][0]", warnings, required=False)})
        messages.append({"role": "assistant",
                         "content": _as_text(pair[1], f"history[{i}][1]", warnings, required=False)})
    messages.append({"role": "user", "content": prompt})
    messages.append({"role": "assistant", "content": output})
    return {"messages": messages}


def _parse_tools(value: Any) -> list | None:
    if value in (None, "", []):
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise RowError("bad_content", "'tools' is not valid JSON") from None
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        raise RowError("bad_content", "'tools' must be a list of function definitions")
    return value or None


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


def _sharegpt(rec: dict, warnings: list) -> dict:
    messages = _turns(rec.get("conversations"), "conversations", "from", "value", SHAREGPT_ROLES, warnings)
    system = _as_text(rec.get("system"), "system", warnings, required=False)
    if system.strip() and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": system})
    row: dict = {"messages": messages}
    tools = _parse_tools(rec.get("tools"))
    if tools:
        row["tools"] = tools
    return row


def _openai(rec: dict, warnings: list) -> dict:
    messages = _turns(rec.get("messages"), "messages", "role", "content", OPENAI_ROLES, warnings)
    row: dict = {"messages": messages}
    tools = _parse_tools(rec.get("tools") or rec.get("functions"))
    if tools:
        row["tools"] = tools
    return row


def _prompt_completion(rec: dict, warnings: list) -> dict:
    found = next(((p, c, ctx) for p, c, ctx in PROMPT_COMPLETION_PAIRS if p in rec and c in rec), None)
    if found is None:
        raise RowError("missing_field", "no prompt/completion pair of fields (prompt/completion, question/answer, ...)")
    p, c, ctx = found
    prompt_value, completion_value = rec.get(p), rec.get(c)
    # TRL's conversational prompt/completion: both sides already lists of messages
    if (isinstance(prompt_value, list) and prompt_value and isinstance(prompt_value[0], dict)
            and "role" in prompt_value[0]):
        messages = _turns(prompt_value, p, "role", "content", OPENAI_ROLES, warnings)
        if isinstance(completion_value, list):
            messages += _turns(completion_value, c, "role", "content", OPENAI_ROLES, warnings)
        else:
            messages.append({"role": "assistant", "content": _as_text(completion_value, c, warnings, required=True)})
        return {"messages": messages}
    prompt = _as_text(prompt_value, p, warnings, required=True)
    completion = _as_text(completion_value, c, warnings, required=True)
    context = _as_text(rec.get(ctx), ctx, warnings, required=False) if ctx else ""
    if context.strip():
        prompt = f"{prompt}\n\n{context}"
    messages = []
    system = _as_text(rec.get("system"), "system", warnings, required=False)
    if system.strip():
        messages.append({"role": "system", "content": system})
    messages += [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]
    return {"messages": messages}


def _text(rec: dict, warnings: list) -> dict:
    key = "text" if "text" in rec else "content"
    return {"text": _as_text(rec.get(key), key, warnings, required=True)}


def _assistant_list(value: Any, where: str, warnings: list) -> list[dict]:
    if isinstance(value, dict):  # LLaMA-Factory: {"from": "gpt", "value": ...}
        msgs = _turns([value], where, "from", "value", {**SHAREGPT_ROLES, **OPENAI_ROLES}, warnings)
    elif isinstance(value, list):
        msgs = _turns(value, where, "role", "content", {**SHAREGPT_ROLES, **OPENAI_ROLES}, warnings)
    else:
        msgs = [{"role": "assistant", "content": _as_text(value, where, warnings, required=True)}]
    if not any(m["content"].strip() for m in msgs if m["role"] == "assistant"):
        raise RowError("missing_field", f"'{where}' has no assistant answer")
    return [m for m in msgs if m["role"] == "assistant"] if len(msgs) > 1 and msgs[0]["role"] != "assistant" else msgs


def _preference(rec: dict, warnings: list) -> dict:
    if isinstance(rec.get("conversations"), list):
        prompt = _turns(rec["conversations"], "conversations", "from", "value", SHAREGPT_ROLES, warnings)
    elif isinstance(rec.get("prompt"), list):
        prompt = _turns(rec["prompt"], "prompt", "role", "content", OPENAI_ROLES, warnings)
    elif rec.get("prompt") is not None or rec.get("instruction") is not None or rec.get("question") is not None:
        key = ("prompt" if rec.get("prompt") is not None
               else ("instruction" if rec.get("instruction") is not None else "question"))
        text = _as_text(rec.get(key), key, warnings, required=True)
        extra = _as_text(rec.get("input"), "input", warnings, required=False) if key == "instruction" else ""
        prompt = [{"role": "user", "content": "\n\n".join(s for s in (text, extra) if s.strip())}]
    else:
        prompt = []  # implicit prompt: chosen/rejected are full conversations (Anthropic HH style)
    system = _as_text(rec.get("system"), "system", warnings, required=False)
    if system.strip() and (not prompt or prompt[0]["role"] != "system"):
        prompt.insert(0, {"role": "system", "content": system})
    chosen = _assistant_list(rec.get("chosen"), "chosen", warnings)
    rejected = _assistant_list(rec.get("rejected"), "rejected", warnings)
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


_NORMALISERS = {
    "alpaca": _alpaca,
    "sharegpt": _sharegpt,
    "openai": _openai,
    "prompt_completion": _prompt_completion,
    "text": _text,
    "preference": _preference,
}
