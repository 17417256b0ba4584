"""The sweep file — the CLI's contract, written by the Sweep view too — read and checked before anything is queued.

    name: lr-search
    base: {base_model: default, dataset: "3", method: lora, max_steps: 60, eval_split: 0.1, eval_steps: 10}
    search:
      learning_rate: {type: log_uniform, low: 1.0e-5, high: 1.0e-3}
      lora_r: {type: choice, values: [8, 16, 32]}
      warmup_ratio: {type: uniform, low: 0.0, high: 0.2}
      batch_size: {type: int, low: 2, high: 8, step: 2}
    objective: eval_loss            # minimised; or an Evaluate metric (field_accuracy, ...: maximised)
    eval: {dataset: "3", split: test, limit: 50, max_new_tokens: 128}   # where an Evaluate metric is measured
    trials: 6
    parallel: 1
    budget: {total_steps: 600, wall_hours: 2}     # optional: no new trials once spent
    pruner: {type: median, startup_trials: 2, warmup_steps: 0}   # or {type: none}
    seed: 0
    enqueue: [{learning_rate: 2.0e-4, lora_r: 16}]   # trials to try first (known-good settings), then the sampler's

Every searched name is a TrainConfig field, and the base with each end of a range (each choice) is a valid TrainConfig:
a range that reaches a value a run would refuse is refused here, with the run config's own words.
"""
from __future__ import annotations

from typing import Any, Literal

from core.jobconfig import ConfigError, base_type
from core.train.config import TrainConfig

#: objectives read from the run's own curves (minimised)
LOSS_OBJECTIVES = ("eval_loss",)
#: objectives an evaluation of the finished trial measures (core.evaluate, the tuned side; maximised, loss minimised)
METRIC_OBJECTIVES = {"field_accuracy": "maximize", "json_valid_rate": "maximize", "json_exact_match": "maximize",
                     "exact_match": "maximize", "rougeL": "maximize", "rouge1": "maximize", "bleu": "maximize",
                     "chrf": "maximize", "loss": "minimize", "perplexity": "minimize"}
PARAM_TYPES = ("log_uniform", "uniform", "int", "choice")
MAX_TRIALS = 1000
MAX_PARALLEL = 64
NOT_SEARCHABLE = {"name": "every trial is named after the sweep", "dataset": "a sweep compares settings on one "
                  "dataset", "init_adapter": "set it in base"}


class SweepError(ConfigError):
    """A sweep file a person can fix; the message names the key and what is wrong."""


