"""Training runs on the runs core: check a TrainConfig's references, queue it, continue a finished run.

Queue, start, stop, resume and reconcile are the runs core's (``core.runs``); this module only knows what a
training run needs before it is queued.
"""
from __future__ import annotations

from pathlib import Path

from core import runs
from core.access import PathNotAllowed, in_page, locate, shared_mode
from core.config import get_settings
from core.data import DatasetError, get_dataset, load_training_rows
from core.data.formats import PREFERENCE_OBJECTIVES
from core.data.prepare import prepare_dataset
from core.data.templates import CHOICE_HELP, TEMPLATES, model_has_chat_template
from core.data.training_rows import PREFERENCE_FOR_SFT, SFT_FOR_PREFERENCE
from core.estimate.report import disk_plan
from core.estimate.spec import EstimateError
from core.models import ModelNotFoundError, check_hub_model, check_trainable, resolve_model
from core.runs import JobError, paths, store
from core.runs.backends import get_backend
from core.runs.errors import fmt_bytes
from core.space import SpaceLimitError, check_training, in_space, is_hf_owner, runs_allowed
from core.train.config import TrainConfig
from core.train.device import process_capacity, qlora_support_error
from core.train.rewards import check_references, prompt_rows
from storage import Run


def validate_references(config: TrainConfig) -> None:
    """Fail fast, before queueing, on a model or dataset that cannot exist."""
    try:
        resolved = resolve_model(config.base_model, prepare_default=False, what="the base model")
        if resolved.kind == "local":
            check_trainable(resolved)
        check_hub_model(resolved)  # an unreachable, misspelt or gated Hub id: refused now, not a minute into the run
    except ModelNotFoundError as exc:
        raise JobError(str(exc)) from None
    ref = config.dataset.strip()
    kind = None
    if ref.isdigit():
        try:
            ds = get_dataset(ref)
        except DatasetError:
            raise JobError(f"dataset {ref} not found: import it in the Data tab or "
                           "`python -m core data import`") from None
        kind = ds.kind
        if ds.kind == "multiple_choice":
            raise JobError(f"dataset {ref} holds multiple-choice questions (for Evaluate); supervised fine-tuning "
                           "needs conversations with assistant answers")
    else:
        try:  # a data file passes the one resolver (a shared studio's page: only inside the allowed roots)
            loc = locate(ref, "the training data", hub=False)
        except PathNotAllowed as exc:
            raise JobError(str(exc)) from None
        if not loc.path.is_file():
            raise JobError(f"dataset file not found: {ref}")
        kind = _file_kind(ref)
    if config.init_adapter:
        try:
            loc = locate(config.init_adapter, "the adapter to continue from")
        except PathNotAllowed as exc:
            raise JobError(str(exc)) from None
        if loc.kind == "path" and not (loc.path / "adapter_config.json").is_file():
            raise JobError(f"init_adapter {config.init_adapter} is not an adapter folder (no adapter_config.json)")
    check_objective(config, kind, f"dataset {ref}" if ref.isdigit() else ref)
    check_template(config, kind)
    if config.objective == "grpo":
        check_grpo_data(config, f"dataset {ref}" if ref.isdigit() else ref)
    if config.method == "qlora":
        err = qlora_support_error()
        if err:
            raise JobError(err)
    check_processes(config)


def check_processes(config: TrainConfig) -> None:
    """A multi-process run fits this host: at most one process per GPU, or per CPU core where there is no GPU. On
    the Ray backend the cluster holds the ranks (core.runs.ray_ranks: a run it cannot place fails saying so)."""
    if config.num_processes <= 1 or get_backend().name == "ray":
        return
    capacity, what = process_capacity()
    if config.num_processes > capacity:
        raise JobError(f"num_processes {config.num_processes} is more than this host's {capacity} {what}: use at "
                       f"most {capacity}")


def _file_kind(ref: str) -> str | None:
    try:
        return prepare_dataset(str(Path(ref).expanduser())).kind
    except DatasetError:
        return None  # the worker reports what is wrong with the file


def check_objective(config: TrainConfig, dataset_kind: str | None, what: str) -> None:
    """Preference pairs train with DPO or ORPO, conversations with SFT: the other way round is refused at submit,
    naming the objective that fits."""
    if dataset_kind is None:
        return
    if config.objective in PREFERENCE_OBJECTIVES and dataset_kind != "preference":
        raise JobError(f"{what} " + SFT_FOR_PREFERENCE.format(objective=config.objective.upper()))
    if config.objective in ("sft", "grpo") and dataset_kind == "preference":
        raise JobError(f"{what} {PREFERENCE_FOR_SFT}")
    if config.objective == "grpo" and dataset_kind != "sft":
        raise JobError(f"{what} holds {dataset_kind} rows: GRPO samples answers to prompts, so it needs "
                       "conversations (every turn before the last answer is the prompt, that answer is the reference "
                       "the rewards compare with)")


