"""The ``judge`` job kind (issue 28): a model the studio can run scores answers — pairwise (A vs B, asked in both
orders) or 1–5 against a rubric a person writes — over the Playground's votes or an evaluation's examples, and is
measured against the people before anyone trusts it (core.evaluate.judge_scores has the arithmetic).

The judge is any model the studio runs: ``default`` (the embedded model), a Hub id or model folder, a training run
(``run:7`` / ``7``), an adapter folder — loaded through core.generate like every other side —, a running deployment
(``deployment:3``: its OpenAI-compatible endpoint) or ``endpoint``: the OpenAI-compatible endpoint the studio's admin
configured in the environment (``FTS_JUDGE_ENDPOINT``, the model name in ``FTS_JUDGE_MODEL``, the key in
``FTS_JUDGE_API_KEY``). Nobody names a URL from the page or the CLI: the URL is the admin's, the key is read from the
environment at the moment of the call and never stored, logged or shown (core.secrets masks it in logs and errors).

Every judge run measures the judge on the votes that exist (the page user's own in a shared studio, everyone's for an
admin and the CLI), so its agreement (percent, Cohen's κ, n) and position-flip rate stand next to its scores even when
it judged an evaluation. Where it is stored: the job's ``final_metrics`` (the agreement block and the scores — the
runs table already keeps a job's result, survives restarts and is listed with the job) and ``judgements.jsonl`` in the
job's folder (every question asked, the judge's reply as text, the verdict read from it). A judge run has no base and
tuned side, so it is not an Evaluation row; nothing new in the schema.
"""
from __future__ import annotations

import json
import os
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import ClassVar, Literal
from urllib.parse import urlparse

from pydantic import Field, field_validator, model_validator

from core import runs
from core.evaluate import judge_scores as J
from core.generate import GenerateError, GenSettings, ModelSource, resolve_source
from core.jobconfig import ConfigError, JobConfig
from core.runs.errors import JobError
from core.runs.worker import JobResult, StopRequested, log

ENDPOINT_REF = "endpoint"
ENDPOINT_URL_ENV = "FTS_JUDGE_ENDPOINT"
ENDPOINT_MODEL_ENV = "FTS_JUDGE_MODEL"
ENDPOINT_KEY_ENV = "FTS_JUDGE_API_KEY"
RUBRIC_CHARS = 4000
JUDGEMENTS_FILE = "judgements.jsonl"


class JudgeConfigError(ConfigError):
    """A judge config a person can fix; the message names the field."""


class JudgeConfig(JobConfig):
    config_what: ClassVar[str] = "judge"
    config_error: ClassVar[type[ValueError]] = JudgeConfigError

    judge: str = Field(..., description="the judge model: default, a run (run:7), a model / adapter folder, "
                                        "deployment:ID or endpoint (the admin's)")
    mode: Literal["pairwise", "rubric"] = Field("pairwise", description="pairwise (A vs B, both orders) or rubric "
                                                                        "(a 1-5 score against the rubric)")
    rubric: str | None = Field(None, description="rubric mode: what a 5 and a 1 look like, in your words")
    evaluation_id: int | None = Field(None, description="judge this evaluation's examples (base vs tuned); empty: "
                                                        "the votes only")
    limit: int | None = Field(50, description="at most this many votes and this many examples (None: all)")
    voter: str | None = Field(None, description="whose votes measure the judge (None: everyone's)")
    max_new_tokens: int = Field(24, description="most tokens of each judge reply")
    batch_size: int = Field(8, description="judge prompts per batch (a local judge)")
    name: str = ""

    @field_validator("limit")
    @classmethod
    def _limit(cls, v):
        if v is not None and v < 1:
            raise ValueError(f"limit must be at least 1 (got {v}); leave it empty for all")
        return v

    @field_validator("max_new_tokens", "batch_size")
    @classmethod
    def _positive(cls, v, info):
        if v < 1:
            raise ValueError(f"{info.field_name} must be at least 1 (got {v})")
        return v

    @model_validator(mode="after")
    def _check(self):
        if not (self.judge or "").strip():
            raise ValueError("pick a judge model (default, a run, a folder, deployment:ID or endpoint)")
        if self.mode == "rubric":
            if not (self.rubric or "").strip():
                raise ValueError("rubric mode needs a rubric: say what a 5 and a 1 look like")
            if len(self.rubric) > RUBRIC_CHARS:
                raise ValueError(f"the rubric is {len(self.rubric)} characters; keep it under {RUBRIC_CHARS}")
        return self


