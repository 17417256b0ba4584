"""What a person changes in a job's row besides its status: its name, its tags; and removing ended jobs' rows.
"""
from __future__ import annotations

import re
from collections.abc import Iterable

from sqlalchemy import delete, update
from sqlmodel import select

from core.config import db_session
from core.runs.errors import JobError
from core.runs.store.retry import retrying
from core.text import clean_label
from storage import Run, RunMetric, RunStatus

NAME_MAX = 80


def rename(job_id: int, name: str) -> Run:
    """A job's new name (the config's name follows, so a continued run or an export names it the same)."""
    name = clean_label(name)
    if not name:
        raise JobError("a run needs a name: type one")
    if len(name) > NAME_MAX:
        raise JobError(f"a run's name is at most {NAME_MAX} characters (this one has {len(name)})")

    def _once() -> Run:
        with db_session() as s:
            run = s.get(Run, job_id)
            if run is None:
                raise JobError(f"run {job_id} not found")
            config = dict(run.config)
            if "name" in config:
                config["name"] = name
            s.exec(update(Run).where(Run.id == job_id).values(name=name, config=config))
            s.commit()
            s.expire_all()
            return s.get(Run, job_id)

    return retrying(_once)


TAG_MAX, TAGS_MAX = 32, 10
_TAG_OK = re.compile(r"^[\w.+-]+$")


def normalise_tags(tags: Iterable[str]) -> list[str]:
    """Tags as stored: trimmed, '#' dropped, lower case, unique in the order given; letters, digits, . _ + - only."""
    out: list[str] = []
    for raw in tags:
        for t in str(raw or "").replace(",", " ").split():
            t = t.lstrip("#").lower()
            if not t:
                continue
            if len(t) > TAG_MAX or not _TAG_OK.match(t):
                raise JobError(f"tag {t[:40]!r}: at most {TAG_MAX} letters, digits, '.', '_', '+' or '-'")
            if t not in out:
                out.append(t)
    if len(out) > TAGS_MAX:
        raise JobError(f"a run has at most {TAGS_MAX} tags ({len(out)} given)")
    return out


def set_tags(job_id: int, tags: Iterable[str]) -> Run:
    """Replace a job's tags (an empty list clears them)."""
    clean = normalise_tags(tags)

    def _once() -> Run:
        with db_session() as s:
            if s.get(Run, job_id) is None:
                raise JobError(f"run {job_id} not found")
            s.exec(update(Run).where(Run.id == job_id).values(tags=clean or None))
            s.commit()
            s.expire_all()
            return s.get(Run, job_id)

    return retrying(_once)


def delete_rows(job_ids: Iterable[int]) -> int:
    """Remove ended jobs' rows and metric rows in one transaction. A job that is active (it became so meanwhile)
    stops the whole delete with JobError. Returns the number of job rows removed."""
    ids = sorted(set(job_ids))
    if not ids:
        return 0

    def _once() -> int:
        with db_session() as s:
            busy = s.exec(select(Run.id, Run.status).where(Run.id.in_(ids),
                                                          Run.status.in_(list(RunStatus.active())))).all()
            if busy:
                raise JobError("; ".join(f"run {i} is {RunStatus(st).value}" for i, st in busy)
                               + ": stop it before deleting")
            s.exec(delete(RunMetric).where(RunMetric.run_id.in_(ids)))
            return s.exec(delete(Run).where(Run.id.in_(ids))).rowcount

    return retrying(_once)
