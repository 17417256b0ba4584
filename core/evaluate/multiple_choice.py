"""Multiple-choice benchmarks scored the way lm-evaluation-harness (0.4.x, ``output_type: multiple_choice``) scores
them, so an accuracy here is the accuracy the harness reports for the same rows, model and prompt formulation.

How the harness scores one question (read from lm-eval 0.4.13; our own code, same rules):

- **Prompt styles.** No chat template; the context is the task's ``doc_to_text`` (after an optional description and
  few-shot examples) and each continuation is the target delimiter ``" "`` followed by one choice.

  - ``arc`` (the harness's ``arc_easy`` / ``arc_challenge``): ``"Question: {question}\nAnswer:"``, choices = the
    option texts. A row's ``context`` (a passage) goes first, as the harness's SciQ task renders it:
    ``"{context.lstrip()}\nQuestion: {question}\nAnswer:"``.
  - ``mmlu`` (the harness's ``mmlu_*`` prompt): ``"{question.strip()}\nA. {choice 0}\nB. {choice 1}\n...\nAnswer:"``,
    choices = the letters (``" A"``, ``" B"``, ...; past Z: AA, AB, ...); a passage goes first as
    ``"{context.strip()}\n"``. No subject line (the harness's per-subject ``description``).
  - ``native``: the harness's own task for the rows' layout (``core.data.formats`` keeps it as ``layout``), or the
    task named: ``hellaswag`` — ``preprocess("{activity_label}: {ctx_a} {ctx_b.capitalize()}")``, choices =
    ``preprocess(ending)`` (strip, " [title]" → ". ", bracketed text removed, double spaces made single), gold =
    ``label``; ``truthfulqa`` — the fixed 6-shot Q/A primer + ``"\n\nQ: {question}\nA:"``, MC1 choices =
    ``mc1_targets`` (gold = its true one: the harness's task takes choice 0, which is the true one in TruthfulQA's
    own files) and MC2 = ``mc2_targets``; ``arc`` — as the arc style; ``openbookqa`` — ``question_stem`` alone,
    choices = the option texts; ``mmlu`` — the mmlu style plus the harness's description ``"The following are
    multiple choice questions (with answers) about {subject with _ as spaces}.\n\n"`` when the row has a
    ``subject``. The generic ``question / choices / answer`` layout (cais/mmlu's columns) and MMLU's lettered CSV
    columns are ``mmlu``. HellaSwag, TruthfulQA and OpenBookQA have no place for a passage: a row with one is refused.
- **Few-shot** (``num_fewshot``, default 0 as in the harness's tasks; TruthfulQA's primer is its few-shot and the
  harness ignores ``num_fewshot`` there, so it is refused): each example is ``doc_to_text + " " + its gold choice +
  "\n\n"``, after the description. Examples come from a pool (``fewshot_rows``; default the scored rows themselves):
  ``mmlu`` takes the first N of the pool (the harness's ``first_n`` sampler; in ``native`` only rows of the same
  subject, as the harness's per-subject tasks do), the others draw N at random with ``random.Random(1234)`` (the
  harness's default sampler and ``fewshot_random_seed``), one draw per scored row in order. When the pool holds
  the scored rows (``exclude_self``), the harness's rule for a few-shot split equal to the test split applies: draw
  N + 1 and drop the rows equal to the question.
- **Tokens** (``encode_pair``, a causal model): trailing whitespace of the context moves to the front of the
  continuation; context and context+continuation are each encoded with the tokenizer's own defaults
  (``tokenizer.encode(text)``: whatever special tokens it adds by itself, e.g. a BOS for Llama-2, nothing for
  SmolLM2 / GPT-2 style tokenizers — but none when the text already starts with the prefix token's text); the
  continuation's tokens are the tail of the whole after the context's tokens. An empty context becomes the prefix
  token (BOS, else EOS).
- **Log-likelihood.** The model reads ``(context + continuation)[:-1]`` (left-truncated to the model's max length,
  from its config ``n_positions`` / ``max_position_embeddings`` / ``n_ctx``, else the tokenizer's, else 2048) and the
  continuation's log-probabilities (log-softmax over the vocabulary) are summed. We upcast logits to float32 before
  the log-softmax; the harness does it in the model's dtype unless ``softmax_dtype`` is set (identical in float32).
- **acc / acc_norm.** ``pred = argmax(lls)``; ``pred_norm = argmax(lls / len(choice))`` with the length in
  **characters** of the choice text without the delimiter (the harness's ``acc_bytes`` uses UTF-8 bytes; not
  reported here); ties go to the first choice; ``acc`` is the mean of ``pred == gold``; stderr = sample standard
  deviation / sqrt(n).
- **mc2** (TruthfulQA's ``process_results_mc2``): the probability mass of the true MC2 choices, normalised over all
  MC2 choices, ``sum(exp(ll) for true) / sum(exp(ll))``, averaged over the questions (computed as a softmax, so no
  underflow to 0/0 where the harness's ``exp`` would give NaN). Scored with the text formulations; under the lettered
  ``mmlu`` prompt only when the MC2 choices are the listed options. A row with only MC2 targets has no MC1 gold:
  it counts for mc2, not for acc / acc_norm.

Rows may be in any layout the Data tab reads as ``multiple_choice`` (they are normalised with
``core.data.formats``); a stored dataset's rows are already ``{"question", "choices", "answer", ...}``.
"""
from __future__ import annotations