# ---- which model judges ----------------------------------------------------------------------------------------
def configured_endpoint() -> ModelSource | None:
    """The admin's OpenAI-compatible judge endpoint (``FTS_JUDGE_ENDPOINT``), or None when none is configured. The
    source names the key's environment variable, never the key."""
    url = os.environ.get(ENDPOINT_URL_ENV, "").strip()
    if not url:
        return None
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise GenerateError(f"{ENDPOINT_URL_ENV} must be an http(s) URL of an OpenAI-compatible API (…/v1); ask the "
                            "studio's admin to fix it")
    model = os.environ.get(ENDPOINT_MODEL_ENV, "").strip() or "default"
    return ModelSource(f"endpoint {model} at {parsed.hostname}", model, None, None, endpoint=url.rstrip("/"),
                       api_key_env=ENDPOINT_KEY_ENV)


def _deployment_source(dep_id: int) -> ModelSource:
    """A running deployment read from its row (the deploy layer sits above this one; core.deploy.sources does the
    same for the Playground)."""
    from core.config import db_session
    from storage import Deployment

    with db_session() as s:
        dep = s.get(Deployment, dep_id)
    if dep is None:
        raise GenerateError(f"deployment {dep_id} not found: see the Deploy tab")
    if dep.status != "running" or not dep.url:
        raise GenerateError(f"deployment {dep_id} is {dep.status}, not running: start it in the Deploy tab")
    return ModelSource(f"deployment #{dep.id} {dep.served_name} ({dep.target})", dep.served_name, None, dep.run_id,
                       endpoint=dep.url)


def resolve_judge(ref: str) -> ModelSource:
    """What a person picked as the judge, as a model source (GenerateError says why not)."""
    text = (ref or "").strip()
    low = text.lower()
    if low == ENDPOINT_REF:
        src = configured_endpoint()
        if src is None:
            raise GenerateError(f"no judge endpoint is configured: the studio's admin sets {ENDPOINT_URL_ENV} (and "
                                f"{ENDPOINT_MODEL_ENV}, {ENDPOINT_KEY_ENV}) in the environment")
        return src
    if low.startswith("deployment:"):
        digits = text.split(":", 1)[1].strip().lstrip("#")
        if not digits.isdigit():
            raise GenerateError(f"'{text}' is not a deployment id (use deployment:3)")
        return _deployment_source(int(digits))
    if low.startswith(("http://", "https://")):
        raise GenerateError("a judge endpoint's URL is set by the studio's admin (FTS_JUDGE_ENDPOINT), not named "
                            "here: pick 'endpoint'")
    return resolve_source(text)


# ---- what is judged --------------------------------------------------------------------------------------------
def vote_items(votes: list, limit: int | None) -> list[dict]:
    """The latest ``limit`` votes as pairs with the people's verdict (the answers as they were shown: A and B)."""
    picked = votes[-limit:] if limit else list(votes)
    out = []
    for v in picked:
        prompt = ([{"role": "system", "content": v.system_prompt}] if (v.system_prompt or "").strip() else []) + [
            {"role": "user", "content": v.prompt}]
        out.append({"from": "vote", "vote_id": v.id, "prompt": prompt, "a": v.output_a or "", "b": v.output_b or "",
                    "model_a": v.model_a, "model_b": v.model_b, "human": J.human_verdict(v.winner),
                    "winner": v.winner, "reference": None})
    return out


def evaluation_items(examples: list[dict], limit: int | None) -> list[dict]:
    """An evaluation's examples as pairs: A = the base model's answer, B = the tuned one's, with the reference."""
    out = []
    for ex in examples:
        if ex.get("base") is None or ex.get("tuned") is None:
            continue  # skipped rows (too long) have no answers
        out.append({"from": "example", "example": ex.get("i"), "prompt": list(ex.get("prompt") or []),
                    "a": ex.get("base") or "", "b": ex.get("tuned") or "", "model_a": "base", "model_b": "tuned",
                    "human": None, "reference": ex.get("reference")})
        if limit and len(out) >= limit:
            break
    return out


