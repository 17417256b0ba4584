"""Training runs on the runs core: check a TrainConfig's references, queue it, continue a finished run.

Queue, start, stop, resume and reconcile are the runs core's (``core.runs``); this module only knows what a
training run needs before it is queued.
"""
from __future__ import annotations

from pathlib import Path

from core import runs
from core.runs import JobError
from core.train.config import TrainConfig
from storage import Run


def validate_references(config: TrainConfig) -> None:
    """Fail fast, before queueing, on a model or dataset that cannot exist."""
    from core.models import ModelNotFoundError, check_hub_model, check_trainable, resolve_model

    try:
        resolved = resolve_model(config.base_model, prepare_default=False)
        if resolved.kind == "local":
            check_trainable(resolved)
        check_hub_model(resolved)  # an unreachable, misspelt or gated Hub id: refused now, not a minute into the run
    except ModelNotFoundError as exc:
        raise JobError(str(exc)) from None
    ref = config.dataset.strip()
    if ref.isdigit():
        from core.data import DatasetError, get_dataset

        try:
            ds = get_dataset(ref)
        except DatasetError:
            raise JobError(f"dataset {ref} not found: import it in the Data tab or "
                           "`python -m core data import`") from None
        if ds.kind == "preference":
            raise JobError(f"dataset {ref} holds preference pairs (for DPO); supervised fine-tuning needs "
                           "conversations with assistant answers")
        if ds.kind == "multiple_choice":
            raise JobError(f"dataset {ref} holds multiple-choice questions (for Evaluate); supervised fine-tuning "
                           "needs conversations with assistant answers")
    elif not Path(ref).expanduser().exists():
        raise JobError(f"dataset file not found: {ref}")
    if config.method == "qlora":
        from core.train.device import qlora_support_error

        err = qlora_support_error()
        if err:
            raise JobError(err)


def submit_training(config: TrainConfig, *, parent_run_id: int | None = None, start: bool = True) -> Run:
    """Check the config's references and queue the run (it starts at once when there is room)."""
    validate_references(config)
    if not config.dataset.strip().isdigit():  # a file path: store it absolute
        config = config.model_copy(update={"dataset": str(Path(config.dataset).expanduser().resolve())})
    return runs.submit("train", config.model_dump(mode="json"), start=start, name=config.name,
                       base_model=config.base_model, dataset_ref=config.dataset, method=config.method,
                       parent_run_id=parent_run_id)


def continue_training(run_id: int, extra_steps: int) -> Run:
    """A new run that starts from a finished run's adapter and trains ``extra_steps`` more steps."""
    if extra_steps < 1:
        raise JobError("extra steps must be at least 1")
    run = runs.get_run(run_id)
    if run.kind != "train":
        raise JobError(f"run {run_id} is a {run.kind} job, not a training run")
    if not run.adapter_path or not Path(run.adapter_path).is_dir():
        raise JobError(f"run {run_id} has no saved adapter to continue from (status {run.status})")
    config = TrainConfig.model_validate(run.config)
    if config.method == "full":
        raise JobError("continue training is available for LoRA/QLoRA runs; for a full fine-tune start a new run "
                       f"with base_model={run.adapter_path}")
    new = config.model_copy(update={"init_adapter": run.adapter_path, "max_steps": extra_steps,
                                    "name": f"{run.name}-cont"})
    return submit_training(TrainConfig.model_validate(new.model_dump()), parent_run_id=run_id)


def config_of(run_id: int) -> TrainConfig:
    return TrainConfig.model_validate(runs.get_run(run_id).config)
