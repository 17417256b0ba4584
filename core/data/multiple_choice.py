"""The ``multiple_choice`` format's normaliser: MMLU (list or lettered columns), ARC, OpenBookQA, HellaSwag and
TruthfulQA-MC layouts to ``{"question", "choices", "answer"}`` rows, keeping what a benchmark's own formulation
needs (see core.data.formats). A gold answer that could mean two choices is refused, never guessed.
"""
from __future__ import annotations

import ast
import json
import string
from typing import Any

from core.data.fields import RowError, _as_text

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