import inspect
import math
import random
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

PROMPT_STYLES = ("arc", "mmlu", "native")
NATIVE_TASKS = ("arc", "openbookqa", "hellaswag", "truthfulqa", "mmlu")  # the harness's tasks "native" reproduces
BASE_ADAPTER = "__base__"  # PEFT's name for "no adapter" in a mixed-adapter batch
MODEL_KEY = "model"  # the result key when score_rows is given no adapter names
TARGET_DELIMITER = " "
FEWSHOT_DELIMITER = "\n\n"
FEWSHOT_SEED = 1234  # the harness's default fewshot_random_seed
DEFAULT_MAX_LENGTH = 2048  # the harness's fallback when neither the config nor the tokenizer names a length
_TOKENIZER_INFINITY = 1000000000000000019884624838656  # transformers' "no limit" model_max_length
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

Progress = Callable[..., Any]


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


# --------------------------------------------------------------------------------------------------------- prompts
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


# ---------------------------------------------------------------------------------------------------------- tokens
def _prefix_token_id(tokenizer) -> int | None:
    bos = getattr(tokenizer, "bos_token_id", None)
    return bos if bos is not None else getattr(tokenizer, "eos_token_id", None)


def _encode(tokenizer, text: str) -> list[int]:
    """The tokenizer's default encoding (its own special tokens), unless the text already starts with the prefix
    token's text."""
    prefix = _prefix_token_id(tokenizer)
    if prefix is not None and text.startswith(tokenizer.decode(prefix)):
        return list(tokenizer.encode(text, add_special_tokens=False))
    return list(tokenizer.encode(text))


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context tokens, continuation tokens) as the harness builds them for a causal model."""
    if context == "":
        cont = list(tokenizer.encode(continuation, add_special_tokens=False))
        if not cont:
            raise MultipleChoiceError(f"the continuation {continuation!r} encodes to no tokens")
        prefix = _prefix_token_id(tokenizer)
        return ([prefix], cont) if prefix != cont[0] else (cont[:1], cont[1:])
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = _encode(tokenizer, context + continuation)
    ctx = _encode(tokenizer, context)
    return ctx, whole[len(ctx):]


def model_max_length(model, tokenizer) -> int:
    """The harness's max length: the config's n_positions / max_position_embeddings / n_ctx (of ``text_config`` for
    composite models), else the tokenizer's model_max_length, else 2048."""
    config = getattr(model, "config", None)
    config = getattr(config, "text_config", None) or config
    for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(config, attr, None)
        if value is not None:
            return int(value)
    value = getattr(tokenizer, "model_max_length", None)
    if value is not None and value != _TOKENIZER_INFINITY:
        return int(value)
    return DEFAULT_MAX_LENGTH


# --------------------------------------------------------------------------------------------------------- scoring
def _peft_adapters(model) -> set[str] | None:
    """The adapter names of a peft.PeftModel, or None for a plain model."""
    config = getattr(model, "peft_config", None)
    if not isinstance(config, dict) or not hasattr(model, "get_base_model"):
        return None
    return set(config)


def _check_adapters(model, adapter_names: Sequence[str] | None) -> list[str | None]:
    if adapter_names is None:
        return [None]
    if isinstance(adapter_names, str):
        raise MultipleChoiceError("adapter_names must be a list of names, e.g. ['__base__', 'tuned']")
    names = list(adapter_names)
    if not names:
        raise MultipleChoiceError("adapter_names is empty; pass None to score the model as it is")
    known = _peft_adapters(model)
    if known is None:
        raise MultipleChoiceError("adapter_names needs a peft.PeftModel (with its adapters loaded); this model has "
                                  "none — pass adapter_names=None to score it as it is")
    unknown = [n for n in names if n != BASE_ADAPTER and n not in known]
    if unknown:
        raise MultipleChoiceError(f"unknown adapter {unknown[0]!r}; the model has {', '.join(sorted(known))} "
                                  f"(and {BASE_ADAPTER} for none)")
    if len(set(names)) != len(names):
        raise MultipleChoiceError(f"adapter_names repeats a name: {names}")
    return names


