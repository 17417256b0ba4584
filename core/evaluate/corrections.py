"""Corrections from an evaluation's per-example view (issue 28): picked rows — or every row a filter such as "tuned
worse" shows — become preference pairs: chosen = the reference answer (or an answer a person edited), rejected = the
model's answer. Stored like the Playground's votes (core.data.feedback): an ordinary preference dataset for DPO /
ORPO, each row keeping ``source = {"from": "evaluation", "evaluation_id", "example", "chosen", "rejected"}``.

Evaluations are visible to everyone who can open the Evaluate tab (its list and its export show every example), so
anyone who sees one may make corrections from it; the dataset is theirs.
"""
from __future__ import annotations

from collections import Counter

from core.data.errors import DatasetError
from core.data.feedback import FeedbackResult, PairPlan, describe_left_out, store_pairs
from core.evaluate import results

REJECT_SIDES = ("tuned", "base")


def filter_name(text: str | None) -> str:
    """A filter as typed on the command line (``tuned_worse``) or shown in the tab (``tuned worse``)."""
    name = (text or "all").strip().replace("_", " ").replace("-", " ")
    if name not in results.FILTERS:
        names = ", ".join(f.replace(" ", "_") for f in results.FILTERS)
        raise DatasetError(f"unknown filter '{text}': use one of {names}")
    return name


def parse_rows(text: str | None) -> list[int] | None:
    """``"1, 4,7"`` → [1, 4, 7] (the example numbers the per-example table shows in its '#' column); empty → None."""
    if text is None or not str(text).strip():
        return None
    out = []
    for part in str(text).replace(";", ",").split(","):
        part = part.strip()
        if not part:
            continue
        if not part.isdigit():
            raise DatasetError(f"rows must be example numbers separated by commas (like 1,4,7), got {part!r}")
        out.append(int(part))
    return out or None


def plan_corrections(evaluation_id: int, examples: list[dict], *, which: str = "all", rows: list[int] | None = None,
                     edits: dict[int, str] | None = None, reject: str = "tuned") -> PairPlan:
    """The pairs the picked examples make (pure over the per-example records; see the module docstring)."""
    if reject not in REJECT_SIDES:
        raise DatasetError(f"the rejected answer is the 'tuned' or the 'base' model's, not {reject!r}")
    which = filter_name(which)
    edits = {int(k): v for k, v in (edits or {}).items()}
    by_no = {ex.get("i"): ex for ex in examples}
    unknown = [n for n in list(rows or []) + list(edits) if n not in by_no]
    if unknown:
        shown = f"{min(by_no)}-{max(by_no)}" if by_no else "none"
        raise DatasetError(f"example {unknown[0]} is not in evaluation {evaluation_id} (its examples: {shown})")
    if rows is not None:
        outside = [n for n in edits if n not in rows]
        if outside:
            raise DatasetError(f"example {outside[0]} has an edited answer but is not among the picked rows")
        picked = [by_no[n] for n in dict.fromkeys(rows)]
    else:
        picked = list(examples)
    left: Counter[str] = Counter()
    out: list[dict] = []
    for ex in picked:
        if not results.matches(ex, which):
            left["filtered_out" if rows is not None else "_hidden"] += 1
            continue
        no = ex.get("i")
        edited = (edits.get(no) or "").strip()
        chosen = edited or (ex.get("reference") or "")
        rejected = ex.get(reject) or ""
        if not chosen.strip():
            left["no_reference"] += 1
        elif not rejected.strip():
            left["empty_answer"] += 1
        elif chosen.strip() == rejected.strip():
            left["already_right"] += 1
        else:
            out.append({"prompt": list(ex.get("prompt") or []),
                        "chosen": [{"role": "assistant", "content": chosen}],
                        "rejected": [{"role": "assistant", "content": rejected}],
                        "source": {"from": "evaluation", "evaluation_id": evaluation_id, "example": no,
                                   "chosen": "edited" if edited else "reference", "rejected": reject}})
    considered = len(picked) - left.pop("_hidden", 0)
    order = ("no_reference", "already_right", "empty_answer", "filtered_out")
    return PairPlan(rows=out, left_out={k: left[k] for k in order}, considered=considered, what="examples")


def corrections_from_evaluation(evaluation_id: int | str, *, which: str = "all", rows: list[int] | None = None,
                                edits: dict[int, str] | None = None, reject: str = "tuned", owner: str = "",
                                name: str | None = None, tokenizer: str | None = "default") -> FeedbackResult:
    """Turn an evaluation's picked / filtered examples into a preference dataset. DatasetError when there is nothing
    to make one from, saying why."""
    try:
        ev = results.get(int(str(evaluation_id).strip()))
    except ValueError as exc:  # EvaluationNotFound is one, and so is a non-number
        raise DatasetError(str(exc) if isinstance(exc, results.EvaluationNotFound)
                           else f"evaluation id must be a number, got {evaluation_id!r}") from None
    if ev.kind != "generation":
        raise DatasetError(f"evaluation {ev.id} is a {ev.kind.replace('_', '-')} evaluation: it scored choices, it has "
                           "no written answers to correct; use a generation evaluation")
    examples = list(results.iter_examples(ev))
    if not examples:
        raise DatasetError(f"evaluation {ev.id} has no per-example records (its file {ev.examples_path} is missing)")
    plan = plan_corrections(ev.id, examples, which=which, rows=rows, edits=edits, reject=reject)
    if not plan.rows:
        if not plan.considered:
            raise DatasetError(f"the filter '{filter_name(which)}' shows no example of evaluation {ev.id}: pick "
                               "another filter or rows")
        raise DatasetError(f"none of the {plan.considered} example(s) picked from evaluation {ev.id} makes a "
                           f"correction ({describe_left_out(plan.left_out, 'examples')}): pick rows whose model "
                           "answer differs from the reference, or type an edited answer")
    feedback = {"from": "evaluation", "evaluation_id": ev.id, "filter": filter_name(which), "rows": rows,
                "edited": sorted(int(k) for k in (edits or {})), "rejected": reject,
                "rejected_model": ev.tuned_label if reject == "tuned" else ev.base_label,
                "dataset": ev.dataset_ref, "split": ev.split}
    return store_pairs(plan, source=f"corrections of evaluation {ev.id} ({ev.tuned_label} on {ev.dataset_ref})",
                       name=name or f"corrections-eval-{ev.id}", feedback=feedback, owner=owner, model=tokenizer)
