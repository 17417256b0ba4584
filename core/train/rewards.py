"""The reward functions a GRPO run can use: programs that score one completion, from 0 (bad) to 1 (good).

A run names one or more of them (``TrainConfig.rewards``); a completion's reward is their sum. Each one sees the
completion's text and the row's reference answer (the last assistant turn of the conversation the prompt came from).

- ``field_accuracy``: the share of the reference JSON object's fields the completion gets right (the demo task's and
  Evaluate's field accuracy); 0 when the completion holds no JSON object.
- ``valid_json``: 1 when the completion holds a JSON object, else 0.
- ``regex``: 1 when the completion matches ``reward_regex`` (Python ``re.search``), else 0.
- ``length``: 1 when the completion's length in characters is within ``[length_min, length_max]``, falling linearly
  to 0 at half (below) or twice (above) the bound.
- ``rouge_l``: ROUGE-L F1 against the reference answer (for free-text answers).

A reward that raises on a completion gives that completion 0; the run goes on, and the errors are counted per step
and the first of each kind written to the run's log. Nothing here imports torch: the registry is read by the Train
tab, the CLI and config validation too.
"""
from __future__ import annotations

import functools
import json
import re
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass

from core.evaluate.metrics import example_json_scores, extract_json_object, reference_json

REGEX_TIMEOUT_S = 0.5  # a pattern that backtracks for longer on one completion scores 0 (counted as an error)
MAX_SCORED_CHARS = 20_000


@dataclass(frozen=True)
class Reward:
    name: str
    help: str
    needs_reference: bool = False
    needs_json_reference: bool = False


REWARDS: dict[str, Reward] = {r.name: r for r in (
    Reward("field_accuracy", "share of the reference JSON's fields the answer gets right (the demo task's score)",
           needs_reference=True, needs_json_reference=True),
    Reward("valid_json", "1 when the answer holds a JSON object"),
    Reward("regex", "1 when the answer matches the pattern in reward_regex"),
    Reward("length", "1 when the answer's length is within length_min..length_max characters"),
    Reward("rouge_l", "ROUGE-L F1 against the reference answer (free text)", needs_reference=True),
)}


class RewardTimeout(Exception):
    pass


def completion_text(completion) -> str:
    """A completion as text: TRL passes conversational completions as a list of messages."""
    if isinstance(completion, list):
        return "".join(str(m.get("content") or "") for m in completion if isinstance(m, dict))
    return str(completion or "")


