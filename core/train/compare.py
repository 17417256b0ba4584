"""Compare training runs: their curves on one chart (by step or by tokens seen), the config fields that differ, and
their headline numbers side by side (Evaluate's where they exist). Pure reads of the runs core and Evaluate's
results; the Train tab and ``python -m core runs compare`` show them."""
from __future__ import annotations

from typing import Any

from core import runs
from core.runs import JobError

# what can be overlaid: (label, where the value is in a metric row)
CURVES = {
    "train loss": "loss",
    "eval loss": "eval_loss",
    "learning rate": "lr",
    "grad norm": "grad_norm",
    "reward margin": "rewards/margins",
    "preference accuracy": "rewards/accuracies",
    "mean reward (GRPO)": "reward",
    "answer length (GRPO)": "completions/mean_length",
}
X_AXES = ("step", "tokens seen")
MAX_RUNS = 8


def run_label(run) -> str:
    return f"#{run.id} {run.name}" + "".join(f" #{t}" for t in (run.tags or []))


def _training_runs(run_ids) -> list:
    ids = []
    for raw in run_ids or []:
        try:
            ids.append(int(raw))
        except (TypeError, ValueError):
            raise JobError(f"'{raw}' is not a run id") from None
    if len(ids) > MAX_RUNS:
        raise JobError(f"compare at most {MAX_RUNS} runs at once ({len(ids)} chosen)")
    out = []
    for rid in dict.fromkeys(ids):  # each once, in the order given
        run = runs.get_run(rid)
        if run.kind != "train":
            raise JobError(f"run {rid} is a {run.kind} job, not a training run")
        out.append(run)
    return out


def _value(metric_row, key: str):
    if key in ("loss", "eval_loss", "lr", "grad_norm"):
        return getattr(metric_row, key)
    return (metric_row.extra or {}).get(key)


def curves(run_ids, curve: str = "train loss", x: str = "step") -> tuple[list[dict[str, Any]], list[str]]:
    """(rows {x, value, series} for a line chart, notes). ``x`` 'tokens seen' uses the tokens counted at each
    logged step; a run that did not record them (made before they were) is left out with a note."""
    if curve not in CURVES:
        raise JobError(f"unknown curve '{curve}': one of {', '.join(CURVES)}")
    if x not in X_AXES:
        raise JobError(f"unknown x axis '{x}': step or tokens seen")
    key = CURVES[curve]
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    for run in _training_runs(run_ids):
        label = run_label(run)
        valued = [(m, v) for m in runs.run_metrics(run.id) if (v := _value(m, key)) is not None]
        points = []
        for m, v in valued:
            at = m.step if x == "step" else (m.extra or {}).get("tokens_seen")
            if at is not None:
                points.append({"x": float(at), "value": float(v), "series": label})
        if points:
            rows.extend(points)
        elif valued:  # values, but none at a recorded number of tokens
            notes.append(f"{label} did not record tokens seen (an older run): compare it by step")
        else:
            notes.append(f"{label} has no {curve} points")
    return rows, notes


def _flat(config: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in (config or {}).items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_diff(run_ids) -> tuple[list[str], list[list[str]]]:
    """(header, rows): one row per config field whose value is not the same in every run (a field a run lacks
    counts as its default)."""
    from core.train.config import TrainConfig

    chosen = _training_runs(run_ids)
    flats = []
    for run in chosen:
        try:
            full = TrainConfig.model_validate(run.config).model_dump(mode="json")
        except ValueError:
            full = dict(run.config)
        flats.append(_flat(full))
    keys = sorted(set().union(*flats)) if flats else []
    rows = []
    for k in keys:
        values = [f.get(k) for f in flats]
        if len({repr(v) for v in values}) > 1:
            rows.append([k, *("" if v is None else str(v) for v in values)])
    return ["field", *(run_label(r) for r in chosen)], rows


def headlines(run_ids) -> tuple[list[str], list[list[Any]]]:
    """(header, rows): each run's status, steps, final train loss, eval loss, throughput, duration, and its newest
    evaluation's headline metric (base → tuned), side by side."""
    from core.evaluate.results import latest_for_runs

    chosen = _training_runs(run_ids)
    evals = latest_for_runs([r.id for r in chosen])
    rows = []
    for run in chosen:
        metrics = runs.run_metrics(run.id)
        eval_losses = [m.eval_loss for m in metrics if m.eval_loss is not None]
        margins = [(m.extra or {}).get("rewards/margins") for m in metrics
                   if (m.extra or {}).get("rewards/margins") is not None]
        ev = evals.get(run.id)
        rows.append([
            run_label(run), run.status.value, (run.config or {}).get("objective", "sft"), run.method,
            f"{run.step}/{run.max_steps}", _fmt(run.last_loss), _fmt(eval_losses[-1] if eval_losses else None),
            _fmt(margins[-1] if margins else None),
            "" if run.tokens_per_s is None else f"{run.tokens_per_s:.0f}",
            "" if runs.duration_s(run) is None else f"{runs.duration_s(run):.0f}",
            f"{ev.headline} {_fmt(ev.headline_base)} → {_fmt(ev.headline_tuned)}" if ev and ev.headline else "",
        ])
    return (["run", "status", "objective", "method", "steps", "train loss", "eval loss", "reward margin",
             "tokens/s", "seconds", "evaluation (base → tuned)"], rows)


def _fmt(v) -> str:
    return "" if v is None else f"{v:.4f}"
