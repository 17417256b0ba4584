"""The LLM judge's arithmetic (issue 28), pure: the prompts it is asked, how its answers are read, and how far it agrees
with the people who voted.

* Pairwise: the judge sees the question, answer A and answer B, and names the better one (A, B or TIE). Every pair is
  asked twice, the second time with the answers swapped; a verdict that changes side when the answers swap is a
  *position flip* and counts as a tie (the judge picked a position, not an answer).
* Rubric: the judge scores one answer 1–5 against a rubric a person wrote. Answers it gives that name no score are
  counted as unparseable, never guessed.
* Agreement with people: the judge's verdict and the people's vote on the same pair, each one of ``a`` / ``b`` /
  ``tie`` (a "both bad" vote says neither answer is better: a tie). Percent agreement and Cohen's κ over those three
  categories, with the count n. In rubric mode a pair's verdict is the answer with the higher score (equal or
  unreadable scores: a tie).
"""
from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

VERDICTS = ("a", "b", "tie")
KAPPA_TRUST = 0.4  # below this (Landis & Koch: at most "fair") the judge is shown as one that disagrees with people
N_TRUST = 20  # fewer judged votes than this: too few to know
ANSWER_CHARS = 4000  # an answer longer than this is cut before it goes into a judge prompt (said in the prompt)

PAIRWISE_SYSTEM = ("You are a careful, impartial judge. You compare two answers to the same question and say which "
                   "one is better: more correct, more helpful, better following the instructions. Ignore the order "
                   "in which they are shown and their length. Reply with one token: A, B or TIE.")
RUBRIC_SYSTEM = ("You are a careful, impartial judge. You score one answer to a question from 1 (worst) to 5 (best) "
                 "against the rubric you are given. Reply with the score only, like: Score: 4")


def _cut(text: str) -> str:
    text = str(text or "")
    return text if len(text) <= ANSWER_CHARS else text[:ANSWER_CHARS] + " [… cut]"


def question_text(prompt: Sequence[dict]) -> str:
    """A conversation as the judge reads it: one user turn is just its text; more turns are labelled by role."""
    turns = [m for m in prompt if isinstance(m, dict)]
    if len(turns) == 1 and turns[0].get("role") == "user":
        return _cut(turns[0].get("content", ""))
    return "\n".join(f"{str(m.get('role', 'user')).capitalize()}: {_cut(m.get('content', ''))}" for m in turns)


def pairwise_messages(prompt: Sequence[dict], first: str, second: str, reference: str | None = None) -> list[dict]:
    """The chat the judge gets for one order of a pair: ``first`` is shown as A, ``second`` as B."""
    ref = f"Reference answer (correct, for guidance):\n{_cut(reference)}\n\n" if reference else ""
    user = (f"Question:\n{question_text(prompt)}\n\n{ref}Answer A:\n{_cut(first)}\n\nAnswer B:\n{_cut(second)}\n\n"
            "Which answer is better? Reply with A, B or TIE.")
    return [{"role": "system", "content": PAIRWISE_SYSTEM}, {"role": "user", "content": user}]


def rubric_messages(prompt: Sequence[dict], answer: str, rubric: str, reference: str | None = None) -> list[dict]:
    ref = f"Reference answer (correct, for guidance):\n{_cut(reference)}\n\n" if reference else ""
    user = (f"Rubric:\n{rubric.strip()}\n\nQuestion:\n{question_text(prompt)}\n\n{ref}Answer:\n{_cut(answer)}\n\n"
            "Score the answer from 1 to 5 against the rubric. Reply like: Score: 4")
    return [{"role": "system", "content": RUBRIC_SYSTEM}, {"role": "user", "content": user}]


