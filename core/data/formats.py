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
- preference: ``{"prompt": [messages...], "chosen": [assistant msg], "rejected": [assistant msg]}`` (TRL layout)
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

import ast
import json
import string
from collections import Counter
from collections.abc import Iterable
from typing import Any

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


MC_ANSWER_FIELDS = ("answer", "answerKey", "label")  # the gold answer's column in the generic layouts, first wins
LETTERS = string.ascii_uppercase
MC_LAYOUTS = ("arc", "openbookqa", "hellaswag", "truthfulqa")  # benchmark layouts a row remembers ("layout")
HELLASWAG_FIELDS = ("activity_label", "ctx_a", "ctx_b")  # kept raw: the harness's HellaSwag prompt is built from them


def _choice_list(value: Any, where: str) -> list[str]:
    """The options of a question as text: a list (or a JSON / Python list written as text, as CSV exports hold)."""
    if isinstance(value, str) and value.lstrip().startswith("["):
        parsed: Any = None
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            try:
                parsed = ast.literal_eval(value.strip())  # a Python repr such as "['a', 'b']"; literals only
            except (ValueError, SyntaxError, MemoryError, RecursionError):
                raise RowError("bad_content", f"'{where}' is text that is not a list of options") from None
        value = parsed
    if value is None:
        raise RowError("missing_field", f"'{where}' is missing")
    if not isinstance(value, (list, tuple)):
        raise RowError("bad_content", f"'{where}' is a {type(value).__name__}, not a list of options")
    if len(value) < 2:
        raise RowError("missing_field", f"'{where}' needs at least 2 options (has {len(value)})")
    out = []
    for i, option in enumerate(value):
        if isinstance(option, bool) or not isinstance(option, (str, int, float)):
            if option is None:
                raise RowError("missing_field", f"'{where}[{i}]' is empty")
            raise RowError("bad_content", f"'{where}[{i}]' is a {type(option).__name__}, not text")
        text = option if isinstance(option, str) else str(option)  # numbers are plain answers in math questions
        if not text.strip():
            raise RowError("missing_field", f"'{where}[{i}]' is empty")
        out.append(text)
    return out


def _resolve_answer(value: Any, where: str, choices: list[str], labels: list[str] | None = None) -> int:
    """The 0-based index of the gold choice. ``value`` is an index, a letter (A = 0), a label from ``labels`` (ARC)
    or the text of a choice; a value that could mean two different choices is refused rather than guessed."""
    n = len(choices)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise RowError("missing_field", f"'{where}' is missing" if value is None else f"'{where}' is empty")
    if isinstance(value, float) and value.is_integer():  # Parquet / pandas give 2.0 for an index column with gaps
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise RowError("bad_content", f"'{where}' is a {type(value).__name__} ({value!r}), not an index, a letter "
                                      "or the text of a choice")
    if isinstance(value, int):
        if 0 <= value < n:
            return value
        raise RowError("bad_content", f"'{where}' is {value} but there are only {n} choices (indices 0-{n - 1})")
    text = value.strip()
    by_text = [i for i, c in enumerate(choices) if c.strip() == text]
    if labels is not None:
        if text in labels:
            return labels.index(text)
        if len(by_text) == 1:
            return by_text[0]
        if len(by_text) > 1:
            raise _ambiguous_text(where, text, choices, by_text)
        raise RowError("bad_content", f"'{where}' is {text!r} but the choices are labelled {', '.join(labels)}")
    if len(by_text) > 1:
        raise _ambiguous_text(where, text, choices, by_text)
    found: dict[int, str] = {}
    if by_text:
        found.setdefault(by_text[0], f"the text of choice {by_text[0]}")
    letter = len(text) == 1 and text.upper() in LETTERS
    if letter and LETTERS.index(text.upper()) < n:
        found.setdefault(LETTERS.index(text.upper()), f"letter {text.upper()}")
    digits = text.isascii() and text.isdigit()
    if digits and int(text) < n:
        found.setdefault(int(text), f"index {int(text)}")
    if len(found) == 1:
        return next(iter(found))
    if len(found) > 1:
        meanings = " or ".join(f"choice {i} ({how})" for i, how in sorted(found.items()))
        raise RowError("bad_content", f"'{where}' is {text!r}, which could mean {meanings}; write the 0-based index "
                                      "as a number")
    if letter:
        raise RowError("bad_content", f"'{where}' is {text!r} but there are only {n} choices (A-{LETTERS[n - 1]})")
    if digits:
        raise RowError("bad_content", f"'{where}' is {text!r} but there are only {n} choices (indices 0-{n - 1})")
    raise RowError("bad_content", f"'{where}' is {text!r}, which is not one of the {n} choices, nor a letter "
                                  f"A-{LETTERS[min(n, 26) - 1]} or an index 0-{n - 1}")


