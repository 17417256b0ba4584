"""Sweeps on the runs core: queue one (its driver is a ``sweep`` job), read one back (the job + its study), stop one
(its driver and its running trials), continue its best trial (the usual continue-as path)."""
from __future__ import annotations

from typing import Any

from core import runs
from core.runs import JobError, TransitionError
from core.sweep import study as studies
from core.sweep.spec import SweepError, parse_sweep, trial_config
from storage import Run


def submit_sweep(spec: dict, *, owner: str = "") -> Run:
    """Check the sweep (its file, then every run config it can make as a run's own submit would: the model and data
    references through the one resolver, a Space's caps, the admin's step / epoch caps) and queue its driver.

    These checks happen here, where the sweep is asked for (a page user's request is resolved as one), because its
    trials are queued later by the driver, a worker process: each trial's config is the base with values from the
    search space, and every value the space holds was checked here."""
    from core.space import SpaceLimitError, check_training
    from core.train.jobs import apply_run_caps, validate_references

    spec = parse_sweep(spec) if "direction" not in spec else spec
    try:
        base = apply_run_caps(trial_config(spec["base"], {}))  # the studio's wall-clock budget per run, if any
        spec = {**spec, "base": {**spec["base"], **({"max_wall_clock_hours": base.max_wall_clock_hours}
                                                     if base.max_wall_clock_hours else {})}}
        checked: set[str] = set()
        for config in _configs_to_check(spec):
            check_training(config)
            config = apply_run_caps(config)
            refs = repr((config.base_model, config.dataset, config.chat_template, config.objective,
                         config.method, config.num_processes))
            if refs not in checked:  # the model and data of each distinct combination, once
                checked.add(refs)
                validate_references(config)
    except (JobError, SpaceLimitError) as exc:
        raise SweepError(f"a trial of this sweep would be refused: {exc}") from None
    if spec["eval"].get("dataset"):
        from core.data import DatasetError, get_dataset

        try:
            get_dataset(spec["eval"]["dataset"])
        except DatasetError:
            raise SweepError(f"eval.dataset {spec['eval']['dataset']} not found: import it in the Data tab") from None
    base = spec["base"]
    return runs.submit("sweep", spec, name=spec["name"], base_model=str(base.get("base_model", "default")),
                       dataset_ref=str(base.get("dataset", "")), method=str(base.get("method", "lora")), owner=owner)


def _configs_to_check(spec: dict):
    """The base, and the base with each end of each range / each choice (the values a trial can take that a check
    could refuse: the largest max_steps, a base_model choice) and each enqueued trial."""
    yield trial_config(spec["base"], {})
    for name, p in spec["search"].items():
        for value in (p["values"] if p["type"] == "choice" else (p["low"], p["high"])):
            yield trial_config(spec["base"], {name: value})
    for params in spec.get("enqueue") or []:
        yield trial_config(spec["base"], params)


def get_sweep(sweep_id: int) -> Run:
    try:
        run = runs.get_run(int(sweep_id))
    except JobError:
        raise JobError(f"sweep {sweep_id} not found (python -m core sweeps list)") from None
    if run.kind != "sweep":
        raise JobError(f"run {sweep_id} is a {run.kind} job, not a sweep")
    return run


def list_sweeps(limit: int = 200) -> list[Run]:
    return runs.list_runs(kind="sweep", limit=limit)


def sweep_to_dict(sweep_id: int | Run) -> dict[str, Any]:
    """The stable JSON shape of a sweep (scripts depend on it: add keys, never rename): the job's own fields, its
    spec, ``trials`` (number, run_id, params, value, state, …) and ``best_run`` / ``best_value`` / ``best_params``."""
    run = sweep_id if isinstance(sweep_id, Run) else get_sweep(sweep_id)
    spec = run.config or {}
    st = studies.load(run.id)
    trials = studies.trial_rows(st) if st is not None else []
    best = studies.best(st) if st is not None else None
    d = runs.run_to_dict(run)
    for k in ("method", "loss", "tokens_per_s", "adapter_path", "resume_from_checkpoint", "objective"):
        d.pop(k, None)
    d.update({"objective": spec.get("objective"), "direction": spec.get("direction"),
              "trials_planned": spec.get("trials"), "parallel": spec.get("parallel"), "search": spec.get("search"),
              "base": spec.get("base"), "trials": trials,
              "best_run": best["run_id"] if best else None, "best_value": best["value"] if best else None,
              "best_params": best["params"] if best else None})
    return d


def stop_sweep(sweep_id: int, *, timeout_s: float | None = None) -> Run:
    """Stop the driver (it stops its running trials, with checkpoints) — and those trials directly too, so a sweep
    whose driver is gone or still queued stops all the same."""
    run = get_sweep(sweep_id)
    if run.status.is_active:
        run = runs.stop(run.id, timeout_s=timeout_s)
    st = studies.load(run.id)
    if st is not None:
        import optuna

        for t in st.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            rid = t.user_attrs.get("run_id")
            if rid is None:
                continue
            trial_run = runs.get_run(int(rid))
            if trial_run.status.is_active:
                st._storage.set_trial_user_attr(t._trial_id, "paused", True)
                try:
                    runs.stop(trial_run.id, wait=False,
                              reason=f"stopped with sweep {run.id}; resuming the sweep resumes it")
                except TransitionError:
                    pass  # it ended meanwhile: the driver's own stop got there first (the same reason)
    return runs.get_run(run.id)


def continue_best(sweep_id: int, extra_steps: int, owner: str = "", **changes) -> Run:
    """Train the sweep's best trial on: a new run from its adapter (core.train.jobs.continue_training), tagged
    ``sweep-<id>`` like the trials, so filtering the runs by the sweep's tag finds what came of it."""
    from core.train.jobs import continue_training, tag_run

    run = get_sweep(sweep_id)
    st = studies.load(run.id)
    best = studies.best(st) if st is not None else None
    if not best or best.get("run_id") is None:
        raise JobError(f"sweep {sweep_id} has no complete trial yet")
    cont = continue_training(int(best["run_id"]), extra_steps, owner=owner, **changes)
    return tag_run(cont.id, [*(cont.tags or []), f"sweep-{run.id}"])