def check_grpo_data(config: TrainConfig, what: str) -> None:
    """GRPO's prompts and the rewards' references, read before anything is queued: no prompt at all, or a reward that
    compares with answers the data does not have (JSON fields of prose answers), is refused naming what fits."""
    try:
        prompts = prompt_rows(load_training_rows(config.dataset, split="train", objective="grpo"))
    except DatasetError:
        return  # the worker reports what is wrong with the data
    if not prompts:
        raise JobError(f"{what} has no prompts for GRPO: it needs conversations with a user turn")
    try:
        check_references(config.rewards, [p["reference"] for p in prompts], what)
    except ValueError as exc:
        raise JobError(str(exc)) from None


def check_template(config: TrainConfig, dataset_kind: str | None) -> None:
    """Conversations need a prompt template: a base model without a chat template is refused here, naming the
    choices, instead of a run that fails at step 0; a template to copy must exist."""
    choice = config.chat_template
    if choice and choice not in TEMPLATES:
        try:
            src = resolve_model(choice, prepare_default=False, what="the template to copy")
            if src.kind == "local":
                check_trainable(src) if (Path(src.path) / "config.json").is_file() else None
            check_hub_model(src)
        except ModelNotFoundError as exc:
            raise JobError(f"chat_template '{choice}' is not a built-in template ({', '.join(TEMPLATES)}) and "
                           f"not a model to copy one from: {exc}") from None
    if dataset_kind not in ("sft", "preference") or choice:
        return
    if model_has_chat_template(config.base_model) is False:
        raise JobError(f"base model '{config.base_model}' has no chat template and the dataset holds conversations: "
                       f"choose a prompt template (chat_template / --chat-template): {CHOICE_HELP}. "
                       "'alpaca' is plain text and adds no tokens")


def submit_training(config: TrainConfig, *, parent_run_id: int | None = None, start: bool = True,
                    owner: str = "") -> Run:
    """Check the config's references and queue the run (it starts at once when there is room). ``owner``: who
    submitted it (a Space visitor's anonymous id; a Space's caps count per owner)."""
    try:
        check_training(config)
    except SpaceLimitError as exc:
        raise JobError(str(exc)) from None
    check_visitor_quota(owner)
    config = apply_run_caps(config)
    validate_references(config)
    check_disk(config)
    if not config.dataset.strip().isdigit():  # a file path: store it absolute
        config = config.model_copy(update={"dataset": str(Path(config.dataset).expanduser().resolve())})
    return runs.submit("train", config.model_dump(mode="json"), start=start, name=config.name,
                       base_model=config.base_model, dataset_ref=config.dataset, method=config.method,
                       parent_run_id=parent_run_id, owner=owner, dataset_hash=dataset_hash(config.dataset))


