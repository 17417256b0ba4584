"""Multiple-choice benchmarks scored the way lm-evaluation-harness (0.4.x, ``output_type: multiple_choice``) scores
them, so an accuracy here is the accuracy the harness reports for the same rows, model and prompt style.

How the harness scores one question (read from lm-eval 0.4.13; our own code, same rules):

- **Prompt.** Zero-shot, no chat template: the context is the task's ``doc_to_text`` and each continuation is the
  target delimiter ``" "`` followed by one choice. ``arc`` style (its ``arc_easy`` / ``arc_challenge`` tasks): context
  ``"Question: {question}\\nAnswer:"``, choices = the option texts. ``mmlu`` style (its ``mmlu_*`` tasks): context
  ``"{question.strip()}\\nA. {choice 0}\\nB. {choice 1}\\n...\\nAnswer:"``, choices = the letters, so the continuations
  are ``" A"``, ``" B"``, ... (the harness's MMLU has 4 options; more options get the next letters, as MMLU-Pro
  does). The harness's MMLU prepends a per-subject line ("The following are multiple choice questions (with answers)
  about anatomy.\\n\\n"); rows here carry no subject, so no such line is added (equal to a harness task without a
  ``description``). A row's optional ``context`` (a passage) goes first: ``arc`` renders it like the harness's SciQ
  task, ``"{context.lstrip()}\\nQuestion: {question}\\nAnswer:"``; ``mmlu`` puts ``"{context.strip()}\\n"`` before the
  question.
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

Rows may be in any layout the Data tab reads as ``multiple_choice`` (they are normalised with
``core.data.formats``); a stored dataset's rows are already ``{"question", "choices", "answer", "context"?}``.
"""
from __future__ import annotations

import inspect
import math
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

PROMPT_STYLES = ("arc", "mmlu")
BASE_ADAPTER = "__base__"  # PEFT's name for "no adapter" in a mixed-adapter batch
MODEL_KEY = "model"  # the result key when score_rows is given no adapter names
TARGET_DELIMITER = " "
DEFAULT_MAX_LENGTH = 2048  # the harness's fallback when neither the config nor the tokenizer names a length
_TOKENIZER_INFINITY = 1000000000000000019884624838656  # transformers' "no limit" model_max_length

Progress = Callable[..., Any]


class MultipleChoiceError(ValueError):
    """A row, a style or an argument that cannot be scored; the message says which and why."""


@dataclass(frozen=True)
class _Request:
    context: str
    continuations: list[str]
    gold: int
    lengths: list[int]  # characters of each choice text, without the delimiter (what acc_norm divides by)


# --------------------------------------------------------------------------------------------------------- prompts
def normalise_row(row: Any) -> dict:
    """``{"question", "choices", "answer", "context"?}`` from any multiple-choice layout; MultipleChoiceError if the row
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


def _request(row: Any, style: str) -> _Request:
    _check_style(style)
    r = normalise_row(row)
    question, choices, gold, context = r["question"], r["choices"], r["answer"], r.get("context") or ""
    if style == "arc":
        prompt = f"Question: {question}\nAnswer:"
        if context.strip():
            prompt = f"{context.lstrip()}\n{prompt}"
        targets = list(choices)
    else:
        if len(choices) > len(string.ascii_uppercase):
            raise MultipleChoiceError(f"the mmlu style letters at most 26 options; this question has {len(choices)}")
        letters = list(string.ascii_uppercase[: len(choices)])
        options = "".join(f"\n{letter}. {choice}" for letter, choice in zip(letters, choices))
        prompt = f"{question.strip()}{options}\nAnswer:"
        if context.strip():
            prompt = f"{context.strip()}\n{prompt}"
        targets = letters
    return _Request(prompt, [f"{TARGET_DELIMITER}{t}" for t in targets], gold, [len(t) for t in targets])


def build_request(row: Any, style: str) -> tuple[str, list[str], int]:
    """(context, continuations, gold index) of one question, rendered as the harness's ``arc`` or ``mmlu`` task
    renders it (see the module docstring). The continuations include the leading space the harness scores."""
    req = _request(row, style)
    return req.context, req.continuations, req.gold


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
               batch_size: int = 16, max_length: int | None = None,
               progress: Progress | None = None) -> dict[str, list[dict]]:
    """Score every choice of every row as the harness does; per adapter (``None``: the model as it is, under
    ``"model"``) a list of per-row dicts ``{"lls", "lengths", "pred", "pred_norm", "gold", "correct",
    "correct_norm"}``. With a peft.PeftModel, ``adapter_names`` such as ``["__base__", "tuned"]`` are scored in
    mixed-adapter batches (``"__base__"`` = no adapter). Sequences are right-padded with an attention mask, sorted by
    length; sequences that read the same tokens (one-token continuations after one context, as in the mmlu style)
    share one forward pass. ``max_length`` defaults to the harness's (``model_max_length``)."""
    import torch

    _check_style(style)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise MultipleChoiceError(f"batch_size must be a positive integer, got {batch_size!r}")
    names = _check_adapters(model, adapter_names)
    requests: list[_Request] = []
    for i, row in enumerate(rows):
        try:
            requests.append(_request(row, style))
        except MultipleChoiceError as exc:
            raise MultipleChoiceError(f"row {i + 1} of {len(rows)}: {exc}") from None
    limit = max_length or model_max_length(model, tokenizer)

    # one (input tokens, continuation tokens) pair per row and choice; the model reads (ctx + cont)[:-1]
    pairs: list[list[tuple[tuple[int, ...], list[int]]]] = []
    for i, req in enumerate(requests):
        row_pairs = []
        for cont_text in req.continuations:
            ctx, cont = encode_pair(tokenizer, req.context, cont_text)
            if not ctx:
                raise MultipleChoiceError(f"row {i + 1} of {len(rows)}: the prompt encodes to no tokens")
            if not cont:
                raise MultipleChoiceError(f"row {i + 1} of {len(rows)}: the choice {cont_text!r} adds no tokens")
            if len(cont) > limit:
                raise MultipleChoiceError(f"row {i + 1} of {len(rows)}: a choice is {len(cont)} tokens, longer than "
                                          f"the model's {limit}")
            row_pairs.append((tuple((ctx + cont)[-(limit + 1):][:-1]), cont))
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
        results = []
        for req, row_lls in zip(requests, lls[name]):
            pred = _argmax(row_lls)
            pred_norm = _argmax([ll / n for ll, n in zip(row_lls, req.lengths)])
            results.append({"lls": row_lls, "lengths": list(req.lengths), "pred": pred, "pred_norm": pred_norm,
                            "gold": req.gold, "correct": pred == req.gold, "correct_norm": pred_norm == req.gold})
        out[MODEL_KEY if name is None else name] = results
    return out


def _model_device(model):
    device = getattr(model, "device", None)
    if device is not None:
        return device
    return next(model.parameters()).device


def summarise(per_row: list[dict]) -> dict:
    """``{"acc", "acc_norm", "n", "acc_stderr", "acc_norm_stderr"}`` over score_rows' rows of one adapter; the
    stderr is the harness's (sample standard deviation / sqrt(n)), None for fewer than 2 rows."""
    n = len(per_row)
    if n == 0:
        raise MultipleChoiceError("no scored rows to summarise")
    out: dict[str, Any] = {"n": n}
    for metric, key in (("acc", "correct"), ("acc_norm", "correct_norm")):
        values = [1.0 if r[key] else 0.0 for r in per_row]
        mean = sum(values) / n
        out[metric] = mean
        out[f"{metric}_stderr"] = (math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) / math.sqrt(n)
                                   if n > 1 else None)
    return out
