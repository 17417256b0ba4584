"""The normalisers of the formats that become chat ``messages`` (alpaca, sharegpt, openai, prompt_completion), plain
``text``, and ``preference`` pairs (TRL layout). See core.data.formats for the formats and the normalised rows.
"""
from __future__ import annotations

import json
from typing import Any

from core.data.fields import RowError, _as_text, _turns

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
    row = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
    if isinstance(rec.get("source"), dict) and rec["source"]:  # where a pair came from (votes, an evaluation's rows):
        row["source"] = rec["source"]  # kept with the row, shown by the Data tab, ignored by the trainer
    return row
