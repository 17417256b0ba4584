"""A sweep's Optuna study, stored with Optuna's RDB storage in the studio's own database (SQLite or PostgreSQL), so
it outlives the driver process: the driver, restarted, reattaches to it; the CLI and the Sweep view read it.

Optuna's tables (``studies``, ``trials``, ``trial_params``, ``trial_values``, ``trial_intermediate_values``,
``version_info``, ``alembic_version`` …) share the database with the studio's (``runs``, ``run_metrics``,
``datasets``, ``evaluations``, ``votes``, ``deployments``): no name is shared. A sweep's study is named
``fts-sweep-<job id>``; each trial's training run id is its user attribute ``run_id``.
"""
from __future__ import annotations

import threading
import time
from typing import Any

from core.config import get_settings

_storages: dict[str, Any] = {}
_lock = threading.Lock()


def study_name(sweep_id: int) -> str:
    return f"fts-sweep-{int(sweep_id)}"


def storage():
    """Optuna's RDB storage on the studio's database (one per URL per process)."""
    import optuna

    url = get_settings().database_url
    with _lock:
        st = _storages.get(url)
        if st is None:
            kwargs: dict[str, Any] = {"pool_pre_ping": True}
            if url.startswith("sqlite"):
                kwargs = {"connect_args": {"timeout": 30}}  # the studio's busy timeout; its file is in WAL mode
            optuna.logging.set_verbosity(optuna.logging.WARNING)
            st = _open(optuna, url, kwargs)
            _storages[url] = st
        return st


def _open(optuna, url: str, engine_kwargs: dict[str, Any], tries: int = 6):
    """RDBStorage on ``url``. On a database that has no Optuna tables yet, two processes opening it at once (the
    driver and the Sweep view's poll; two drivers) both create them and both insert Optuna's schema version: the
    second gets a unique-constraint error. Opened again a moment later, it finds the tables made and goes on."""
    from sqlalchemy.exc import DBAPIError

    for attempt in range(tries):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
        except DBAPIError:
            if attempt == tries - 1:
                raise
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


def reset_storages() -> None:
    """Forget cached storages (tests that switch workspaces)."""
    with _lock:
        for st in _storages.values():
            try:
                st.engine.dispose()
            except Exception:  # noqa: BLE001, S110
                pass
        _storages.clear()


def load(sweep_id: int):
    """The sweep's study, or None while its driver has not created it yet."""
    import optuna

    try:
        return optuna.load_study(study_name=study_name(sweep_id), storage=storage())
    except KeyError:
        return None


def forget_sweeps(job_ids: list[int]) -> None:
    """The ``sweep`` kind's delete hook: deleted sweeps' studies go too."""
    import optuna

    for job_id in job_ids:
        try:
            optuna.delete_study(study_name=study_name(job_id), storage=storage())
        except KeyError:
            pass


def trial_rows(study) -> list[dict]:
    """Each trial as the CLI prints it: number, run id, params, value, state (+ pruned step, note)."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        attrs = t.user_attrs
        rows.append({
            "number": t.number,
            "run_id": attrs.get("run_id"),
            "params": dict(t.params),
            "value": t.value if t.values else None,
            "state": _state_name(t.state),
            "pruned_at_step": attrs.get("pruned_at_step"),
            "note": attrs.get("note"),
            "intermediate": {int(k): v for k, v in sorted(t.intermediate_values.items())},
            "duration_s": t.duration.total_seconds() if t.duration else None,
        })
    return rows


def _state_name(state) -> str:
    return {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed", "RUNNING": "running",
            "WAITING": "waiting"}.get(state.name, state.name.lower())


def best(study) -> dict | None:
    """The best complete trial: {number, run_id, value, params}; None before one completes."""
    try:
        t = study.best_trial
    except ValueError:
        return None
    return {"number": t.number, "run_id": t.user_attrs.get("run_id"), "value": t.value, "params": dict(t.params)}


def importance(study) -> dict[str, float]:
    """Each parameter's importance (optuna.importance, fANOVA), once at least 2 trials are complete; {} before."""
    import optuna

    done = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    if len(done) < 2:
        return {}
    try:
        return dict(optuna.importance.get_param_importances(study))
    except (RuntimeError, ValueError, ZeroDivisionError):
        return {}  # a parameter that never varied among the complete trials


def best_so_far(study) -> list[dict]:
    """The best value after each complete trial (the curve the Sweep view draws), in trial order."""
    import optuna

    minimise = study.direction == optuna.study.StudyDirection.MINIMIZE
    out, best_value = [], None
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        if t.state != optuna.trial.TrialState.COMPLETE or t.value is None:
            continue
        if best_value is None or (t.value < best_value if minimise else t.value > best_value):
            best_value = t.value
        out.append({"trial": t.number, "value": t.value, "best": best_value})
    return out