# ---- reading the judge's answers -----------------------------------------------------------------------------------
_TIE = r"(?:tie|draw|equal(?:ly good)?|same|neither|both)"
_BRACKETED = re.compile(r"\[\[\s*(A|B|TIE)\s*\]\]", re.IGNORECASE)
_NAMED = re.compile(r"\b(?:winner|verdict|better(?:\s+answer)?|best(?:\s+answer)?|choice|prefer(?:red)?|pick|choose)"
                    r"\s*(?:is|:|=|-)?\s*(?:answer\s*|option\s*|response\s*)?\**\(?\s*(A|B|" + _TIE + r")\b",
                    re.IGNORECASE)
_X_IS_BETTER = re.compile(r"\b(?:answer\s*|option\s*|response\s*)?\(?([AB])\)?\s+is\s+(?:the\s+)?(?:better|best|"
                          r"more|superior|preferable|correct)\b")
_FIRST = re.compile(r"^\W*(?:answer\s*|option\s*)?(A|B)(?![\w:'])")
_FIRST_TIE = re.compile(r"^\W*" + _TIE + r"\b", re.IGNORECASE)
_ONLY_LETTER = re.compile(r"^\W*(?:answer\s*|option\s*)?(A|B)[\s.!)\]*]*$")  # "A:" is a label, not a verdict
_LONE = re.compile(r"(?<![\w'])([AB])(?![\w'])")


def parse_pairwise(text: str | None) -> str | None:
    """``"a"`` / ``"b"`` / ``"tie"`` from a judge's reply, or None when it names neither answer (unparseable).

    Read in order of how explicit the reply is: ``[[A]]``; "winner: B", "better answer: A", "verdict: tie"; "A is
    better" (a reply naming both ways: unparseable); a first line that is just A or B, or a reply that starts with
    A / B and names no other (capital letters: a reply starting with the word "a" is not a verdict; "A:" is a label);
    a reply that starts with TIE; last, one capital A or B standing alone ("A or B": unparseable)."""
    t = (text or "").strip()
    if not t:
        return None
    for pattern in (_BRACKETED, _NAMED, _X_IS_BETTER):
        found = {_verdict(w) for w in pattern.findall(t)}
        if len(found) == 1:
            return found.pop()
        if found:  # "A is better … B is better": it said both
            return None
    letters = set(_LONE.findall(t))
    m = _FIRST.match(t)
    if m and (letters == {m.group(1)} or _ONLY_LETTER.match(t.splitlines()[0])):
        return m.group(1).lower()
    if _FIRST_TIE.match(t):
        return "tie"
    return letters.pop().lower() if len(letters) == 1 else None


def _verdict(word: str) -> str:
    w = word.strip().lower()
    return w if w in ("a", "b") else "tie"


_SCORE_BRACKETED = re.compile(r"\[\[\s*([1-5])(?:\.0)?\s*\]\]")
_SCORE_NAMED = re.compile(r"\b(?:score|rating|grade|rate[sd]?)\b\s*(?:is|of|:|=|-)?\s*\**\s*([1-5])(?:\.0)?(?![\d.])",
                          re.IGNORECASE)
_SCORE_OUT_OF = re.compile(r"(?<![\d.])([1-5])(?:\.0)?\s*(?:/|out\s+of)\s*5\b", re.IGNORECASE)
_SCORE_FIRST = re.compile(r"^\W*([1-5])(?![\d.]\d|\d)")
_NUMBERS = re.compile(r"(?<![\d.])\d+(?:\.\d+)?(?!\.?\d)")


def parse_rubric(text: str | None) -> int | None:
    """A 1–5 score from a judge's reply, or None (unparseable): ``[[4]]``, "Score: 4", "4/5", "4 out of 5", a reply
    that starts with the score, or the only number in the reply when it is 1–5. A number outside 1–5 is not read as
    a score ("Score: 7" is unparseable)."""
    t = (text or "").strip()
    if not t:
        return None
    for pattern in (_SCORE_BRACKETED, _SCORE_NAMED, _SCORE_OUT_OF, _SCORE_FIRST):
        m = pattern.search(t) if pattern is not _SCORE_FIRST else pattern.match(t)
        if m:
            return int(m.group(1))
    numbers = _NUMBERS.findall(t)
    if len(numbers) == 1 and numbers[0] in ("1", "2", "3", "4", "5"):
        return int(numbers[0])
    return None


