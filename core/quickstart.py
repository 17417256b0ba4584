"""The quick start: the whole path on the built-in demo task, one step per stage, every stage a real job or row.

Stages: import the demo task (a dataset) → estimate the run → a short LoRA run (a job) → evaluate base vs tuned (a job)
→ the Playground with both sides and a demo message. Where the path stands is read from the database every time
(:func:`state`), so a closed tab, a reload or a second person sees the same progress, and every stage can also be
done by hand in its tab — the quick start only finds what is there.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from core.config import positive_int_env

DEMO_DATASET = "demo-support-json"
RUN_NAME = "quickstart-lora"
DEMO_ROWS = 160  # 144 train / 16 validation
TRAIN = {"method": "lora", "lora_r": 16, "lora_alpha": 32, "max_steps": 24, "batch_size": 4, "learning_rate": 2e-3,
         "max_length": 256, "save_steps": 0}  # about 40 s of training on 2 CPU cores (the tests' demo run)
EVAL = {"limit": 16, "max_new_tokens": 64, "split": "validation"}


class QuickStartError(ValueError):
    """A stage that cannot run yet; the message says which stage comes first."""


@dataclass
class State:
    dataset: Any = None  # the demo dataset row (newest)
    run: Any = None  # the newest quick-start training run
    evaluation_job: Any = None  # the newest evaluate job of that run
    evaluation: Any = None  # its stored result, once it finished

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


def state() -> State:
    from core import runs
    from core.data import list_datasets
    from core.evaluate.results import by_job

    out = State()
    demo = [d for d in list_datasets() if d.name == DEMO_DATASET]
    out.dataset = max(demo, key=lambda d: d.id) if demo else None
    trains = [r for r in runs.list_runs(kind="train") if r.name == RUN_NAME]
    out.run = max(trains, key=lambda r: r.id) if trains else None
    if out.run is not None:
        evals = [r for r in runs.list_runs(kind="evaluate") if (r.config or {}).get("run_id") == out.run.id]
        out.evaluation_job = max(evals, key=lambda r: r.id) if evals else None
        if out.evaluation_job is not None:
            out.evaluation = by_job(out.evaluation_job.id)
    return out


def load_demo():
    """Stage 1: the demo dataset (the existing one when it was imported before)."""
    st = state()
    if st.dataset is not None:
        return st.dataset
    from core.data import get_dataset, import_demo_task

    return get_dataset(import_demo_task(DEMO_ROWS, seed=0).dataset_id)


def eval_rows() -> int:
    """Held-out rows the quick start evaluates: ``FTS_QUICKSTART_EVAL_ROWS`` (default 16, the demo's validation)."""
    return positive_int_env("FTS_QUICKSTART_EVAL_ROWS", EVAL["limit"])


def train_config(dataset_id: int | str):
    """The quick-start run: ``TRAIN``, with ``FTS_QUICKSTART_STEPS`` steps (default 24) — a busy Space may want
    fewer."""
    from core.train.config import TrainConfig

    return TrainConfig(dataset=str(dataset_id), name=RUN_NAME,
                       **{**TRAIN, "max_steps": positive_int_env("FTS_QUICKSTART_STEPS", TRAIN["max_steps"])})


def estimate(dataset_id: int | str) -> dict:
    """Stage 2a: the pre-flight estimate of the quick-start run on this machine (peak memory vs free memory)."""
    from core.estimate import preflight_check

    res = preflight_check(train_config(dataset_id))
    return {"ok": res.ok, "peak_bytes": res.estimate_bytes, "free_bytes": res.free_bytes, "device": res.device,
            "message": res.message}


def start_training(owner: str = ""):
    """Stage 2b: the short LoRA run (an unfinished or succeeded quick-start run is reused, not started twice)."""
    st = state()
    if st.dataset is None:
        raise QuickStartError("load the demo task first (stage 1)")
    if st.run is not None and (not st.run.status.is_finished or st.run.status == "succeeded"):
        return st.run
    from core.train.jobs import submit_training

    return submit_training(train_config(st.dataset.id), owner=owner)


def start_evaluation():
    """Stage 4: base vs tuned on the run's 16 held-out rows (an evaluation under way or done is reused)."""
    st = state()
    if st.run is None or st.run.status != "succeeded":
        raise QuickStartError("the quick-start run has to finish first (stage 2)" if st.run is None or
                              not st.run.status.is_finished else
                              f"the quick-start run {st.run.status.value}: start it again (stage 2)")
    if st.evaluation_job is not None and (not st.evaluation_job.status.is_finished or st.evaluation is not None):
        return st.evaluation_job
    from core.evaluate.config import EvalConfig
    from core.evaluate.submit import submit_evaluation

    settings = {**EVAL, "limit": eval_rows()}
    return submit_evaluation(EvalConfig(run_id=st.run.id, name=f"{RUN_NAME} base vs tuned", **settings))


def demo_message() -> str:
    """A held-out support message from the demo task, for the Playground."""
    from core.data.demo import generate_demo_rows

    row = generate_demo_rows(1, seed=7)[0]
    return next(m["content"] for m in row["messages"] if m["role"] == "user")


def what_changed(evaluation, limit: int = 3) -> dict:
    """The short report a run's page ends with: the headline metric base → tuned, up to ``limit`` examples where the
    tuned model changed the answer (ones it got better first), for the run's loss curve see its metrics."""
    from core.evaluate.results import examples, prompt_text

    better = examples(evaluation, "tuned better", limit)
    changed = [ex for ex in examples(evaluation, "changed", limit * 4) if ex not in better]
    picked = (better + changed)[:limit]
    return {"headline": evaluation.headline, "base": evaluation.headline_base, "tuned": evaluation.headline_tuned,
            "n": evaluation.n,
            "examples": [{"prompt": prompt_text(ex), "base": ex.get("base", ""), "tuned": ex.get("tuned", ""),
                          "reference": ex.get("reference", "")} for ex in picked]}