def _ambiguous_text(where: str, text: str, choices: list[str], matches: list[int]) -> RowError:
    shown = " / ".join(repr(choices[i]) for i in matches[:4])
    which = ", ".join(str(i) for i in matches[:-1]) + f" and {matches[-1]}"
    return RowError("bad_content", f"'{where}' is {text!r}, which matches choices {which} ({shown}) once spaces are "
                                   "trimmed; write the 0-based index as a number")


def _targets(value: Any, where: str) -> tuple[list[str], list[int]]:
    """TruthfulQA's ``{"choices": [...], "labels": [1, 0, ...]}``: (choices, 0/1 flags, one per choice)."""
    if not isinstance(value, dict):
        raise RowError("bad_content", f"'{where}' must be an object with 'choices' and 'labels'")
    choices = _choice_list(value.get("choices"), f"{where}.choices")
    flags = value.get("labels")
    if (not isinstance(flags, list) or len(flags) != len(choices)
            or any(isinstance(f, bool) or f not in (0, 1) for f in flags)):
        raise RowError("bad_content", f"'{where}.labels' must be {len(choices)} flags 0/1, one per choice")
    return choices, [int(f) for f in flags]


def _letter_columns(rec: dict) -> list[str]:
    """MMLU CSV: options in columns A, B, C, ... (a row may leave the last ones empty, never one in the middle)."""
    options: list[str] = []
    for letter in LETTERS:
        if letter not in rec:
            break
        value = rec[letter]
        if value is None or (isinstance(value, str) and not value.strip()):
            later = [x for x in LETTERS[LETTERS.index(letter) + 1:] if str(rec.get(x) or "").strip()]
            if later:
                raise RowError("missing_field", f"option '{letter}' is empty but option '{later[0]}' is not")
            break
        options.append(value if isinstance(value, str) else str(value))
    if len(options) < 2:
        raise RowError("missing_field", f"needs at least 2 options in columns A, B, ... (has {len(options)})")
    return options


