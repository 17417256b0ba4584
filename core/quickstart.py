"""The quick start: the whole path on the built-in demo task, one step per stage, every stage a real job or row.

Stages: import the demo task (a dataset) → estimate the run → a short LoRA run (a job) → evaluate base vs tuned (a job)
→ the Playground with both sides and a demo message. Where the path stands is read from the database every time
(:func:`state`), so a closed tab, a reload or a second browser sees the same progress, and every stage can also be
done by hand in its tab — the quick start only finds what is there.

Whose path it is: each user's own. Nothing is found by a name another user can give: the demo dataset is the one
holding the demo task's rows (found by their content hash, whoever imported them: the rows are the studio's own),
the run is the user's own run on that dataset, the evaluation the user's own of that run. In a single-user studio
(no accounts, not a Space) every row is that user's, as before. Two stages leave no row of their own — the estimate
and the Playground — so they are noted per user in ``<workspace>/quickstart/``.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any

from core import runs
from core.config import get_settings, positive_int_env
from core.data import get_dataset, import_records, list_datasets, prepare_dataset
from core.data.demo import generate_demo_rows
from core.data.readers import RawRead
from core.data.splits import SplitSpec
from core.data.validate import content_hash_of_hashes
from core.estimate import preflight_check
from core.evaluate.config import EvalConfig
from core.evaluate.results import by_job, examples, prompt_text
from core.evaluate.submit import submit_evaluation
from core.train.config import TrainConfig
from core.train.jobs import submit_training
from core.users import enforced

DEMO_DATASET = "demo-support-json"
RUN_NAME = "quickstart-lora"
DEMO_ROWS = 160  # 144 train / 16 validation
DEMO_SEED = 0
TRAIN = {"method": "lora", "lora_r": 16, "lora_alpha": 32, "max_steps": 24, "batch_size": 4, "learning_rate": 2e-3,
         "max_length": 256, "save_steps": 0}  # 24 steps: ~95 s in the worker on an idle 2-core CPU (bench/RESULTS.md)
EVAL = {"limit": 16, "max_new_tokens": 64, "split": "validation"}


class QuickStartError(ValueError):
    """A stage that cannot run yet; the message says which stage comes first."""


@dataclass
class State:
    user: str = ""  # whose quick start ('' in a single-user studio)
    dataset: Any = None  # the demo dataset row
    run: Any = None  # the user's newest quick-start training run on it
    evaluation_job: Any = None  # the user's newest evaluate job of that run
    evaluation: Any = None  # its stored result, once it finished
    estimated: bool = False  # stage 2 was done (or a run exists: every run gets the same pre-flight check)
    played: bool = False  # stage 5: both models answered in the Playground with this run on one side
    conflict: str = ""  # why the demo rows that are stored cannot serve the quick start (see demo_dataset)

    @property
    def stage(self) -> int:
        """The next stage to do: 1 import, 2 estimate/train, 3 wait for training, 4 evaluate, 5 wait, 6 Playground."""
        if self.dataset is None:
            return 1
        if self.run is None:
            return 2
        if not self.run.status.is_finished:
            return 3
        if self.evaluation is None:
            return 5 if self.evaluation_job is not None and not self.evaluation_job.status.is_finished else 4
        return 6

    @property
    def complete(self) -> bool:
        """All five stages done."""
        return self.stage == 6 and self.played


def _per_user() -> bool:
    """Whether rows are told apart by who made them (accounts, or a Space's visitors)."""
    return enforced()


def _theirs(row_owner: str | None, user: str) -> bool:
    return not _per_user() or (row_owner or "") == (user or "")


def _demo_rows() -> list[dict]:
    return generate_demo_rows(DEMO_ROWS, seed=DEMO_SEED)


@functools.lru_cache(maxsize=1)
def demo_content_hash() -> str:
    """The content hash the demo task's rows are stored under (how the data layer identifies a dataset version)."""
    raw = RawRead(records=[(i + 1, r) for i, r in enumerate(_demo_rows())], container="memory")
    prep = prepare_dataset("demo task", format="openai", raw=raw)
    return content_hash_of_hashes((r.hash for r in prep.rows if not r.codes), prep.kind)


def _default_split() -> dict:
    return SplitSpec().to_dict()


def demo_dataset() -> tuple[Any, str]:
    """(the dataset row holding exactly the demo task's rows, split as the quick start expects — or None; why a
    stored one cannot serve, or ''). Found by content, never by name: a dataset anyone *names* demo-support-json is
    not it."""
    digest = demo_content_hash()
    row = next((d for d in list_datasets() if d.content_hash == digest), None)
    if row is None:
        return None, ""
    spec = (row.meta or {}).get("split_spec")
    if spec is not None and spec != _default_split():
        return None, (f"the demo task's rows are stored as dataset #{row.id} with another split ({spec}); the quick "
                      "start evaluates on the default 10 % validation split")
    return row, ""


# ---- the two stages that leave no row: noted per user ----------------------------------------------------------------

def _notes_path(user: str):
    key = hashlib.sha256((user or "").encode()).hexdigest()[:16] if user else "local"
    return get_settings().workspace / "quickstart" / f"{key}.json"


def _notes(user: str) -> dict:
    try:
        data = json.loads(_notes_path(user).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _note(user: str, **fields) -> None:
    path = _notes_path(user)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {**_notes(user), **fields}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data), encoding="utf-8")
    os.replace(tmp, path)