def _num(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SweepError(f"{where} must be a number (got {value!r})")
    return float(value)


def _int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or float(value) != int(value):
        raise SweepError(f"{where} must be a whole number (got {value!r})")
    return int(value)


def _check_param(name: str, raw: Any) -> dict:
    """One search entry, normalised: {type, low, high[, step][, log]} or {type: choice, values}."""
    where = f"search.{name}"
    if name not in TrainConfig.model_fields:
        import difflib

        close = difflib.get_close_matches(name, list(TrainConfig.model_fields), n=3, cutoff=0.7)
        hint = f" (did you mean {', '.join(close[:3])}?)" if close else ""
        raise SweepError(f"{where}: unknown parameter — not a training config field{hint}")
    if name in NOT_SEARCHABLE:
        raise SweepError(f"{where}: cannot be searched ({NOT_SEARCHABLE[name]})")
    if not isinstance(raw, dict):
        raise SweepError(f"{where} must be a mapping like {{type: log_uniform, low: 1.0e-5, high: 1.0e-3}} or "
                         "{type: choice, values: [8, 16]}")
    kind = raw.get("type")
    if kind not in PARAM_TYPES:
        raise SweepError(f"{where}.type must be one of {', '.join(PARAM_TYPES)} (got {kind!r})")
    ftype = base_type(TrainConfig.model_fields[name])
    if kind == "choice":
        unknown = set(raw) - {"type", "values"}
        if unknown:
            raise SweepError(f"{where}: unknown key(s) {', '.join(sorted(unknown))} for a choice (values)")
        values = raw.get("values")
        if not isinstance(values, list) or not values:
            raise SweepError(f"{where}.values must be a non-empty list")
        if any(isinstance(v, (dict, list)) for v in values):
            raise SweepError(f"{where}.values: each choice is one number, string or true/false")
        if len({repr(v) for v in values}) != len(values):
            raise SweepError(f"{where}.values: a value is listed twice")
        return {"type": "choice", "values": list(values)}
    unknown = set(raw) - {"type", "low", "high", "step"}
    if unknown:
        raise SweepError(f"{where}: unknown key(s) {', '.join(sorted(unknown))} for {kind} (low, high, step)")
    if "low" not in raw or "high" not in raw:
        raise SweepError(f"{where}: {kind} needs low and high")
    if kind == "int":
        if ftype is not int:
            raise SweepError(f"{where}: {name} is not a whole-number field; use uniform / log_uniform or choice")
        low, high = _int(raw["low"], f"{where}.low"), _int(raw["high"], f"{where}.high")
        step = _int(raw.get("step", 1), f"{where}.step")
        if step < 1:
            raise SweepError(f"{where}.step must be at least 1 (got {step})")
        if not low < high:
            raise SweepError(f"{where}: low ({low}) must be below high ({high})")
        return {"type": "int", "low": low, "high": high, "step": step}
    if ftype is not float:
        what = "a whole-number field: use type int" if ftype is int else "not a number: use type choice"
        raise SweepError(f"{where}: {name} is {what}")
    if "step" in raw:
        raise SweepError(f"{where}: step applies to int ranges only")
    low, high = _num(raw["low"], f"{where}.low"), _num(raw["high"], f"{where}.high")
    if not low < high:
        raise SweepError(f"{where}: low ({low:g}) must be below high ({high:g})")
    if kind == "log_uniform" and low <= 0:
        raise SweepError(f"{where}: log_uniform needs low > 0 (got {low:g})")
    return {"type": kind, "low": low, "high": high}


def _values_to_check(param: dict) -> list:
    if param["type"] == "choice":
        return list(param["values"])
    return [param["low"], param["high"]]


def trial_config(base: dict, params: dict) -> TrainConfig:
    """The run config of one trial: the base with the trial's values (SweepError naming what is wrong)."""
    try:
        return TrainConfig.from_dict({**base, **params})
    except ValueError as exc:
        raise SweepError(str(exc)) from None


def parse_sweep(data: Any) -> dict:
    """A sweep file's mapping checked and normalised (a JSON-able dict, stored as the sweep job's config)."""
    if not isinstance(data, dict):
        raise SweepError("a sweep file is a mapping: name, base, search, objective, trials, parallel")
    known = {"name", "base", "search", "objective", "eval", "trials", "parallel", "budget", "pruner", "seed",
             "enqueue"}
    unknown = set(data) - known
    if unknown:
        raise SweepError(f"unknown key(s) in the sweep file: {', '.join(sorted(unknown))} (known: "
                         f"{', '.join(sorted(known))})")
    name = str(data.get("name") or "sweep").strip()[:60]
    base = data.get("base")
    if not isinstance(base, dict) or not base:
        raise SweepError("base: the run config every trial starts from, a mapping (at least dataset)")
    try:
        base_config = TrainConfig.from_dict(base)
    except ValueError as exc:
        raise SweepError(f"base: {exc}") from None
    base = {k: v for k, v in base_config.model_dump(mode="json").items() if k in base or k == "dataset"}
    search = data.get("search")
    if not isinstance(search, dict) or not search:
        raise SweepError("search: at least one parameter, e.g. learning_rate: {type: log_uniform, low: 1.0e-5, "
                         "high: 1.0e-3}")
    space = {str(k): _check_param(str(k), v) for k, v in search.items()}
    for pname, param in space.items():
        for value in _values_to_check(param):
            try:
                trial_config(base, {pname: value})
            except SweepError as exc:
                raise SweepError(f"search.{pname}: the value {value!r} makes a run config that is refused — "
                                 f"{str(exc).removeprefix('invalid training config: ')}") from None
    objective = data.get("objective", "eval_loss")
    if objective in LOSS_OBJECTIVES:
        direction = "minimize"
        if not base_config.eval_split:
            raise SweepError("objective eval_loss needs held-out rows: set base.eval_split (e.g. 0.1), and "
                             "base.eval_steps for pruning from the curve as it trains")
        if base_config.objective == "grpo":
            raise SweepError("GRPO runs have no eval loss: use an Evaluate metric as the objective (field_accuracy)")
    elif objective in METRIC_OBJECTIVES:
        direction = METRIC_OBJECTIVES[objective]
    else:
        raise SweepError(f"unknown objective {objective!r}: eval_loss (minimised) or an Evaluate metric "
                         f"({', '.join(METRIC_OBJECTIVES)})")
    ev = data.get("eval") or {}
    if not isinstance(ev, dict) or set(ev) - {"dataset", "split", "limit", "max_new_tokens"}:
        raise SweepError("eval: a mapping of dataset, split, limit, max_new_tokens (where and how an Evaluate metric "
                         "is measured)")
    if ev and objective in LOSS_OBJECTIVES:
        raise SweepError("eval: applies to an Evaluate metric objective; eval_loss is read from the run itself")
    if ev.get("limit") is not None:
        ev["limit"] = _int(ev["limit"], "eval.limit")
        if ev["limit"] < 1:
            raise SweepError("eval.limit must be at least 1")
    if ev.get("max_new_tokens") is not None:
        ev["max_new_tokens"] = _int(ev["max_new_tokens"], "eval.max_new_tokens")
        if not 1 <= ev["max_new_tokens"] <= 32768:
            raise SweepError("eval.max_new_tokens must be between 1 and 32768")
    if ev.get("split") is not None and ev["split"] not in ("test", "validation", "train", "all"):
        raise SweepError(f"eval.split must be test, validation, train or all (got {ev['split']!r})")
    if ev.get("dataset") is not None:
        ev["dataset"] = str(ev["dataset"])
    trials = _int(data.get("trials", 6), "trials")
    if not 1 <= trials <= MAX_TRIALS:
        raise SweepError(f"trials must be between 1 and {MAX_TRIALS} (got {trials})")
    parallel = _int(data.get("parallel", 1), "parallel")
    if not 1 <= parallel <= MAX_PARALLEL:
        raise SweepError(f"parallel must be between 1 and {MAX_PARALLEL} (got {parallel})")
    budget = data.get("budget") or {}
    if not isinstance(budget, dict) or set(budget) - {"total_steps", "wall_hours"}:
        raise SweepError("budget: a mapping of total_steps and / or wall_hours")
    if budget.get("total_steps") is not None:
        budget["total_steps"] = _int(budget["total_steps"], "budget.total_steps")
        if budget["total_steps"] < 1:
            raise SweepError("budget.total_steps must be at least 1")
    if budget.get("wall_hours") is not None:
        budget["wall_hours"] = _num(budget["wall_hours"], "budget.wall_hours")
        if not 0 < budget["wall_hours"] <= 24 * 30:
            raise SweepError("budget.wall_hours must be between 0 and 720")
    pruner = _check_pruner(data.get("pruner"))
    seed = data.get("seed")
    if seed is not None:
        seed = _int(seed, "seed")
    enqueue = data.get("enqueue") or []
    if not isinstance(enqueue, list) or not all(isinstance(p, dict) for p in enqueue):
        raise SweepError("enqueue: a list of {parameter: value} mappings, the trials to try first")
    for i, params in enumerate(enqueue):
        extra = set(params) - set(space)
        if extra:
            raise SweepError(f"enqueue[{i}]: {', '.join(sorted(extra))} is not in search")
        for pname, value in params.items():
            if not _in_space(space[pname], value):
                raise SweepError(f"enqueue[{i}].{pname}: {value!r} is outside search.{pname}")
        trial_config(base, params)
    return {"name": name, "base": base, "search": space, "objective": objective, "direction": direction,
            "eval": ev, "trials": trials, "parallel": parallel, "budget": budget, "pruner": pruner, "seed": seed,
            "enqueue": enqueue}


def _in_space(param: dict, value: Any) -> bool:
    if param["type"] == "choice":
        return value in param["values"]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return param["low"] <= value <= param["high"]


def _check_pruner(raw: Any) -> dict:
    if raw is None:
        return {"type": "median", "startup_trials": 2, "warmup_steps": 0}
    if not isinstance(raw, dict) or raw.get("type", "median") not in ("median", "none"):
        raise SweepError("pruner: {type: median, startup_trials: 2, warmup_steps: 0} or {type: none}")
    if set(raw) - {"type", "startup_trials", "warmup_steps"}:
        raise SweepError("pruner: only type, startup_trials and warmup_steps")
    out = {"type": raw.get("type", "median"),
           "startup_trials": _int(raw.get("startup_trials", 2), "pruner.startup_trials"),
           "warmup_steps": _int(raw.get("warmup_steps", 0), "pruner.warmup_steps")}
    if out["startup_trials"] < 0 or out["warmup_steps"] < 0:
        raise SweepError("pruner: startup_trials and warmup_steps must not be negative")
    return out


def parse_sweep_yaml(text: str) -> dict:
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SweepError(f"the sweep file is not valid YAML: {str(exc).splitlines()[0]}") from None
    return parse_sweep(data)


def load_sweep_file(path: str) -> dict:
    from pathlib import Path

    p = Path(path)
    if not p.is_file():
        raise SweepError(f"sweep file not found: {p}")
    return parse_sweep_yaml(p.read_text(encoding="utf-8"))


def suggest(trial, space: dict) -> dict:
    """A trial's values from the search space (Optuna's ask-and-tell ``trial.suggest_*``)."""
    params: dict[str, Any] = {}
    for name, p in space.items():
        if p["type"] == "choice":
            params[name] = trial.suggest_categorical(name, p["values"])
        elif p["type"] == "int":
            params[name] = trial.suggest_int(name, p["low"], p["high"], step=p.get("step", 1))
        else:
            params[name] = trial.suggest_float(name, p["low"], p["high"], log=p["type"] == "log_uniform")
    return params


Direction = Literal["minimize", "maximize"]
__all__ = ["Direction", "SweepError", "load_sweep_file", "parse_sweep", "parse_sweep_yaml", "suggest",
           "trial_config"]
