"""Preference data from people (issue 28): the Playground's blind A/B votes become an ordinary preference dataset
(Data tab, versions, splits) for the DPO / ORPO objectives. An evaluation's corrections go the same way
(core.evaluate.corrections builds the rows, :func:`store_pairs` stores them).

Votes → pairs. Votes on the same exchange — system prompt, earlier turns, prompt — between the same two answers are
one pair, whichever side each answer was shown on. "tie" and "both bad" say neither answer is better: those votes are
left out and counted. Votes on a pair that disagree are resolved by majority (the pair is counted as contradictory);
a pair with as many votes for each answer is left out. chosen = the answer most votes picked, rejected = the other;
the prompt carries the system prompt and, in chat mode, the chosen side's earlier turns.

Every row keeps where it came from in ``source`` (``{"from": "votes", "vote_ids": [...], "votes_for": n,
"votes_against": m, "chosen_model": key, "rejected_model": key}``): a field the trainer ignores and the Data tab shows.
The dataset's ``meta["feedback"]`` says what was used, with which filters, and what was left out.

Who may use which votes: in a studio with several people a person turns only their own votes into data (an admin,
the CLI and a single-user studio: everyone's) — :func:`votes_scope`.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime

from core.data.errors import DatasetError

# why a vote (or an evaluation's row) did not become a pair: the key in ``left_out`` and how to say it
LEFT_OUT = {
    "tie": "tie",
    "both_bad": "both bad",
    "no_majority": "on a pair with as many votes for each answer",
    "too_few_votes": "on a pair with fewer votes than asked for",
    "same_answer": "between two identical answers",
    "empty_answer": "with an empty answer",
    "no_reference": "with no reference answer and no edit",
    "already_right": "where the model's answer already equals the chosen one",
    "filtered_out": "picked but not shown by the filter",
}
NO_VOTES = ("no votes yet: in the Playground tick 'Blind A/B', send a prompt to two different models and pick the "
            "better answer; each vote for one answer becomes a preference pair")


@dataclass
class PairPlan:
    """The pairs a set of votes (or an evaluation's rows) makes, before anything is stored."""

    rows: list[dict]
    left_out: dict[str, int] = field(default_factory=dict)
    considered: int = 0  # votes (or example rows) looked at
    contradictory: int = 0  # pairs whose votes disagreed, resolved by majority
    what: str = "votes"

    def describe(self) -> str:
        """One line: what would be used and what is left out (the Playground shows it before the button)."""
        if not self.considered:
            return f"No {self.what} yet."
        head = f"{_count(self.considered, self.what)} → {_count(len(self.rows), 'preference pairs')}"
        if self.contradictory:
            head += f" ({self.contradictory} with disagreeing votes, resolved by majority)"
        return head + "; " + describe_left_out(self.left_out, self.what)


def _count(n: int, what: str) -> str:
    """``3 votes``, ``1 vote``."""
    return f"{n} {what[:-1] if n == 1 and what.endswith('s') else what}"


def describe_left_out(left_out: dict[str, int], what: str = "votes") -> str:
    parts = [f"{n} {LEFT_OUT.get(k, k)}" for k, n in left_out.items() if n]
    return f"left out: {', '.join(parts)}" if parts else f"no {what} left out"


@dataclass
class FeedbackResult:
    dataset_id: int
    name: str
    rows: int
    left_out: dict[str, int]
    considered: int
    contradictory: int
    created: bool
    splits: dict[str, int]
    what: str = "votes"

    @property
    def message(self) -> str:
        head = (f"dataset {self.dataset_id} ({self.name}): {_count(self.rows, 'preference pairs')} from "
                f"{_count(self.considered, self.what)}"
                if self.created else
                f"the same pairs are already stored as dataset {self.dataset_id} ({self.name}; not stored twice)")
        return (f"{head}; {describe_left_out(self.left_out, self.what)}. Ready for the DPO / ORPO objective in the "
                f"Train tab (dataset: {self.dataset_id}).")

    def to_dict(self) -> dict:
        return {"dataset_id": self.dataset_id, "name": self.name, "rows": self.rows, "left_out": self.left_out,
                "considered": self.considered, "contradictory_pairs": self.contradictory, "created": self.created,
                "splits": self.splits, "message": self.message}


# ---- which votes ---------------------------------------------------------------------------------------------------
def votes_scope(user: str | None) -> str | None:
    """Whose votes ``user`` (a page user; '' or None: a single-user studio / the host) may turn into data: their own
    (the voter name to filter on) where several people use the studio, everyone's (None) for an admin and locally."""
    if not user:
        return None
    from core.users import is_admin

    return None if is_admin(user) else user


def parse_since(text: str | datetime | None) -> datetime | None:
    """``--since``: a date (``2025-01-31``, the start of that day, UTC) or an ISO date and time."""
    if text is None or text == "":
        return None
    if isinstance(text, datetime):
        dt = text
    else:
        try:
            dt = datetime.fromisoformat(str(text).strip().replace("Z", "+00:00"))
        except ValueError:
            raise DatasetError(f"--since must be a date like 2025-01-31 (or 2025-01-31T14:00), got {text!r}") from None
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def select_votes(*, model: str | None = None, since: datetime | str | None = None,
                 voter: str | None = None) -> list:
    """Stored votes, oldest first: with ``model`` on either side, cast at or after ``since``, by ``voter`` (None:
    anyone's)."""
    from sqlmodel import or_, select

    from core.config import db_session
    from storage import Vote

    since_dt = parse_since(since)
    q = select(Vote)
    if model:
        q = q.where(or_(Vote.model_a == model, Vote.model_b == model))
    if voter is not None:
        q = q.where(Vote.voter == voter)
    with db_session() as s:
        votes = list(s.exec(q.order_by(Vote.id)).all())
    if since_dt is not None:  # compared in Python: SQLite hands datetimes back without their zone
        votes = [v for v in votes if _utc(v.created_at) >= since_dt]
    return votes


def _utc(dt: datetime) -> datetime:
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


# ---- votes → pairs (pure) ------------------------------------------------------------------------------------------
def _history(vote, side: str) -> list[dict]:
    turns = (vote.history or {}).get(side) or []
    return [{"role": m["role"], "content": str(m.get("content", ""))} for m in turns
            if isinstance(m, dict) and m.get("role") in ("user", "assistant")]


def _prompt(system: str, history: list[dict], prompt: str) -> list[dict]:
    msgs = [{"role": "system", "content": system}] if (system or "").strip() else []
    return msgs + history + [{"role": "user", "content": prompt}]


def plan_from_votes(votes: list, min_votes: int = 1) -> PairPlan:
    """The preference pairs ``votes`` make (see the module docstring); nothing is stored."""
    if min_votes < 1:
        raise DatasetError(f"--min-votes must be at least 1, got {min_votes}")
    left: Counter[str] = Counter()
    pairs: dict[str, dict] = {}
    for v in votes:
        if v.winner in ("tie", "both_bad"):
            left[v.winner] += 1
            continue
        if v.winner not in ("a", "b"):
            continue  # not a vote the Playground casts
        if not (v.output_a or "").strip() or not (v.output_b or "").strip():
            left["empty_answer"] += 1
            continue
        sides = {"a": (v.output_a, _history(v, "a"), v.model_a), "b": (v.output_b, _history(v, "b"), v.model_b)}
        if v.output_a.strip() == v.output_b.strip():
            left["same_answer"] += 1
            continue
        answers = sorted(json.dumps([text, hist], ensure_ascii=False) for text, hist, _ in sides.values())
        key = json.dumps([v.system_prompt or "", v.prompt, answers], ensure_ascii=False)
        pair = pairs.setdefault(key, {"system": v.system_prompt or "", "prompt": v.prompt, "votes": Counter(),
                                      "ids": [], "sides": {}})
        for text, hist, model in sides.values():
            pair["sides"].setdefault(json.dumps([text, hist], ensure_ascii=False), (text, hist, model))
        won = sides[v.winner]
        pair["votes"][json.dumps([won[0], won[1]], ensure_ascii=False)] += 1
        pair["ids"].append(v.id)
    rows: list[dict] = []
    contradictory = 0
    for pair in pairs.values():
        n = sum(pair["votes"].values())
        if n < min_votes:
            left["too_few_votes"] += n
            continue
        ranked = pair["votes"].most_common()
        if len(ranked) > 1 and ranked[0][1] == ranked[1][1]:
            left["no_majority"] += n
            continue
        contradictory += len(ranked) > 1
        chosen_key = ranked[0][0]
        rejected_key = next(k for k in pair["sides"] if k != chosen_key)
        chosen, rejected = pair["sides"][chosen_key], pair["sides"][rejected_key]
        rows.append({
            "prompt": _prompt(pair["system"], chosen[1], pair["prompt"]),
            "chosen": [{"role": "assistant", "content": chosen[0]}],
            "rejected": [{"role": "assistant", "content": rejected[0]}],
            "source": {"from": "votes", "vote_ids": pair["ids"], "votes_for": ranked[0][1],
                       "votes_against": n - ranked[0][1], "chosen_model": chosen[2], "rejected_model": rejected[2]},
        })
    order = ("tie", "both_bad", "no_majority", "too_few_votes", "same_answer", "empty_answer")
    return PairPlan(rows=rows, left_out={k: left[k] for k in order}, considered=len(votes),
                    contradictory=contradictory, what="votes")


# ---- store ---------------------------------------------------------------------------------------------------------
def store_pairs(plan: PairPlan, *, source: str, name: str, feedback: dict, owner: str = "",
                model: str | None = "default", split=None) -> FeedbackResult:
    """Store ``plan``'s rows as a preference dataset through the importer (a version, splits, token stats), with
    ``feedback`` (what it was made from, the filters, what was left out) in its ``meta["feedback"]``."""
    from core.data.importer import import_records

    result = import_records(plan.rows, source=source, name=name, format="preference", owner=owner, model=model,
                            split=split)
    if result.dropped:  # rows the importer refused (e.g. a prompt with no user turn): counted, not lost silently
        plan.left_out["refused_by_import"] = result.dropped
    _set_feedback_meta(result.dataset_id, {**feedback, "considered": plan.considered, "pairs": result.kept,
                                           "left_out": plan.left_out, "contradictory_pairs": plan.contradictory})
    return FeedbackResult(dataset_id=result.dataset_id, name=result.name, rows=result.kept, left_out=plan.left_out,
                          considered=plan.considered, contradictory=plan.contradictory, created=result.created,
                          splits=result.splits, what=plan.what)


def _set_feedback_meta(dataset_id: int, feedback: dict) -> None:
    from core.config import db_session
    from storage import Dataset

    with db_session() as session:
        row = session.get(Dataset, dataset_id)
        if row is not None:
            row.meta = {**(row.meta or {}), "feedback": feedback}
            session.add(row)


def preference_from_votes(*, model: str | None = None, since: str | datetime | None = None, min_votes: int = 1,
                          voter: str | None = None, owner: str = "", name: str | None = None,
                          tokenizer: str | None = "default") -> FeedbackResult:
    """Turn the stored votes (filtered by ``model`` / ``since`` / ``voter``) into a preference dataset. DatasetError
    with what to do when there is nothing to make one from."""
    votes = select_votes(model=model, since=since, voter=voter)
    if not votes:
        if model or since or voter is not None:
            filters = ", ".join(s for s in (f"model {model}" if model else "", f"since {since}" if since else "",
                                            "cast by you" if voter is not None else "") if s)
            raise DatasetError(f"no votes match ({filters}): {NO_VOTES}")
        raise DatasetError(NO_VOTES)
    plan = plan_from_votes(votes, min_votes)
    if not plan.rows:
        raise DatasetError(f"none of the {len(votes)} votes makes a preference pair "
                           f"({describe_left_out(plan.left_out)}): vote for the better of two different answers in "
                           "the Playground's blind A/B mode"
                           + (", or lower --min-votes" if plan.left_out.get("too_few_votes") else ""))
    since_dt = parse_since(since)
    feedback = {"from": "votes", "model": model or None, "since": since_dt.isoformat() if since_dt else None,
                "min_votes": min_votes, "voter": voter, "vote_ids": sorted(i for r in plan.rows
                                                                          for i in r["source"]["vote_ids"])}
    label = f"Playground votes ({len(votes)}" + (f", model {model}" if model else "") + ")"
    return store_pairs(plan, source=label, name=name or "preferences-from-votes", feedback=feedback, owner=owner,
                       model=tokenizer)


def votes_summary(voter: str | None = None, min_votes: int = 1) -> str:
    """What the Playground's button would make right now, as one line."""
    try:
        return plan_from_votes(select_votes(voter=voter), min_votes).describe()
    except DatasetError as exc:
        return str(exc)


def feedback_line(feedback: dict | None) -> str:
    """A dataset's ``meta["feedback"]`` in words (the Data tab's detail): what it was made from, what was left out."""
    if not isinstance(feedback, dict) or not feedback:
        return ""
    left = describe_left_out(feedback.get("left_out") or {}, "rows")
    if feedback.get("from") == "votes":
        filters = [f"model {feedback['model']}" if feedback.get("model") else "",
                   f"since {feedback['since'][:10]}" if feedback.get("since") else "",
                   f"at least {feedback['min_votes']} votes a pair" if (feedback.get("min_votes") or 1) > 1 else ""]
        shown = ", ".join(f for f in filters if f)
        return (f"made from {feedback.get('considered')} Playground votes" + (f" ({shown})" if shown else "")
                + f": {feedback.get('pairs')} pairs, {feedback.get('contradictory_pairs', 0)} settled by majority; "
                + left)
    if feedback.get("from") == "evaluation":
        return (f"corrections from evaluation #{feedback.get('evaluation_id')} (filter {feedback.get('filter')}; "
                f"rejected: the {feedback.get('rejected')} model's answers): {feedback.get('pairs')} pairs from "
                f"{feedback.get('considered')} examples; {left}")
    return ""


def source_line(source: dict | None) -> str:
    """A row's ``source`` in words (the Data tab's row preview)."""
    if not isinstance(source, dict) or not source:
        return ""
    if source.get("from") == "votes":
        ids = ", ".join(f"#{i}" for i in source.get("vote_ids") or [])
        against = source.get("votes_against") or 0
        return (f"from Playground votes {ids}: {source.get('votes_for')} for the chosen answer"
                + (f", {against} against (majority)" if against else "")
                + f"; chosen {source.get('chosen_model')}, rejected {source.get('rejected_model')}")
    if source.get("from") == "evaluation":
        return (f"from evaluation #{source.get('evaluation_id')}, example #{source.get('example')}: chosen = "
                f"{source.get('chosen')}, rejected = the {source.get('rejected')} model's answer")
    return json.dumps(source, ensure_ascii=False)[:300]