def dataset_hash(ref: str) -> str:
    """The content hash of the data a run is queued with, kept with the run (its lineage, core.lineage): a stored
    dataset version's own hash, or ``sha256:<hex>`` of a data file's bytes ("" when it cannot be read)."""
    ref = str(ref or "").strip()
    if ref.isdigit():
        try:
            return get_dataset(ref).content_hash or ""
        except DatasetError:
            return ""
    import hashlib

    digest = hashlib.sha256()
    try:
        with open(ref, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        return ""
    return f"sha256:{digest.hexdigest()}"


def check_visitor_quota(visitor: str) -> None:
    """On a Space, refuse a visitor's run over ``FTS_SPACE_RUNS_PER_VISITOR`` (a Hugging Face account's:
    ``FTS_SPACE_RUNS_PER_ACCOUNT``) queued or running training runs (core.space; not a Space, or nobody known: nothing
    to count)."""
    if not visitor or not in_space():
        return
    cap = runs_allowed(visitor)  # a Hugging Face account's cap, or an anonymous visitor's
    active = [r for r in runs.list_runs(kind="train") if r.owner == visitor and not r.status.is_finished]
    if len(active) >= cap:
        who = "each Hugging Face account" if is_hf_owner(visitor) else "each visitor"
        raise JobError(f"on this Space {who} has at most {cap} run(s) queued or "
                       f"running; run #{active[0].id} is {active[0].status.value} — wait for it or stop it")


SHARED_CAPS = {"FTS_MAX_STEPS": 100_000, "FTS_MAX_EPOCHS": 100, "FTS_MAX_RUN_HOURS": 24}


def run_caps() -> dict[str, float]:
    """The admin's caps on a run asked for from the page: ``FTS_MAX_STEPS``, ``FTS_MAX_EPOCHS``, ``FTS_MAX_RUN_HOURS``
    (a shared studio's defaults: 100,000 steps, 100 epochs, 24 hours of running). Empty for the host's CLI."""
    import os


    if not in_page():
        return {}
    caps: dict[str, float] = {}
    for name, default in SHARED_CAPS.items():
        raw = os.environ.get(name, "").strip()
        try:
            value = float(raw) if raw else (default if shared_mode() else None)
        except ValueError:
            value = default if shared_mode() else None
        if value is not None and value > 0:
            caps[name] = value
    return caps


def apply_run_caps(config: TrainConfig) -> TrainConfig:
    """Refuse a run over the admin's step or epoch cap (one line, with the cap); give it the studio's wall-clock
    budget (the supervisor stops it there with a checkpoint, and says why)."""
    caps = run_caps()
    steps, epochs, hours = caps.get("FTS_MAX_STEPS"), caps.get("FTS_MAX_EPOCHS"), caps.get("FTS_MAX_RUN_HOURS")
    if steps and config.max_steps > steps:
        raise JobError(f"this studio runs at most {int(steps):,} steps per run (FTS_MAX_STEPS; got "
                       f"{config.max_steps:,}): lower Max steps, or continue the run afterwards")
    if epochs and config.max_steps <= 0 and config.num_epochs > epochs:
        raise JobError(f"this studio runs at most {epochs:g} epochs per run (FTS_MAX_EPOCHS; got "
                       f"{config.num_epochs:g}): lower Epochs or set Max steps")
    if hours and not 0 < config.max_wall_clock_hours <= hours:
        config = config.model_copy(update={"max_wall_clock_hours": float(hours)})
    return config


DISK_RESERVE_BYTES = 16 * 1024**2  # the database, logs and metrics grow too


def check_disk(config: TrainConfig, free_bytes: int | None = None) -> None:
    """Refuse a run the workspace's disk cannot hold (checkpoints kept × their size + the final adapter, from the
    estimator), up front instead of a disk-full failure halfway through a checkpoint. Unknown sizes pass."""
    try:
        plan = disk_plan(config)
    except (EstimateError, ValueError, OSError):
        return  # no config to count from: the worker's own checks report
    where = get_settings().runs_dir
    free = paths.free_bytes(where) if free_bytes is None else free_bytes
    if plan.need_bytes + DISK_RESERVE_BYTES <= free:
        return
    fixes = []
    if config.save_steps and config.save_total_limit > 1:
        fixes.append("keep fewer checkpoints (save_total_limit=1)")
    if config.save_steps:
        fixes.append("save only at the end (save_steps=0)")
    fixes.append(f"free space under {where}")
    raise JobError(f"not enough disk space for this run: it writes up to {fmt_bytes(plan.need_bytes)} "
                   f"({plan.text}) and {fmt_bytes(free)} is free in the workspace; " + ", or ".join(fixes))


def continue_training(run_id: int, extra_steps: int, owner: str = "", *, objective: str | None = None,
                      dataset: str | None = None, **changes) -> Run:
    """A new run that starts from a finished run's adapter and trains ``extra_steps`` more steps: with the same
    objective and data by default, or another (``objective``, ``dataset``, other TrainConfig ``changes``): SFT then
    DPO on preference pairs, or SFT then GRPO on the same conversations."""
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
    data = {**config.model_dump(), "init_adapter": run.adapter_path, "max_steps": extra_steps,
            "name": f"{run.name}-cont", **changes}
    if objective and objective != config.objective:
        data.update(objective=objective, name=f"{run.name}-{objective}")
        if "beta" not in changes:
            data["beta"] = None  # the new objective's default
        if objective == "grpo":  # no eval loss for sampled answers
            data.update(eval_split=0.0, eval_steps=0)
    if dataset:
        data["dataset"] = str(dataset)
    return submit_training(TrainConfig.from_dict(data), parent_run_id=run_id, owner=owner)


def config_of(run_id: int) -> TrainConfig:
    return TrainConfig.model_validate(runs.get_run(run_id).config)


def rename_run(run_id: int, name: str) -> Run:
    """A training run's new name."""
    run = runs.get_run(run_id)
    if run.kind != "train":
        raise JobError(f"run {run_id} is a {run.kind} job, not a training run")
    return store.rename(run_id, name)


def tag_run(run_id: int, tags) -> Run:
    """A training run's tags, replaced (``tags``: a list or a 'a, b c' string; empty clears them)."""
    run = runs.get_run(run_id)
    if run.kind != "train":
        raise JobError(f"run {run_id} is a {run.kind} job, not a training run")
    return store.set_tags(run_id, [tags] if isinstance(tags, str) else list(tags or []))