def questions(items: list[dict], mode: str, rubric: str | None) -> list[tuple[int, str, list[dict]]]:
    """(item index, what is asked, chat) for every question put to the judge: pairwise ``ab`` (as given) and ``ba``
    (swapped); rubric ``a``, ``b`` and, where there is one, ``reference``."""
    out = []
    for k, it in enumerate(items):
        if mode == "pairwise":
            out.append((k, "ab", J.pairwise_messages(it["prompt"], it["a"], it["b"], it["reference"])))
            out.append((k, "ba", J.pairwise_messages(it["prompt"], it["b"], it["a"], it["reference"])))
        else:
            for side in ("a", "b") + (("reference",) if it.get("reference") else ()):
                ref = it["reference"] if side != "reference" else None
                out.append((k, side, J.rubric_messages(it["prompt"], it[side], rubric or "", ref)))
    return out


# ---- asking the judge -----------------------------------------------------------------------------------------
def ask_local(source: ModelSource, chats: list[list[dict]], settings: GenSettings, batch_size: int,
              on_progress) -> list[str | None]:
    """Each chat's reply from a local judge, batched; None for a question too long for its context."""
    from core.generate import ModelCache, decode, generate_rows, prompt_ids

    slot = ModelCache(budget_bytes=1 << 62).slot(source)  # this process exists for this job
    limit = slot.loaded.max_positions
    ids: list[list[int] | None] = []
    for chat in chats:
        p = prompt_ids(slot.tok, chat)
        ids.append(None if limit and len(p) + settings.max_new_tokens > limit else p)
    replies: list[str | None] = [None] * len(chats)
    todo = [i for i, p in enumerate(ids) if p is not None]
    for start in range(0, len(todo), batch_size):
        chunk = todo[start:start + batch_size]
        rows = generate_rows(slot.loaded, [ids[i] for i in chunk], [slot.adapter_name] * len(chunk), settings,
                             batch_size=batch_size, tokenizers=[slot.tok] * len(chunk))
        for i, row in zip(chunk, rows):
            replies[i] = decode(slot.loaded, row, slot.tok)
        on_progress(min(start + batch_size, len(todo)), len(todo))
    return replies


def ask_endpoint(source: ModelSource, chats: list[list[dict]], settings: GenSettings, on_progress) -> list[str]:
    """Each chat's reply from an OpenAI-compatible endpoint, one after another (core.generate's endpoint decoder)."""
    from core.generate import generate

    out = []
    for i, chat in enumerate(chats):
        try:
            out.append(generate(source, chat, settings).text)
        except GenerateError as exc:
            raise JobError(f"the judge endpoint failed on question {i + 1} of {len(chats)}: {exc}") from None
        on_progress(i + 1, len(chats))
    return out


