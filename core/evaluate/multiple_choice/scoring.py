"""Scoring multiple-choice requests: the log-likelihood of every choice (base and tuned adapters in mixed batches,
one forward pass per distinct input), acc / acc_norm / mc2 per row, and their means with the harness's stderr.
"""
from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any

from core.evaluate.multiple_choice.prompts import (
    FEWSHOT_SEED,
    MultipleChoiceError,
    _check_style,
    _Request,
    build_requests,
)
from core.evaluate.multiple_choice.tokens import encode_pair, model_max_length

BASE_ADAPTER = "__base__"  # PEFT's name for "no adapter" in a mixed-adapter batch
MODEL_KEY = "model"  # the result key when score_rows is given no adapter names
Progress = Callable[..., Any]


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