# ---- both orders, and rubric scores, as one verdict ----------------------------------------------------------------
def combine_orders(first: str | None, swapped: str | None) -> tuple[str, bool]:
    """(verdict, position flip) of a pair asked twice: ``first`` with the answers as given, ``swapped`` read back in
    the given order (the judge's "A" in the swapped order is the given B). The same verdict both times stands; a
    winner that changes side is a position flip and a tie; a tie or an unreadable reply in either order is a tie."""
    if first == swapped and first is not None:
        return first, False
    return "tie", {first, swapped} == {"a", "b"}


def unswap(verdict: str | None) -> str | None:
    """A verdict given with the answers swapped, in the given order."""
    return {"a": "b", "b": "a"}.get(verdict, verdict) if verdict else verdict


def verdict_from_scores(score_a: int | None, score_b: int | None) -> str:
    if score_a is None or score_b is None or score_a == score_b:
        return "tie"
    return "a" if score_a > score_b else "b"


def human_verdict(winner: str) -> str:
    """A Playground vote as a verdict: ``a`` / ``b``; a tie and "both bad" (neither is better) are ``tie``."""
    return winner if winner in ("a", "b") else "tie"


# ---- agreement -----------------------------------------------------------------------------------------------------
def percent_agreement(x: Sequence[str], y: Sequence[str]) -> float | None:
    """The share of items on which the two raters give the same label (None for no items)."""
    if len(x) != len(y):
        raise ValueError(f"two raters must label the same items ({len(x)} against {len(y)})")
    if not x:
        return None
    return sum(a == b for a, b in zip(x, y)) / len(x)


def cohens_kappa(x: Sequence[str], y: Sequence[str]) -> float | None:
    """Cohen's κ of two raters over the same items: (p_o − p_e) / (1 − p_e), p_o the observed agreement, p_e the
    agreement expected by chance from each rater's own label frequencies. None where it is undefined: no items, or
    both raters always giving the one same label (p_e = 1)."""
    po = percent_agreement(x, y)
    if po is None:
        return None
    n = len(x)
    cx, cy = Counter(x), Counter(y)
    pe = sum(cx[k] * cy[k] for k in set(cx) | set(cy)) / (n * n)
    if pe >= 1.0:
        return None
    return (po - pe) / (1.0 - pe)


def trust_warning(kappa: float | None, n: int) -> str | None:
    """What to say beside a judge's scores when its agreement with people does not earn trust (None: it does)."""
    if n == 0:
        return ("no votes to measure this judge against: nobody has checked it. Cast blind A/B votes in the "
                "Playground, then judge again")
    if n < N_TRUST:
        return f"only {n} vote(s) to measure this judge against (fewer than {N_TRUST}): too few to trust it yet"
    if kappa is None or kappa < KAPPA_TRUST:
        shown = "undefined" if kappa is None else f"{kappa:.2f}"
        return (f"a judge that disagrees with people: Cohen's κ {shown} over {n} votes (below {KAPPA_TRUST}); do not "
                "trust its scores")
    return None


def agreement_block(human: Sequence[str], judge: Sequence[str], flips: int, pairs_both_orders: int) -> dict:
    """The numbers shown beside every judge score: ``agreement`` (share), ``kappa``, ``n`` (votes judged),
    ``position_flip_rate`` (share of pairs asked in both orders whose winner changed side; None when none was),
    and ``warning`` (None when the judge agrees well enough with enough people)."""
    kappa = cohens_kappa(human, judge)
    return {"agreement": percent_agreement(human, judge), "kappa": kappa, "n": len(human),
            "position_flip_rate": flips / pairs_both_orders if pairs_both_orders else None,
            "position_flips": flips, "pairs_both_orders": pairs_both_orders,
            "warning": trust_warning(kappa, len(human))}