# ---- from replies to judgements and scores ----------------------------------------------------------------------
def judge_items(items: list[dict], asked: list[tuple[int, str, list[dict]]], replies: list[str | None],
                mode: str) -> list[dict]:
    """Each item with the judge's replies, what was read from them and its verdict (pure)."""
    per: dict[int, dict[str, str | None]] = defaultdict(dict)
    for (k, what, _), reply in zip(asked, replies):
        per[k][what] = reply
    out = []
    for k, it in enumerate(items):
        rec = {key: it[key] for key in ("from", "vote_id", "example", "model_a", "model_b", "human", "winner")
               if it.get(key) is not None}
        rec["replies"] = per[k]
        if mode == "pairwise":
            first = J.parse_pairwise(per[k].get("ab"))
            swapped = J.unswap(J.parse_pairwise(per[k].get("ba")))
            verdict, flipped = J.combine_orders(first, swapped)
            rec.update(read={"ab": first, "ba": swapped}, verdict=verdict, position_flip=flipped,
                       unparseable=sum(x is None for x in (first, swapped)))
        else:
            scores = {side: J.parse_rubric(reply) for side, reply in per[k].items()}
            rec.update(scores=scores, verdict=J.verdict_from_scores(scores.get("a"), scores.get("b")),
                       unparseable=sum(v is None for v in scores.values()))
        out.append(rec)
    return out


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def judge_scores(judged: list[dict], mode: str) -> dict:
    """The judge's own scores (pure): per model, pairwise wins / losses / ties and a win rate (a tie counts half), or
    the mean rubric score and how many answers were scored. An evaluation's models are ``base`` and ``tuned`` (and the
    ``reference`` in rubric mode)."""
    if mode == "pairwise":
        table: dict[str, Counter] = defaultdict(Counter)
        for r in judged:
            a, b, v = r.get("model_a", "a"), r.get("model_b", "b"), r["verdict"]
            table[a]["wins" if v == "a" else "losses" if v == "b" else "ties"] += 1
            table[b]["wins" if v == "b" else "losses" if v == "a" else "ties"] += 1
        out = {}
        for model, c in table.items():
            n = c["wins"] + c["losses"] + c["ties"]
            out[model] = {"wins": c["wins"], "losses": c["losses"], "ties": c["ties"],
                          "win_rate": (c["wins"] + 0.5 * c["ties"]) / n if n else None}
        return out
    got: dict[str, list[float]] = defaultdict(list)
    asked: Counter = Counter()
    for r in judged:
        for side, score in r["scores"].items():
            model = r.get(f"model_{side}", side) if side in ("a", "b") else side
            asked[model] += 1
            if score is not None:
                got[model].append(score)
    return {m: {"mean_score": _mean(got[m]), "scored": len(got[m]), "answers": asked[m]} for m in asked}


def summarise(votes_judged: list[dict], examples_judged: list[dict], mode: str) -> dict:
    """The agreement block (from the votes) and the scores (of the examples when an evaluation was judged, else of
    the votes), with the unparseable count over every reply."""
    human = [r["human"] for r in votes_judged]
    judge = [r["verdict"] for r in votes_judged]
    every = votes_judged + examples_judged
    if mode == "pairwise":
        flips = sum(bool(r["position_flip"]) for r in every)
        block = J.agreement_block(human, judge, flips, len(every))
        replies = 2 * len(every)
    else:
        block = J.agreement_block(human, judge, 0, 0)
        replies = sum(len(r["scores"]) for r in every)
    scored = examples_judged if examples_judged else votes_judged
    return {**block, "unparseable": sum(r["unparseable"] for r in every), "replies": replies,
            "scores": judge_scores(scored, mode)}


# ---- the job ----------------------------------------------------------------------------------------------------
def run_job(ctx):
    from core.data.feedback import select_votes
    from core.evaluate import results

    cfg = JudgeConfig.model_validate(ctx.config)
    try:
        source = resolve_judge(cfg.judge)
    except GenerateError as exc:
        raise JobError(str(exc)) from None
    vitems = vote_items(select_votes(voter=cfg.voter), cfg.limit)
    eitems: list[dict] = []
    if cfg.evaluation_id is not None:
        try:
            ev = results.get(cfg.evaluation_id)
        except results.EvaluationNotFound as exc:
            raise JobError(str(exc)) from None
        eitems = evaluation_items(list(results.iter_examples(ev)), cfg.limit)
    items = vitems + eitems
    if not items:
        raise JobError("nothing to judge: no votes and no evaluation examples")
    asked = questions(items, cfg.mode, cfg.rubric)
    log(f"judge {source.label} ({cfg.mode}): {len(vitems)} votes, {len(eitems)} evaluation examples, "
        f"{len(asked)} questions")
    t0 = time.time()
    ctx.progress(step=0, max_steps=len(asked))

    def on_progress(done: int, total: int) -> None:
        elapsed = time.time() - t0
        ctx.progress(step=done, max_steps=total, eta_s=elapsed / done * (total - done) if done else None)
        if ctx.should_stop():
            raise StopRequested()

    settings = GenSettings(max_new_tokens=cfg.max_new_tokens, temperature=0.0)
    chats = [chat for _, _, chat in asked]
    try:
        replies = (ask_endpoint(source, chats, settings, on_progress) if source.endpoint
                   else ask_local(source, chats, settings, cfg.batch_size, on_progress))
    except GenerateError as exc:
        raise JobError(str(exc)) from None
    judged = judge_items(items, asked, replies, cfg.mode)
    summary = summarise(judged[:len(vitems)], judged[len(vitems):], cfg.mode)
    path = ctx.dir / JUDGEMENTS_FILE
    tmp = path.with_suffix(".jsonl.partial")
    with open(tmp, "w", encoding="utf-8") as f:
        for rec in judged:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    tmp.replace(path)
    seconds = time.time() - t0
    on = f"evaluation #{cfg.evaluation_id}" if cfg.evaluation_id is not None else "votes"
    final = {"judge": source.label, "judge_ref": cfg.judge, "mode": cfg.mode, "on": on,
             "votes_judged": len(vitems), "examples_judged": len(eitems), **summary,
             "seconds": round(seconds, 3), "judgements_path": str(path)}
    log(f"judged {len(asked)} questions in {seconds:.1f}s; {agreement_line(final)}")
    return JobResult(final_metrics=final, summary=agreement_line(final))