def _multiple_choice(rec: dict, warnings: list) -> dict:
    labels: list[str] | None = None
    layout: str | None = None
    question_value = rec.get("question")
    if isinstance(question_value, dict):  # ARC: {"stem": ..., "choices": [{"text": ..., "label": "A"}, ...]}
        layout = "arc"
        question = _as_text(question_value.get("stem"), "question.stem", warnings, required=True)
        raw = question_value.get("choices")
        if not isinstance(raw, list) or not all(isinstance(c, dict) for c in raw):
            raise RowError("bad_content", "'question.choices' must be a list of {text, label} objects")
        choices = _choice_list([c.get("text") for c in raw], "question.choices")
        labels = [str(c.get("label", "")).strip() for c in raw]
        answer_field = "answerKey"
    elif isinstance(rec.get("mc1_targets"), dict) or isinstance(rec.get("mc2_targets"), dict):
        # TruthfulQA-MC: {"choices": [...], "labels": [1, 0, ...]} for MC1 (one true) and / or MC2 (any number true)
        question = _as_text(question_value, "question", warnings, required=True)
        mc2 = None
        if rec.get("mc2_targets") is not None:
            mc2_choices, mc2_flags = _targets(rec["mc2_targets"], "mc2_targets")
            if 1 not in mc2_flags:
                raise RowError("bad_content", "'mc2_targets.labels' marks no choice as true; MC2 needs at least one")
            mc2 = {"choices": mc2_choices, "labels": mc2_flags}
        if rec.get("mc1_targets") is not None:
            choices, flags = _targets(rec["mc1_targets"], "mc1_targets")
            if sum(flags) != 1:
                raise RowError("bad_content", f"'mc1_targets.labels' marks {sum(flags)} choices as correct; MC1 needs "
                                              "exactly one")
            row = _mc_row(rec, question, choices, flags.index(1), warnings, layout="truthfulqa")
        else:
            row = _mc_row(rec, question, mc2["choices"], mc2["labels"].index(1), warnings, layout="truthfulqa")
            row["mc2_only"] = True
        if mc2 is not None:
            row["mc2"] = mc2
        return row
    elif "endings" in rec:  # HellaSwag: the context is the question, the endings are the choices
        if rec.get("ctx") is not None and not (isinstance(rec["ctx"], str) and not rec["ctx"].strip()
                                               and (rec.get("ctx_a") or rec.get("ctx_b"))):
            question = _as_text(rec.get("ctx"), "ctx", warnings, required=True)
        else:  # no ctx (or an empty one beside ctx_a / ctx_b)
            parts = [_as_text(rec.get(k), k, warnings, required=False).strip() for k in ("ctx_a", "ctx_b")]
            question = " ".join(p for p in parts if p)
            if not question:
                raise RowError("missing_field", "'ctx' (or 'ctx_a' + 'ctx_b') is missing")
        choices = _choice_list(rec.get("endings"), "endings")
        answer_field = "label"
        layout = "hellaswag"
    else:
        key = "question" if question_value is not None or "question_stem" not in rec else "question_stem"
        question = _as_text(rec.get(key), key, warnings, required=True)
        if rec.get("choices") is not None:
            raw = rec["choices"]
            if isinstance(raw, dict):  # HF ai2_arc / openbookqa: {"text": [...], "label": [...]}
                choices = _choice_list(raw.get("text"), "choices.text")
                if raw.get("label") is not None:
                    if not isinstance(raw["label"], list) or len(raw["label"]) != len(choices):
                        raise RowError("bad_content", f"'choices.label' must list {len(choices)} labels")
                    labels = [str(x).strip() for x in raw["label"]]
                    layout = "openbookqa" if key == "question_stem" else "arc"
            else:
                choices = _choice_list(raw, "choices")
        elif "A" in rec:
            choices = _letter_columns(rec)
        else:
            raise RowError("missing_field", "'choices' is missing (or columns A, B, ... with the options)")
        answer_field = next((f for f in MC_ANSWER_FIELDS if rec.get(f) is not None), "answer")
    if labels is not None and len(set(labels)) != len(labels):
        raise RowError("bad_content", f"the choice labels repeat: {', '.join(labels)}")
    if labels is not None and answer_field not in rec and "answer" in rec:
        answer_field = "answer"
    answer = _resolve_answer(rec.get(answer_field), answer_field, choices, labels)
    row = _mc_row(rec, question, choices, answer, warnings, layout=layout)
    if layout is None and rec.get("mc2") is not None:  # a normalised TruthfulQA row read again
        mc2_choices, mc2_flags = _targets(rec["mc2"], "mc2")
        if 1 not in mc2_flags:
            raise RowError("bad_content", "'mc2.labels' marks no choice as true; MC2 needs at least one")
        row["mc2"] = {"choices": mc2_choices, "labels": mc2_flags}
        if rec.get("mc2_only") is True:
            row["mc2_only"] = True
    return row


def _mc_row(rec: dict, question: str, choices: list[str], answer: int, warnings: list,
            layout: str | None = None) -> dict:
    row: dict = {"question": question, "choices": choices, "answer": answer}
    context = _as_text(rec.get("context"), "context", warnings, required=False)
    if context.strip():
        row["context"] = context
    if layout is None and rec.get("layout") in MC_LAYOUTS:  # a normalised row read again keeps its layout
        layout = rec["layout"]
    if layout is not None:
        row["layout"] = layout
    subject = rec.get("subject")
    if isinstance(subject, str) and subject.strip():
        row["subject"] = subject
    if layout == "hellaswag":
        for key in HELLASWAG_FIELDS:
            if isinstance(rec.get(key), str):
                row[key] = rec[key]
    return row


_NORMALISERS = {
    "alpaca": _alpaca,
    "sharegpt": _sharegpt,
    "openai": _openai,
    "prompt_completion": _prompt_completion,
    "text": _text,
    "preference": _preference,
    "multiple_choice": _multiple_choice,
}
