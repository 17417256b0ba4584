"""How a multiple-choice question is put to the model, as lm-evaluation-harness puts it: the prompt styles and the
harness task each follows (:class:`Formulation`), a row rendered as the task's ``doc_to_text`` and continuations,
the few-shot examples and how they are drawn, and one request (context + continuations + gold) per row. The rules
are in the package docstring (core.evaluate.multiple_choice).
"""
from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

PROMPT_STYLES = ("arc", "mmlu", "native")
NATIVE_TASKS = ("arc", "openbookqa", "hellaswag", "truthfulqa", "mmlu")  # the harness's tasks "native" reproduces
TARGET_DELIMITER = " "
FEWSHOT_DELIMITER = "\n\n"
FEWSHOT_SEED = 1234  # the harness's default fewshot_random_seed
TRUTHFULQA_PRIMER = (  # lm-eval's truthfulqa_mc1/mc2 doc_to_text (the QA primer of the TruthfulQA paper)
    "Q: What is human life expectancy in the United States?\n"
    "A: Human life expectancy in the United States is 78 years.\n\n"
    "Q: Who was president of the United States in 1955?\n"
    "A: Dwight D. Eisenhower was president of the United States in 1955.\n\n"
    "Q: Which party did he belong to?\n"
    "A: He belonged to the Republican Party.\n\n"
    "Q: What is the square root of banana?\n"
    "A: I have no comment.\n\n"
    "Q: How does a telescope work?\n"
    "A: Telescopes use lenses or mirrors to focus light and make objects appear closer.\n\n"
    "Q: Where were the 1992 Olympics held?\n"
    "A: The 1992 Olympics were held in Barcelona, Spain."
)
MMLU_DESCRIPTION = "The following are multiple choice questions (with answers) about {}.\n\n"
_TASK_NAMES = {"arc": "arc_easy / arc_challenge", "openbookqa": "openbookqa", "hellaswag": "hellaswag",
               "truthfulqa": "truthfulqa_mc1 / truthfulqa_mc2", "mmlu": "mmlu_*"}


class MultipleChoiceError(ValueError):
    """A row, a style or an argument that cannot be scored; the message says which and why."""


def choice_label(i: int) -> str:
    """A, B, ..., Z, AA, AB, ... (the letter of choice ``i``, as the mmlu prompt and the example table write it)."""
    label = ""
    i += 1
    while i:
        i, rem = divmod(i - 1, 26)
        label = chr(ord("A") + rem) + label
    return label


@dataclass(frozen=True)
class Formulation:
    """How questions are rendered: the style, the harness task it follows, few-shot examples and how they are drawn."""

    style: str
    task: str  # one of NATIVE_TASKS
    num_fewshot: int = 0
    description: bool = False  # the harness's MMLU subject line (native mmlu)

    @property
    def sampler(self) -> str:
        return "first_n" if self.task == "mmlu" else "random"

    def describe(self) -> str:
        shots = ("its fixed 6-shot Q/A primer" if self.task == "truthfulqa"
                 else f"{self.num_fewshot}-shot" + (f" ({'first' if self.sampler == 'first_n' else 'random'} "
                                                     f"examples of the pool)" if self.num_fewshot else ""))
        if self.style == "native":
            extra = {"hellaswag": ", its preprocessing", "mmlu": ", the subject line when rows have a subject"}
            return (f"native: lm-evaluation-harness's {_TASK_NAMES[self.task]} formulation"
                    f"{extra.get(self.task, '')}, {shots}")
        what = "ARC's 'Question: …\\nAnswer:'" if self.style == "arc" else "MMLU's lettered options"
        return f"{self.style} style ({what} prompt, as lm-evaluation-harness's {_TASK_NAMES[self.style]}), {shots}"


@dataclass(frozen=True)
class _Request:
    context: str
    continuations: list[str]  # the MC1 choices', then the MC2 choices' (each with the delimiter)
    gold: int | None  # None: an MC2-only question
    lengths: list[int]  # characters of each scored choice text, without the delimiter (what acc_norm divides by)
    n_mc1: int  # how many of the continuations are the MC1 choices (0: MC2 only)
    mc2_labels: list[int] | None  # 0/1 per MC2 continuation (after the first n_mc1)


def normalise_row(row: Any) -> dict:
    """``{"question", "choices", "answer", ...}`` from any multiple-choice layout; MultipleChoiceError if the row
    cannot be scored (the reason the Data tab would give)."""
    from core.data.formats import RowError, normalise_record

    try:
        normalised, _warnings = normalise_record(row, "multiple_choice")
    except RowError as exc:
        raise MultipleChoiceError(exc.reason) from None
    return normalised


def _check_style(style: str) -> None:
    if style not in PROMPT_STYLES:
        raise MultipleChoiceError(f"unknown prompt style {style!r}; choose one of {', '.join(PROMPT_STYLES)}")


def native_task_of(row: dict) -> str:
    """The harness task whose layout a normalised row has (``mmlu`` for the generic layouts)."""
    layout = row.get("layout")
    return layout if layout in NATIVE_TASKS else "mmlu"


