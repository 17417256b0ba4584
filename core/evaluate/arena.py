"""Blind A/B votes from the Playground and an Elo leaderboard over the models voted on.

Elo as chatbot arenas use it: every model starts at 1000; a vote moves the two ratings by K·(score − expected),
expected = 1 / (1 + 10^((R_other − R_self) / 400)); a win scores 1, a tie or "both bad" 0.5 each. Votes are
replayed in the order they were cast, so the board is a pure function of the stored votes.
"""
from __future__ import annotations

from dataclasses import dataclass

from sqlmodel import select

from core.config import db_session
from storage import Vote

WINNERS = ("a", "b", "tie", "both_bad")
K_FACTOR = 32.0
START_RATING = 1000.0


def expected_score(r_self: float, r_other: float) -> float:
    return 1.0 / (1.0 + 10 ** ((r_other - r_self) / 400.0))


def elo_update(r_a: float, r_b: float, winner: str, k: float = K_FACTOR) -> tuple[float, float]:
    """New (R_a, R_b) after one vote."""
    if winner not in WINNERS:
        raise ValueError(f"winner must be one of {', '.join(WINNERS)} (got '{winner}')")
    s_a = {"a": 1.0, "b": 0.0}.get(winner, 0.5)
    e_a = expected_score(r_a, r_b)
    return r_a + k * (s_a - e_a), r_b + k * ((1.0 - s_a) - (1.0 - e_a))


@dataclass
class Standing:
    model: str
    label: str
    rating: float = START_RATING
    votes: int = 0
    wins: int = 0
    losses: int = 0
    ties: int = 0
    both_bad: int = 0


def standings(votes: list[Vote]) -> list[Standing]:
    table: dict[str, Standing] = {}
    for v in sorted(votes, key=lambda v: v.id or 0):
        a = table.setdefault(v.model_a, Standing(v.model_a, v.label_a or v.model_a))
        b = table.setdefault(v.model_b, Standing(v.model_b, v.label_b or v.model_b))
        a.rating, b.rating = elo_update(a.rating, b.rating, v.winner)
        a.votes += 1
        b.votes += 1
        if v.winner == "a":
            a.wins, b.losses = a.wins + 1, b.losses + 1
        elif v.winner == "b":
            b.wins, a.losses = b.wins + 1, a.losses + 1
        elif v.winner == "tie":
            a.ties, b.ties = a.ties + 1, b.ties + 1
        else:
            a.both_bad, b.both_bad = a.both_bad + 1, b.both_bad + 1
    return sorted(table.values(), key=lambda s: -s.rating)


def record_vote(*, prompt: str, output_a: str, output_b: str, model_a: str, model_b: str, winner: str,
                label_a: str = "", label_b: str = "", system_prompt: str = "", voter: str = "anonymous",
                settings: dict | None = None, history: dict | None = None) -> Vote:
    """Store one vote. ``history``: in chat mode, each side's earlier turns ({"a": [...], "b": [...]}), so the vote
    can become a preference pair with its conversation (core.data.feedback)."""
    if winner not in WINNERS:
        raise ValueError(f"winner must be one of {', '.join(WINNERS)} (got '{winner}')")
    if model_a == model_b:
        raise ValueError("both sides are the same model: a vote between them says nothing")
    vote = Vote(prompt=prompt, system_prompt=system_prompt or "", output_a=output_a, output_b=output_b,
                model_a=model_a, model_b=model_b, label_a=label_a, label_b=label_b, winner=winner,
                voter=voter or "anonymous", settings=settings or {},
                history=history if history and any(history.values()) else None)
    with db_session() as s:
        s.add(vote)
        s.flush()
        s.refresh(vote)
        return vote


def all_votes() -> list[Vote]:
    with db_session() as s:
        return list(s.exec(select(Vote).order_by(Vote.id)).all())


def leaderboard() -> list[Standing]:
    return standings(all_votes())