def _with_timeout(fn: Callable[[], float], seconds: float) -> float:
    """Run ``fn`` with a wall-clock limit (SIGALRM: the main thread only; elsewhere without a limit). Python's
    regular-expression engine checks for signals while it backtracks, so a runaway pattern is interrupted."""
    if threading.current_thread() is not threading.main_thread():
        return fn()

    def on_alarm(signum, frame):
        raise RewardTimeout(f"took longer than {seconds} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        return fn()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@functools.cache
def _rouge():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def length_score(n: int, lo: int, hi: int) -> float:
    if lo and n < lo:
        return max(0.0, 1.0 - (lo - n) / (lo / 2))
    if hi and n > hi:
        return max(0.0, 1.0 - (n - hi) / hi)
    return 1.0


def score(name: str, text: str, reference: str | None, *, regex: re.Pattern | None = None, length_min: int = 0,
          length_max: int = 0) -> float:
    """One reward for one completion; raises on what it cannot score (the caller turns that into 0 + a count)."""
    text = text[:MAX_SCORED_CHARS]
    if name == "field_accuracy":
        ref = reference_json(reference or "")
        if ref is None:
            raise ValueError("the reference answer is not a JSON object")
        return float(example_json_scores(text, ref)["field_accuracy"])
    if name == "valid_json":
        return 1.0 if extract_json_object(text) is not None else 0.0
    if name == "regex":
        if regex is None:
            raise ValueError("reward 'regex' needs reward_regex")
        return _with_timeout(lambda: 1.0 if regex.search(text) else 0.0, REGEX_TIMEOUT_S)
    if name == "length":
        return length_score(len(text.strip()), length_min, length_max)
    if name == "rouge_l":
        if not reference:
            raise ValueError("no reference answer")
        return float(_rouge().score(reference, text)["rougeL"].fmeasure)
    raise ValueError(f"unknown reward '{name}'")


def check_rewards(names: list[str], *, regex: str | None, length_min: int, length_max: int) -> None:
    """Config-time checks (ValueError with what to change)."""
    if not names:
        raise ValueError(f"GRPO needs at least one reward: {', '.join(REWARDS)}")
    unknown = [n for n in names if n not in REWARDS]
    if unknown:
        raise ValueError(f"unknown reward(s) {', '.join(unknown)}; the studio's rewards are: {', '.join(REWARDS)}")
    if "regex" in names:
        if not regex:
            raise ValueError("reward 'regex' needs reward_regex (the pattern an answer should match)")
    if regex:
        if len(regex) > 500:
            raise ValueError("reward_regex is longer than 500 characters")
        try:
            re.compile(regex)
        except re.error as exc:
            raise ValueError(f"reward_regex is not a valid regular expression: {exc}") from None
    if "length" in names and not (length_min or length_max):
        raise ValueError("reward 'length' needs length_min and/or length_max (characters)")
    if length_min and length_max and length_min > length_max:
        raise ValueError(f"length_min {length_min} is above length_max {length_max}")


def check_references(names: list[str], references: list[str | None], what: str) -> None:
    """Refuse rewards the data cannot feed: a reference-based reward on prompts without answers, a JSON-field reward
    on answers that are not JSON objects."""
    for n in names:
        r = REWARDS[n]
        if r.needs_reference and not any(references):
            raise ValueError(f"reward '{n}' compares with the reference answer, and {what} has none: use valid_json, "
                             "regex or length")
        if r.needs_json_reference and not any(reference_json(x or "") is not None for x in references):
            raise ValueError(f"reward '{n}' scores JSON fields, and no answer in {what} is a JSON object: use "
                             "rouge_l, regex or length")


class RewardSet:
    """The run's rewards as TRL reward functions (``f(prompts, completions, **columns) -> list[float]``), each of
    which turns an error on one completion into 0 and counts it."""

    def __init__(self, names: list[str], *, regex: str | None = None, length_min: int = 0, length_max: int = 0,
                 log: Callable[[str], None] = print):
        self.names = list(names)
        self.pattern = re.compile(regex) if regex else None
        self.length_min, self.length_max = length_min, length_max
        self.log = log
        self.errors = 0  # since the last take_errors()
        self.total_errors = 0
        self._seen: set[str] = set()

    def take_errors(self) -> int:
        n, self.errors = self.errors, 0
        return n

    def _one(self, name: str, completion, reference) -> float:
        try:
            return score(name, completion_text(completion), reference, regex=self.pattern,
                         length_min=self.length_min, length_max=self.length_max)
        except Exception as exc:  # noqa: BLE001 - a reward's failure costs this completion, not the run
            self.errors += 1
            self.total_errors += 1
            key = f"{name}: {type(exc).__name__}: {exc}"[:300]
            if key not in self._seen and len(self._seen) < 20:
                self._seen.add(key)
                self.log(f"reward {key} (that completion scores 0; the run goes on)")
            return 0.0

    def functions(self) -> list[Callable]:
        out = []
        for name in self.names:
            def fn(prompts, completions, reference=None, _name=name, **_):
                refs = reference if reference is not None else [None] * len(completions)
                return [self._one(_name, c, r) for c, r in zip(completions, refs)]

            fn.__name__ = name  # TRL logs rewards/<name>/mean
            out.append(fn)
        return out


def prompt_rows(rows: list[dict]) -> list[dict]:
    """Conversation rows as GRPO prompts: every turn before the last assistant answer is the prompt, that answer is
    the reference. Rows without an assistant answer are prompts without a reference."""
    out = []
    for row in rows:
        msgs = row.get("messages") or []
        last = max((i for i, m in enumerate(msgs) if m.get("role") == "assistant"), default=None)
        prompt = msgs[:last] if last is not None else msgs
        prompt = [{"role": m["role"], "content": m.get("content") or ""} for m in prompt]
        if not prompt or prompt[-1]["role"] == "assistant":
            continue
        ref = msgs[last].get("content") if last is not None else None
        out.append({"prompt": prompt, "reference": ref if isinstance(ref, str) else
                    (json.dumps(ref) if ref is not None else None)})
    return out