# ---- submit and read back ----------------------------------------------------------------------------------------
def validate(cfg: JudgeConfig) -> JudgeConfig:
    """Refuse now what the job could not do (nothing is queued): a judge that does not resolve, an evaluation that
    does not exist or has no written answers, nothing to judge."""
    from core.data.feedback import NO_VOTES, select_votes
    from core.evaluate import results

    try:
        resolve_judge(cfg.judge)
    except GenerateError as exc:
        raise JobError(str(exc)) from None
    if cfg.evaluation_id is not None:
        try:
            ev = results.get(cfg.evaluation_id)
        except results.EvaluationNotFound as exc:
            raise JobError(str(exc)) from None
        if ev.kind != "generation":
            raise JobError(f"evaluation {ev.id} is a {ev.kind.replace('_', '-')} evaluation: it has no written "
                           "answers to judge; pick a generation evaluation")
        if not Path(ev.examples_path).is_file():
            raise JobError(f"evaluation {ev.id} has no per-example records (its file {ev.examples_path} is missing)")
    elif not select_votes(voter=cfg.voter):
        raise JobError(f"nothing to judge: {NO_VOTES}")
    return cfg


def submit_judge(cfg: JudgeConfig | dict, *, start: bool = True, owner: str = ""):
    if isinstance(cfg, dict):
        cfg = JudgeConfig.from_dict(cfg)
    cfg = validate(cfg)
    on = f"evaluation:{cfg.evaluation_id}" if cfg.evaluation_id is not None else "votes"
    return runs.submit("judge", cfg.model_dump(mode="json"), start=start, name=cfg.name or f"judge-{cfg.mode}",
                       base_model=cfg.judge, dataset_ref=on, method=cfg.mode, owner=owner)


def fmt_share(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.0f}%"


def agreement_line(m: dict) -> str:
    """The agreement block in one line (the job's summary, the CLI's text output)."""
    kappa = "n/a" if m.get("kappa") is None else f"{m['kappa']:.2f}"
    flips = ("" if m.get("position_flip_rate") is None
             else f", position flips {fmt_share(m['position_flip_rate'])} of {m.get('pairs_both_orders')} pairs")
    return (f"agreement with people {fmt_share(m.get('agreement'))}, Cohen's κ {kappa}, n {m.get('n', 0)}{flips}; "
            f"{m.get('unparseable', 0)} of {m.get('replies', 0)} replies unparseable")


def judgements(job) -> list[dict]:
    """A finished judge job's per-item judgements (empty when it has none)."""
    p = Path((job.final_metrics or {}).get("judgements_path") or (Path(job.output_dir or "") / JUDGEMENTS_FILE))
    if not p.is_file():
        return []
    with open(p, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def result_dict(job) -> dict:
    """The CLI's ``--json``: the agreement block first, then the judge's scores and the job."""
    m = dict(job.final_metrics or {})
    keys = ("agreement", "kappa", "n", "position_flip_rate", "position_flips", "pairs_both_orders", "warning",
            "scores", "unparseable", "replies", "judge", "judge_ref", "mode", "on", "votes_judged",
            "examples_judged", "seconds")
    return {**{k: m.get(k) for k in keys}, "job_id": job.id, "status": str(job.status)}