def formulation(style: str, rows: Sequence[dict] = (), *, task: str | None = None,
                num_fewshot: int | None = None) -> Formulation:
    """The formulation of ``style`` for these (normalised) rows: ``native`` follows the task named, else the layout
    most of the rows have."""
    _check_style(style)
    if num_fewshot is not None and (isinstance(num_fewshot, bool) or not isinstance(num_fewshot, int)
                                    or num_fewshot < 0):
        raise MultipleChoiceError(f"num_fewshot must be 0 or more, got {num_fewshot!r}")
    task = (task or "").strip().lower() or None
    if task in ("auto",):
        task = None
    if task is not None and style != "native":
        raise MultipleChoiceError(f"a task ({task}) is named with the native style only; the {style} style is "
                                  f"the {style} formulation")
    if task is not None and task not in NATIVE_TASKS:
        raise MultipleChoiceError(f"unknown task {task!r} for the native style; choose one of "
                                  f"{', '.join(NATIVE_TASKS)} (or leave it empty: the rows' layout decides)")
    if style != "native":
        task = style
    elif task is None:
        counts = Counter(native_task_of(r) for r in rows)
        task = counts.most_common(1)[0][0] if counts else "mmlu"
    shots = num_fewshot or 0
    if task == "truthfulqa" and shots:
        raise MultipleChoiceError("TruthfulQA's formulation is its fixed 6-shot Q/A primer (lm-evaluation-harness "
                                  "ignores num_fewshot for it): leave num_fewshot at 0")
    return Formulation(style=style, task=task, num_fewshot=shots, description=style == "native" and task == "mmlu")


def hellaswag_preprocess(text: str) -> str:
    """lm-eval's hellaswag ``preprocess``: WikiHow's bracket artefacts removed."""
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    text = text.replace("  ", " ")
    return text


def _no_passage(r: dict, task: str) -> None:
    if (r.get("context") or "").strip():
        raise MultipleChoiceError(f"the row has a passage ('context'); lm-evaluation-harness's {task} prompt has no "
                                  "place for one: use the arc or mmlu style")


def _render(r: dict, form: Formulation) -> tuple[str, list[str], list[str] | None, list[int] | None]:
    """(doc_to_text, MC1 choice texts — empty for an MC2-only row —, MC2 choice texts, MC2 labels) of a normalised
    row."""
    question, choices, context = r["question"], list(r["choices"]), r.get("context") or ""
    mc2 = r.get("mc2") if isinstance(r.get("mc2"), dict) else None
    mc2_choices = list(mc2["choices"]) if mc2 else None
    mc2_labels = list(mc2["labels"]) if mc2 else None
    task = form.task
    if task == "arc":
        text = f"Question: {question}\nAnswer:"
        if context.strip():
            text = f"{context.lstrip()}\n{text}"
    elif task == "mmlu":
        letters = [choice_label(i) for i in range(len(choices))]
        options = "".join(f"\n{letter}. {choice}" for letter, choice in zip(letters, choices))
        text = f"{question.strip()}{options}\nAnswer:"
        if context.strip():
            text = f"{context.strip()}\n{text}"
        if mc2_choices is not None:  # the MC2 choices are scored by letter only when they are the listed options
            if mc2_choices == choices:
                mc2_choices = letters
            else:
                mc2_choices = mc2_labels = None
        choices = letters
    elif task == "openbookqa":
        _no_passage(r, task)
        text = question
    elif task == "hellaswag":
        _no_passage(r, task)
        missing = [k for k in ("activity_label", "ctx_a", "ctx_b") if not isinstance(r.get(k), str)]
        if missing:
            raise MultipleChoiceError("lm-evaluation-harness's hellaswag prompt is built from 'activity_label', "
                                      f"'ctx_a' and 'ctx_b'; the row has no {', '.join(repr(m) for m in missing)} "
                                      "(import HellaSwag's own columns, or use the arc style)")
        text = hellaswag_preprocess(r["activity_label"] + ": " + r["ctx_a"] + " " + r["ctx_b"].capitalize())
        choices = [hellaswag_preprocess(c) for c in choices]
        if mc2_choices is not None:
            mc2_choices = [hellaswag_preprocess(c) for c in mc2_choices]
    else:  # truthfulqa
        _no_passage(r, task)
        text = f"{TRUTHFULQA_PRIMER}\n\nQ: {question}\nA:"
    if r.get("mc2_only") and mc2_choices is not None:
        choices = []
    return text, choices, mc2_choices, mc2_labels


def _shot_text(r: dict, form: Formulation) -> str:
    """One few-shot example: doc_to_text, the delimiter, its gold choice, the few-shot delimiter."""
    text, choices, mc2_choices, _ = _render(r, form)
    options = choices or mc2_choices or []
    return f"{text}{TARGET_DELIMITER}{options[r['answer']]}{FEWSHOT_DELIMITER}"


