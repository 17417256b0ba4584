"""Queue an evaluation on the runs core, after checking what it points at (nothing is queued for bad input)."""
from __future__ import annotations

from core import runs
from core.evaluate.config import EvalConfig, EvalConfigError
from core.runs import JobError
from storage import Run, RunStatus


def validate(cfg: EvalConfig) -> EvalConfig:
    """A run that has nothing to load, a dataset that does not exist or does not fit the mode, multiple-choice rows
    or settings that cannot be scored: refused now. Returns the config to queue (a multiple-choice dataset is scored
    in multiple-choice mode, whole unless a sample was asked for)."""
    from core.generate import GenerateError, resolve_source, source_for_run

    sources = []
    try:
        if cfg.run_id is not None:
            run = runs.get_run(cfg.run_id)
            if run.kind != "train":
                raise JobError(f"run {cfg.run_id} is a {run.kind} job; evaluate a training run")
            if run.status != RunStatus.succeeded and not run.adapter_path:
                raise JobError(f"run {cfg.run_id} is {run.status} and saved no adapter: nothing to evaluate"
                               + (f" ({run.error.splitlines()[0]})" if run.error else ""))
            source_for_run(cfg.run_id)
        else:
            sources = [resolve_source(cfg.tuned)]
        if cfg.base:
            sources.append(resolve_source(cfg.base))
        if any(s.endpoint for s in sources):
            raise JobError("a deployment's endpoint cannot be evaluated here (loss and multiple choice need the "
                           "weights): evaluate the run it serves")
    except GenerateError as exc:
        raise JobError(str(exc)) from None
    if cfg.mode == "lm_eval":
        from core.evaluate.harness import task_info

        task_info(cfg.lm_eval_task.strip())  # an unknown task is refused here, with close names
        return cfg
    if cfg.dataset:
        from core.data import DatasetError, get_dataset

        try:
            ds = get_dataset(cfg.dataset)
        except DatasetError:
            raise JobError(f"dataset {cfg.dataset} not found: import it in the Data tab") from None
        if ds.kind == "preference" and cfg.mode == "multiple_choice":
            raise JobError(f"dataset {ds.id} holds preference pairs, not multiple-choice questions: use generation "
                           "mode (the chosen answers are the references)")
        if cfg.mode == "multiple_choice" and ds.kind != "multiple_choice":
            raise JobError(f"dataset {ds.id} is not in a multiple-choice layout (question, choices, answer); use "
                           "generation mode")
        if ds.kind == "text":
            raise JobError(f"dataset {ds.id} is plain text with no prompts to answer; evaluate on conversations")
        splits = ds.splits or {}
        have = ", ".join(f"{k} {v}" for k, v in splits.items() if v) or "no rows"
        for what, split in (("", cfg.resolved_split()), ("few-shot ", cfg.fewshot_split)):
            if split and not (sum(splits.values()) if split == "all" else splits.get(split)):
                raise JobError(f"dataset {ds.id} has no {split} rows ({have}); pick a {what}split that has rows "
                               "(or all)")
        if ds.kind == "multiple_choice":
            if cfg.mode != "multiple_choice":
                cfg = EvalConfig.from_dict({**cfg.model_dump(exclude_unset=True), "mode": "multiple_choice"})
            _check_questions(cfg, ds)
    return cfg


def _check_questions(cfg: EvalConfig, ds) -> None:
    """The formulation renders every scored row and draws its few-shot examples (no model needed)."""
    from core.data import read_split
    from core.evaluate.job import fewshot_pool
    from core.evaluate.multiple_choice import MultipleChoiceError, build_requests

    split = cfg.resolved_split()
    rows = read_split(ds, split)
    pool, exclude = fewshot_pool(cfg, split)
    try:
        build_requests(rows, cfg.mc_style, task=cfg.mc_task, num_fewshot=cfg.num_fewshot, fewshot_rows=pool,
                       exclude_self=exclude)
    except MultipleChoiceError as exc:
        raise JobError(f"dataset {ds.id} [{split}]: {exc}") from None


def submit_evaluation(cfg: EvalConfig | dict, *, start: bool = True, owner: str = "") -> Run:
    if isinstance(cfg, dict):
        cfg = EvalConfig.from_dict(cfg)
    cfg = validate(cfg)
    name = cfg.name or (f"eval-run{cfg.run_id}" if cfg.run_id is not None else "eval")
    return runs.submit("evaluate", cfg.model_dump(mode="json"), start=start, name=name,
                       base_model=cfg.base or "", dataset_ref=cfg.dataset or (f"run:{cfg.run_id}" if cfg.run_id
                                                                              else ""),
                       method=cfg.mode, parent_run_id=cfg.run_id, owner=owner)


__all__ = ["EvalConfig", "EvalConfigError", "submit_evaluation", "validate"]