def _keeps_logits(model) -> bool:
    """Whether the (base) model's forward takes ``logits_to_keep`` (then the LM head runs only where scored)."""
    base = model.get_base_model() if _peft_adapters(model) is not None else model
    try:
        return "logits_to_keep" in inspect.signature(base.forward).parameters
    except (TypeError, ValueError):
        return False


def _argmax(values: Sequence[float]) -> int:
    best = 0
    for i, v in enumerate(values):
        if v > values[best]:
            best = i
    return best


def score_rows(model, tokenizer, rows: list[dict], style: str, *, adapter_names: list[str] | None = None,
               batch_size: int = 16, max_length: int | None = None, progress: Progress | None = None,
               task: str | None = None, num_fewshot: int | None = None, fewshot_rows: Sequence[Any] | None = None,
               exclude_self: bool | None = None, seed: int = FEWSHOT_SEED) -> dict[str, list[dict]]:
    """Score every choice of every row as the harness does; per adapter (``None``: the model as it is, under
    ``"model"``) a list of per-row dicts ``{"lls", "lengths", "pred", "pred_norm", "gold", "correct",
    "correct_norm", "mc2", "mc2_lls"}`` (``lls`` / ``lengths`` / ``pred*`` over the MC1 choices — the MC2 ones for an
    MC2-only row, whose ``gold`` and ``correct*`` are None; ``mc2`` None where the row has no MC2 targets). With a
    peft.PeftModel, ``adapter_names`` such as ``["__base__", "tuned"]`` are scored in mixed-adapter batches
    (``"__base__"`` = no adapter). Sequences are right-padded with an attention mask, sorted by length; sequences that
    read the same tokens (one-token continuations after one context, as in the mmlu style; a TruthfulQA answer that
    is both an MC1 and an MC2 choice) share one forward pass. ``max_length`` defaults to the harness's
    (``model_max_length``). ``task`` / ``num_fewshot`` / ``fewshot_rows`` / ``exclude_self`` / ``seed``: see
    ``build_requests``."""
    import torch

    _check_style(style)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise MultipleChoiceError(f"batch_size must be a positive integer, got {batch_size!r}")
    names = _check_adapters(model, adapter_names)
    _form, requests = build_requests(rows, style, task=task, num_fewshot=num_fewshot, fewshot_rows=fewshot_rows,
                                     exclude_self=exclude_self, seed=seed)
    limit = max_length or model_max_length(model, tokenizer)

    # one (input tokens, continuation tokens) pair per row and choice; the model reads (ctx + cont)[:-1]
    pairs: list[list[tuple[tuple[int, ...], list[int]]]] = []
    for i, req in enumerate(requests):
        row_pairs = []
        encoded: dict[str, tuple[tuple[int, ...], list[int]]] = {}
        for cont_text in req.continuations:
            if cont_text not in encoded:
                ctx, cont = encode_pair(tokenizer, req.context, cont_text)
                if not ctx:
                    raise MultipleChoiceError(f"row {i + 1} of {len(rows)}: the prompt encodes to no tokens")
                if not cont:
                    raise MultipleChoiceError(f"row {i + 1} of {len(rows)}: the choice {cont_text!r} adds no "
                                              "tokens")
                if len(cont) > limit:
                    raise MultipleChoiceError(f"row {i + 1} of {len(rows)}: a choice is {len(cont)} tokens, longer "
                                              f"than the model's {limit}")
                encoded[cont_text] = (tuple((ctx + cont)[-(limit + 1):][:-1]), cont)
            row_pairs.append(encoded[cont_text])
        pairs.append(row_pairs)

    # unique forward passes: (adapter, input tokens) -> the (row, choice, continuation) requests that read them
    users: dict[tuple[str | None, tuple[int, ...]], list[tuple[int, int, list[int]]]] = {}
    for name in names:
        for i, row_pairs in enumerate(pairs):
            for j, (inp, cont) in enumerate(row_pairs):
                users.setdefault((name, inp), []).append((i, j, cont))
    needed = {key: max(len(cont) for _, _, cont in reqs) for key, reqs in users.items()}  # scored positions
    order = sorted(users, key=lambda k: (-len(k[1]), k[1], str(k[0])))
    lls: dict[str | None, list[list[float]]] = {name: [[0.0] * len(p) for p in pairs] for name in names}

    device = _model_device(model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    keep = _keeps_logits(model)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(order), batch_size):
                chunk = order[start:start + batch_size]
                width = max(len(inp) for _, inp in chunk)
                ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
                mask = torch.zeros((len(chunk), width), dtype=torch.long)
                for b, (_, inp) in enumerate(chunk):
                    ids[b, :len(inp)] = torch.tensor(inp, dtype=torch.long)
                    mask[b, :len(inp)] = 1
                first = min(len(key[1]) - needed[key] for key in chunk)  # the first scored position
                kwargs: dict[str, Any] = {"input_ids": ids.to(device), "attention_mask": mask.to(device),
                                          "use_cache": False}
                if keep:
                    kwargs["logits_to_keep"] = width - first
                if names != [None]:
                    kwargs["adapter_names"] = [name for name, _ in chunk]
                logits = model(**kwargs).logits
                offset = width - logits.shape[1]  # the position logits[:, 0] predicts from
                for b, key in enumerate(chunk):
                    name, inp = key
                    begin, end = len(inp) - needed[key], len(inp)
                    lp = torch.log_softmax(logits[b, begin - offset:end - offset].float(), dim=-1)
                    for i, j, cont in users[key]:
                        targets = torch.tensor(cont, dtype=torch.long, device=lp.device).unsqueeze(1)
                        lls[name][i][j] = float(lp[lp.shape[0] - len(cont):].gather(1, targets).sum())
                if progress is not None:
                    done = min(len(order), start + batch_size)
                    progress(done / len(order), desc=f"scoring: {done:,} of {len(order):,} sequences")
    finally:
        model.train(was_training)

    out: dict[str, list[dict]] = {}
    for name in names:
        out[MODEL_KEY if name is None else name] = [_row_result(req, row_lls) for req, row_lls in
                                                    zip(requests, lls[name])]
    return out


