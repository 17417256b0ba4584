"""Stored evaluations: the Evaluation rows and their per-example JSONL, read back without recomputing anything.

Per-example records (one JSON object a line in ``examples_path``)::

    {"i": 0, "prompt": [messages], "reference": str | null, "base": str, "tuned": str,
     "scores": {"base": {...}, "tuned": {...}}, "loss": {"base": float, "tuned": float}, "note": str?}

Multiple-choice records hold ``question``, ``choices``, ``gold`` (None for an MC2-only question), per side ``pred``,
``scores`` (``correct`` / ``correct_norm``, ``mc2``) and ``lls`` (+ ``mc2_lls``). Any number of choices: they are
labelled A-Z, then AA, AB, ...
"""
from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlmodel import select

from core.config import db_session
from core.evaluate.multiple_choice import choice_label
from storage import Evaluation

FILTERS = ("all", "tuned better", "tuned worse", "both wrong", "changed")


class EvaluationNotFound(ValueError):
    pass


def save(evaluation: Evaluation) -> Evaluation:
    with db_session() as s:
        s.add(evaluation)
        s.flush()
        s.refresh(evaluation)
        return evaluation


def get(evaluation_id: int) -> Evaluation:
    with db_session() as s:
        ev = s.get(Evaluation, int(evaluation_id))
    if ev is None:
        raise EvaluationNotFound(f"evaluation {evaluation_id} not found")
    return ev


def by_job(job_id: int) -> Evaluation | None:
    with db_session() as s:
        return s.exec(select(Evaluation).where(Evaluation.job_id == job_id)).first()


def list_evaluations(run_id: int | None = None, limit: int = 200) -> list[Evaluation]:
    with db_session() as s:
        q = select(Evaluation)
        if run_id is not None:
            q = q.where(Evaluation.run_id == run_id)
        return list(s.exec(q.order_by(Evaluation.id.desc()).limit(limit)).all())


def delete_for_run(run_id: int) -> int:
    """Remove a deleted training run's evaluations (their per-example files live in their jobs' folders)."""
    from sqlalchemy import delete

    with db_session() as s:
        return s.exec(delete(Evaluation).where(Evaluation.run_id == run_id)).rowcount


def latest_for_runs(run_ids: list[int]) -> dict[int, Evaluation]:
    """The newest evaluation of each run (the runs list's headline metric)."""
    if not run_ids:
        return {}
    with db_session() as s:
        rows = s.exec(select(Evaluation).where(Evaluation.run_id.in_(run_ids)).order_by(Evaluation.id)).all()
    return {ev.run_id: ev for ev in rows}


def iter_examples(ev: Evaluation) -> Iterator[dict]:
    p = Path(ev.examples_path)
    if not p.is_file():
        return
    with open(p, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def _correct(ex: dict, side: str) -> bool | None:
    """Did this side get the example right? JSON: every field; multiple choice: the gold choice; text: exact."""
    sc = (ex.get("scores") or {}).get(side) or {}
    for key in ("json_exact_match", "correct", "exact_match"):
        if key in sc:
            return bool(sc[key])
    return None


def _score(ex: dict, side: str) -> float | None:
    sc = (ex.get("scores") or {}).get(side) or {}
    for key in ("field_accuracy", "correct", "mc2", "rougeL", "chrf"):
        if sc.get(key) is not None:
            return float(sc[key])
    return None


def matches(ex: dict, which: str) -> bool:
    if which in ("", "all"):
        return True
    b, t = _score(ex, "base"), _score(ex, "tuned")
    if which == "tuned better":
        return b is not None and t is not None and t > b
    if which == "tuned worse":
        return b is not None and t is not None and t < b
    if which == "both wrong":
        return _correct(ex, "base") is False and _correct(ex, "tuned") is False
    if which == "changed":
        return ex.get("base") != ex.get("tuned") or ex.get("pred", {}).get("base") != ex.get("pred", {}).get("tuned")
    raise ValueError(f"unknown filter '{which}' (choose from {', '.join(FILTERS)})")


def examples(ev: Evaluation, which: str = "all", limit: int | None = None) -> list[dict]:
    out = []
    for ex in iter_examples(ev):
        if matches(ex, which):
            out.append(ex)
            if limit is not None and len(out) >= limit:
                break
    return out


def prompt_text(ex: dict) -> str:
    if "question" in ex:
        return ex["question"] + "\n" + "\n".join(f"{choice_label(i)}. {c}"
                                                 for i, c in enumerate(ex.get("choices", [])))
    msgs = ex.get("prompt") or []
    return "\n".join(f"{m.get('role')}: {m.get('content')}" for m in msgs if m.get("role") != "system") or ""


def _label(value: Any) -> str:
    return choice_label(value) if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else ""


def flat_row(ex: dict) -> dict[str, Any]:
    """One example as flat columns (the table and the CSV export)."""
    row: dict[str, Any] = {"#": ex.get("i"), "prompt": prompt_text(ex)}
    if "question" in ex:
        pred = ex.get("pred") or {}
        row["reference"] = _label(ex.get("gold"))
        if ex.get("gold") is None and "mc2_lls" in ex:
            row["reference"] = "(MC2: several true)"
        row["base"] = _label(pred.get("base"))
        row["tuned"] = _label(pred.get("tuned"))
    else:
        row["reference"] = ex.get("reference") or ""
        row["base"] = ex.get("base") or ""
        row["tuned"] = ex.get("tuned") or ""
    for side in ("base", "tuned"):
        s = _score(ex, side)
        row[f"{side} score"] = None if s is None else round(s, 4)
    if ex.get("note"):
        row["note"] = ex["note"]
    return row


def export(ev: Evaluation, fmt: str, which: str = "all") -> bytes:
    rows = examples(ev, which)
    if fmt == "jsonl":
        return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()
    if fmt == "csv":
        flat = [flat_row(r) for r in rows]
        cols: list[str] = []
        for r in flat:
            cols += [k for k in r if k not in cols]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=cols or ["#"])
        writer.writeheader()
        writer.writerows(flat)
        return buf.getvalue().encode()
    raise ValueError(f"export format must be csv or jsonl (got '{fmt}')")


def to_dict(ev: Evaluation, *, with_examples: int = 0) -> dict:
    d = {
        "evaluation_id": ev.id, "job_id": ev.job_id, "run_id": ev.run_id, "kind": ev.kind, "name": ev.name,
        "base": (ev.metrics or {}).get("base", {}), "tuned": (ev.metrics or {}).get("tuned", {}),
        "delta": (ev.metrics or {}).get("delta", {}), "notes": (ev.metrics or {}).get("notes", []),
        "base_model": ev.base_label, "tuned_model": ev.tuned_label, "dataset": ev.dataset_ref, "split": ev.split,
        "n": ev.n, "settings": ev.settings, "headline": ev.headline, "examples_path": ev.examples_path,
        "examples_per_s": (ev.metrics or {}).get("examples_per_s"), "seconds": (ev.metrics or {}).get("seconds"),
        "formulation": (ev.metrics or {}).get("formulation"),
        "created_at": ev.created_at.strftime("%Y-%m-%dT%H:%M:%SZ") if ev.created_at else None,
    }
    if with_examples:
        d["examples"] = examples(ev, limit=with_examples)
    return d
