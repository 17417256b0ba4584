"""Metrics of generated answers against references: offline, from the libraries the usual metrics wrap.

``evaluate.load("rouge")`` / ``("sacrebleu")`` fetch their scripts from the Hub and fail offline, so ROUGE comes from
``rouge-score`` (the package evaluate's rouge wraps; stemming on, F-measure) and BLEU / chrF from ``sacrebleu``
(corpus-level, default tokenisation, as evaluate's sacrebleu reports). Scores are on a 0-100 scale for ROUGE, BLEU
and chrF, 0-1 for rates, so they read the way those tools print them.

Answers that are JSON objects (the reference parses as one) also get the valid-JSON rate and per-field accuracy —
the demo task's scorer generalised to any set of fields (the reference's keys).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from core.data.demo import extract_json_object

TEXT_METRICS = ("rouge1", "rouge2", "rougeL", "bleu", "chrf", "exact_match")
JSON_METRICS = ("json_valid_rate", "field_accuracy", "json_exact_match")
HIGHER_IS_BETTER = {"loss": False, "perplexity": False}


def normalise_answer(text: str) -> str:
    """Exact match ignores case and runs of whitespace (and nothing else)."""
    return " ".join((text or "").split()).lower()


def _scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)


def example_text_scores(prediction: str, reference: str, scorer=None) -> dict[str, float]:
    """Per-example scores (for the per-example view and its filters)."""
    import sacrebleu

    scorer = scorer or _scorer()
    r = scorer.score(reference, prediction)
    return {
        "rougeL": 100 * r["rougeL"].fmeasure,
        "chrf": sacrebleu.sentence_chrf(prediction, [reference]).score,
        "exact_match": float(normalise_answer(prediction) == normalise_answer(reference)),
    }


def text_metrics(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Corpus ROUGE-1/2/L (mean F-measure × 100), BLEU and chrF (sacrebleu corpus scores), exact match rate."""
    import sacrebleu

    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    n = len(predictions)
    if n == 0:
        return dict.fromkeys(TEXT_METRICS, 0.0)
    scorer = _scorer()
    sums = {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    for p, r in zip(predictions, references):
        s = scorer.score(r, p)
        for k in sums:
            sums[k] += s[k].fmeasure
    preds, refs = list(predictions), [list(references)]
    return {
        "rouge1": 100 * sums["rouge1"] / n,
        "rouge2": 100 * sums["rouge2"] / n,
        "rougeL": 100 * sums["rougeL"] / n,
        "bleu": sacrebleu.corpus_bleu(preds, refs).score,
        "chrf": sacrebleu.corpus_chrf(preds, refs).score,
        "exact_match": sum(normalise_answer(p) == normalise_answer(r) for p, r in zip(predictions, references)) / n,
    }


def _norm_value(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, str):
        v = " ".join(value.strip().split())
        return None if v.lower() in ("", "null", "none", "n/a") else v.lower().lstrip("#")
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, (list, tuple)):
        return [_norm_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _norm_value(v) for k, v in value.items()}
    return value


def reference_json(reference: str) -> dict | None:
    """The reference as a JSON object when it is one (the whole answer parses), else None."""
    obj = extract_json_object(reference)
    if obj is None:
        return None
    text = reference.strip()
    if text.startswith("```"):
        return obj
    return obj if text.startswith("{") and text.endswith("}") else None


def example_json_scores(prediction: str, reference: dict) -> dict[str, Any]:
    """valid JSON, per-field correctness over the reference's keys, field accuracy, exact (all fields)."""
    pred = extract_json_object(prediction)
    fields = {k: pred is not None and _norm_value(pred.get(k)) == _norm_value(v) for k, v in reference.items()}
    n = len(fields) or 1
    return {"valid_json": pred is not None, "fields": fields, "field_accuracy": sum(fields.values()) / n,
            "json_exact_match": bool(fields) and all(fields.values())}


def json_metrics(predictions: Sequence[str], references: Sequence[dict]) -> dict[str, Any]:
    n = len(predictions)
    if n == 0:
        return {**dict.fromkeys(JSON_METRICS, 0.0), "per_field": {}}
    scores = [example_json_scores(p, r) for p, r in zip(predictions, references)]
    per_field: dict[str, list[bool]] = {}
    for s in scores:
        for k, ok in s["fields"].items():
            per_field.setdefault(k, []).append(ok)
    return {
        "json_valid_rate": sum(s["valid_json"] for s in scores) / n,
        "field_accuracy": sum(s["field_accuracy"] for s in scores) / n,
        "json_exact_match": sum(s["json_exact_match"] for s in scores) / n,
        "per_field": {k: sum(v) / len(v) for k, v in per_field.items()},
    }


def loss_metrics(nll_sum: float, tokens: int) -> dict[str, float | None]:
    """Mean token loss on the reference answers and its perplexity."""
    if tokens <= 0:
        return {"loss": None, "perplexity": None}
    loss = nll_sum / tokens
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0))}


def delta(base: dict[str, Any], tuned: dict[str, Any]) -> dict[str, float]:
    """tuned − base for every number both have."""
    out = {}
    for k, v in base.items():
        t = tuned.get(k)
        if isinstance(v, (int, float)) and isinstance(t, (int, float)) and not isinstance(v, bool):
            out[k] = t - v
    return out


def headline_metric(metrics: dict[str, Any]) -> str:
    """The one number the runs list shows: field accuracy for JSON answers, else TruthfulQA's MC2, else accuracy
    (normalised first), else ROUGE-L, else loss."""
    base = metrics.get("base") or {}
    for key in ("field_accuracy", "mc2", "acc_norm", "acc", "rougeL", "loss"):
        if base.get(key) is not None:
            return key
    return ""