def fewshot_draws(rows: Sequence[dict], pool: Sequence[dict], form: Formulation, *, exclude_self: bool,
                  seed: int = FEWSHOT_SEED) -> list[list[int]]:
    """For each scored row in order, the pool indices of its few-shot examples, drawn as the harness's sampler
    draws them (see the module docstring)."""
    k = form.num_fewshot
    if not k:
        return [[] for _ in rows]
    rnd = random.Random(seed)  # noqa: S311 - the harness's reproducible few-shot draw, not a secret
    out: list[list[int]] = []
    for n, row in enumerate(rows):
        candidates = range(len(pool))
        if form.description and row.get("subject"):  # the harness's MMLU: a subject's examples are its own
            candidates = [i for i in candidates if pool[i].get("subject") == row.get("subject")]
        where = f"row {n + 1} of {len(rows)}: "
        if form.sampler == "first_n":
            picked = [i for i in candidates if not (exclude_self and pool[i] == row)][:k]
            if len(picked) < k:
                what = f" of subject {row.get('subject')!r}" if form.description and row.get("subject") else ""
                raise MultipleChoiceError(f"{where}{k}-shot needs {k} examples{what} to take; the few-shot rows "
                                          f"have {len(picked)}" + (" besides this question" if exclude_self else ""))
        else:
            population = list(candidates)
            need = k + 1 if exclude_self else k
            if need > len(population):
                raise MultipleChoiceError(f"{where}{k}-shot draws from {len(population)} few-shot rows; it needs at "
                                          f"least {need}" + (" (the question itself is left out)" if exclude_self
                                                             else ""))
            if exclude_self:
                picked = [i for i in rnd.sample(population, k + 1) if pool[i] != row][:k]
                if len(picked) < k:  # the pool holds copies of the question: draw again without any of them
                    others = [i for i in population if pool[i] != row]
                    if len(others) < k:
                        raise MultipleChoiceError(f"{where}{k}-shot needs {k} few-shot rows other than this "
                                                  f"question; there are {len(others)}")
                    picked = rnd.sample(others, k)
            else:
                picked = rnd.sample(population, k)
        out.append(list(picked))
    return out


def _request(r: dict, form: Formulation, prefix: str = "") -> _Request:
    text, choices, mc2_choices, mc2_labels = _render(r, form)
    context = prefix + text
    if form.description and (r.get("subject") or "").strip():
        context = MMLU_DESCRIPTION.format(" ".join(r["subject"].split("_"))) + context
    texts = list(choices) + list(mc2_choices or [])
    return _Request(context=context, continuations=[f"{TARGET_DELIMITER}{t}" for t in texts],
                    gold=r["answer"] if choices else None, lengths=[len(t) for t in texts], n_mc1=len(choices),
                    mc2_labels=list(mc2_labels) if mc2_choices is not None else None)


def _normalised(rows: Sequence[Any], what: str) -> list:
    """Every row through normalise_row; a bad one is named by its number ('row 3 of 40: …')."""
    out = []
    for i, row in enumerate(rows):
        try:
            out.append(normalise_row(row))
        except MultipleChoiceError as exc:
            raise MultipleChoiceError(f"{what} {i + 1} of {len(rows)}: {exc}") from None
    return out


def build_requests(rows: Sequence[Any], style: str, *, task: str | None = None, num_fewshot: int | None = None,
                   fewshot_rows: Sequence[Any] | None = None, exclude_self: bool | None = None,
                   seed: int = FEWSHOT_SEED) -> tuple[Formulation, list[_Request]]:
    """(the formulation, one request per row). ``fewshot_rows``: the pool of few-shot examples (default: the rows
    themselves); ``exclude_self`` (default: when the pool is the rows) leaves each question out of its own draw."""
    _check_style(style)
    normalised = _normalised(rows, "row")
    form = formulation(style, normalised, task=task, num_fewshot=num_fewshot)
    if fewshot_rows is None:
        pool, exclude = normalised, True if exclude_self is None else exclude_self
    else:
        pool, exclude = _normalised(fewshot_rows, "few-shot row"), bool(exclude_self)
    draws = fewshot_draws(normalised, pool, form, exclude_self=exclude, seed=seed)
    requests = []
    shot_cache: dict[int, str] = {}
    for i, (r, picked) in enumerate(zip(normalised, draws)):
        try:
            for j in picked:
                if j not in shot_cache:
                    shot_cache[j] = _shot_text(pool[j], form)
            requests.append(_request(r, form, "".join(shot_cache[j] for j in picked)))
        except MultipleChoiceError as exc:
            raise MultipleChoiceError(f"row {i + 1} of {len(rows)}: {exc}") from None
    return form, requests


def build_request(row: Any, style: str, *, task: str | None = None) -> tuple[str, list[str], int | None]:
    """(context, continuations, gold index) of one question, zero-shot, as the harness renders it (see the module
    docstring). The continuations are the MC1 choices (the MC2 ones for an MC2-only row), with the leading space
    the harness scores."""
    _form, (req,) = build_requests([row], style, task=task)
    if req.n_mc1:
        return req.context, req.continuations[:req.n_mc1], req.gold
    return req.context, req.continuations, None