def state(user: str = "") -> State:
    """Where ``user``'s quick start stands (``user``: the signed-in account or Space visitor; '' in a single-user
    studio)."""
    out = State(user=user or "")
    out.dataset, out.conflict = demo_dataset()
    notes = _notes(user)
    if out.dataset is None:
        return out
    ds_ref = str(out.dataset.id)
    trains = [r for r in runs.list_runs(kind="train") if r.name == RUN_NAME and _theirs(r.owner, user)
              and str((r.config or {}).get("dataset", "")) == ds_ref]
    out.run = max(trains, key=lambda r: r.id) if trains else None
    out.estimated = out.run is not None or notes.get("estimated") == out.dataset.id
    if out.run is not None:
        evals = [r for r in runs.list_runs(kind="evaluate")
                 if (r.config or {}).get("run_id") == out.run.id and _theirs(r.owner, user)]
        out.evaluation_job = max(evals, key=lambda r: r.id) if evals else None
        if out.evaluation_job is not None:
            out.evaluation = by_job(out.evaluation_job.id)
        out.played = notes.get("playground") == out.run.id
    return out


def panel_open(user: str = "") -> bool:
    """Whether the quick start opens by itself: for someone with no training run yet, and while their quick start
    is under way (not once it is done, nor for someone who trains without it)."""
    st = state(user)
    if st.complete:
        return False
    if st.run is not None:
        return True
    return not any(_theirs(r.owner, user) for r in runs.list_runs(kind="train"))


def load_demo(owner: str = ""):
    """Stage 1: the demo dataset (the stored one when the demo rows were imported before, by anyone)."""
    ds, conflict = demo_dataset()
    if ds is not None:
        return ds
    if conflict:
        raise QuickStartError(conflict)
    res = import_records(_demo_rows(), source=f"demo task (n={DEMO_ROWS}, seed={DEMO_SEED})", name=DEMO_DATASET,
                         format="openai", model="default", owner=owner or "")
    return get_dataset(res.dataset_id)


def eval_rows() -> int:
    """Held-out rows the quick start evaluates: ``FTS_QUICKSTART_EVAL_ROWS`` (default 16, the demo's validation)."""
    return positive_int_env("FTS_QUICKSTART_EVAL_ROWS", EVAL["limit"])


def train_config(dataset_id: int | str):
    """The quick-start run: ``TRAIN``, with ``FTS_QUICKSTART_STEPS`` steps (default 24) — a busy Space may want
    fewer."""
    return TrainConfig(dataset=str(dataset_id), name=RUN_NAME,
                       **{**TRAIN, "max_steps": positive_int_env("FTS_QUICKSTART_STEPS", TRAIN["max_steps"])})


def estimate(dataset_id: int | str, user: str = "") -> dict:
    """Stage 2a: the pre-flight estimate of the quick-start run on this machine (peak memory vs free memory)."""
    res = preflight_check(train_config(dataset_id))
    try:
        _note(user, estimated=int(dataset_id))
    except (OSError, ValueError):  # the note only draws a check mark
        pass
    return {"ok": res.ok, "peak_bytes": res.estimate_bytes, "free_bytes": res.free_bytes, "device": res.device,
            "message": res.message}


def start_training(owner: str = ""):
    """Stage 2b: the short LoRA run (the user's unfinished or succeeded quick-start run is reused, not started
    twice)."""
    st = state(owner)
    if st.dataset is None:
        raise QuickStartError(st.conflict or "load the demo task first (stage 1)")
    if st.run is not None and (not st.run.status.is_finished or st.run.status == "succeeded"):
        return st.run
    return submit_training(train_config(st.dataset.id), owner=owner)


def start_evaluation(owner: str = ""):
    """Stage 4: base vs tuned on the run's 16 held-out rows (the user's evaluation under way or done is reused)."""
    st = state(owner)
    if st.run is None or st.run.status != "succeeded":
        raise QuickStartError("the quick-start run has to finish first (stage 3)" if st.run is None or
                              not st.run.status.is_finished else
                              f"the quick-start run {st.run.status.value}: start it again (stage 3)")
    if st.evaluation_job is not None and (not st.evaluation_job.status.is_finished or st.evaluation is not None):
        return st.evaluation_job
    settings = {**EVAL, "limit": eval_rows()}
    return submit_evaluation(EvalConfig(run_id=st.run.id, name=f"{RUN_NAME} base vs tuned", **settings), owner=owner)


def note_playground(user: str, model_keys) -> bool:
    """Stage 5 is done when both models answered in the Playground with the user's quick-start run on one side
    (``model_keys``: the two sides' keys, e.g. ``["default", "run:7"]``). Returns whether this noted it."""
    st = state(user)
    if st.run is None or st.run.status != "succeeded" or f"run:{st.run.id}" not in list(model_keys):
        return False
    if not st.played:
        _note(user, playground=st.run.id)
    return True


def demo_message() -> str:
    """A held-out support message from the demo task, for the Playground."""
    row = generate_demo_rows(1, seed=7)[0]
    return next(m["content"] for m in row["messages"] if m["role"] == "user")


def what_changed(evaluation, limit: int = 3) -> dict:
    """The short report a run's page ends with: the headline metric base → tuned, up to ``limit`` examples where the
    tuned model changed the answer (ones it got better first), for the run's loss curve see its metrics."""
    better = examples(evaluation, "tuned better", limit)
    changed = [ex for ex in examples(evaluation, "changed", limit * 4) if ex not in better]
    picked = (better + changed)[:limit]
    return {"headline": evaluation.headline, "base": evaluation.headline_base, "tuned": evaluation.headline_tuned,
            "n": evaluation.n,
            "examples": [{"prompt": prompt_text(ex), "base": ex.get("base", ""), "tuned": ex.get("tuned", ""),
                          "reference": ex.get("reference", "")} for ex in picked]}


def preload_demo() -> str:
    """On a Space (core.space): import the demo task once, when the workspace has no datasets (idempotent)."""
    if list_datasets():
        return "datasets present"
    ds = load_demo()
    return f"demo task preloaded as dataset #{ds.id}"