def mc2_score(lls: Sequence[float], labels: Sequence[int]) -> float:
    """The normalised probability mass of the true choices (TruthfulQA MC2), as a softmax."""
    top = max(lls)
    probs = [math.exp(ll - top) for ll in lls]
    return sum(p for p, label in zip(probs, labels) if label == 1) / sum(probs)


def _row_result(req: _Request, row_lls: list[float]) -> dict:
    n1 = req.n_mc1
    mc2_lls = row_lls[n1:] if req.mc2_labels is not None else None
    shown_lls, shown_lengths = (row_lls[:n1], req.lengths[:n1]) if n1 else (row_lls, list(req.lengths))
    pred = _argmax(shown_lls)
    pred_norm = _argmax([ll / n if n else -math.inf for ll, n in zip(shown_lls, shown_lengths)])  # numpy: -inf
    gold = req.gold
    return {"lls": shown_lls, "lengths": shown_lengths, "pred": pred, "pred_norm": pred_norm, "gold": gold,
            "correct": None if gold is None else pred == gold,
            "correct_norm": None if gold is None else pred_norm == gold,
            "mc2": None if mc2_lls is None else mc2_score(mc2_lls, req.mc2_labels), "mc2_lls": mc2_lls}


def _model_device(model):
    device = getattr(model, "device", None)
    if device is not None:
        return device
    return next(model.parameters()).device


def summarise(per_row: list[dict]) -> dict:
    """``{"n", "acc", "acc_norm", "acc_stderr", "acc_norm_stderr", "mc2"?, "mc2_stderr"?}`` over score_rows' rows of one
    adapter; the stderr is the harness's (sample standard deviation / sqrt(n)), None for fewer than 2 rows. acc /
    acc_norm count the rows with an MC1 gold, mc2 the rows with MC2 targets; ``acc_n`` / ``mc2_n`` say how many when
    that is not every row."""
    n = len(per_row)
    if n == 0:
        raise MultipleChoiceError("no scored rows to summarise")
    out: dict[str, Any] = {"n": n}
    mc1 = [r for r in per_row if r.get("gold", 0) is not None]
    if mc1:
        for metric, key in (("acc", "correct"), ("acc_norm", "correct_norm")):
            out[metric], out[f"{metric}_stderr"] = _mean_stderr([1.0 if r[key] else 0.0 for r in mc1])
        if len(mc1) != n:
            out["acc_n"] = len(mc1)
    mc2 = [float(r["mc2"]) for r in per_row if r.get("mc2") is not None]
    if mc2:
        out["mc2"], out["mc2_stderr"] = _mean_stderr(mc2)
        if len(mc2) != n:
            out["mc2_n"] = len(mc2)
    return out


def _mean_stderr(values: list[float]) -> tuple[float, float | None]:
    n = len(values)
    mean = sum(values) / n
    return mean, (math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) / math.sqrt(n) if n > 1 else None)
