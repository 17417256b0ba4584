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


# ---- one step: a run continued from another (improve from feedback, continue-as) ----------------------------------
def _rows_key(ev, run) -> tuple:
    """Which rows an evaluation scored: (dataset id, split, sample size, seed); a run's own held-out rows are its
    dataset's."""
    ref = ev.dataset_ref or ""
    if ref.startswith("run:") and run is not None:
        ref = str(run.dataset_ref or (run.config or {}).get("dataset", ""))
    settings = ev.settings or {}
    return ref, ev.split, settings.get("limit"), settings.get("seed"), ev.kind


def step_report(run_id: int) -> dict | None:
    """What continuing changed, for a run made from another (None for a run that continued nothing): the objective
    and data of the step (with what a preference dataset was made from), its preference curves' last values, and
    the parent's and this run's headline metric on the same evaluated rows when both were scored on them."""
    from core.data import DatasetError, get_dataset
    from core.data.feedback import feedback_line
    from core.evaluate.results import list_evaluations

    run = runs.get_run(int(run_id))
    if run.kind != "train" or not run.parent_run_id:
        return None
    try:
        parent = runs.get_run(run.parent_run_id)
    except JobError:
        return None
    cfg, pcfg = run.config or {}, parent.config or {}
    rep: dict[str, Any] = {"run_id": run.id, "parent_id": parent.id, "objective": cfg.get("objective", "sft"),
                           "parent_objective": pcfg.get("objective", "sft"), "dataset": run.dataset_ref,
                           "parent_dataset": parent.dataset_ref, "steps": run.step, "rows": None, "feedback": "",
                           "margin": None, "accuracy": None, "before": None, "after": None, "headline": "",
                           "evaluations": None}
    if str(run.dataset_ref).isdigit():
        try:
            ds = get_dataset(run.dataset_ref)
            rep["rows"], rep["feedback"] = ds.rows, feedback_line((ds.meta or {}).get("feedback"))
        except DatasetError:
            pass
    for m in runs.run_metrics(run.id):
        extra = m.extra or {}
        if extra.get("rewards/margins") is not None:
            rep["margin"] = extra["rewards/margins"]
        if extra.get("rewards/accuracies") is not None:
            rep["accuracy"] = extra["rewards/accuracies"]
    mine = list_evaluations(run_id=run.id, limit=50)
    for pev in list_evaluations(run_id=parent.id, limit=50):  # newest first: the latest pair scored on the same rows
        key = _rows_key(pev, parent)
        match = next((ev for ev in mine if _rows_key(ev, run) == key and ev.headline == pev.headline), None)
        if match is not None and pev.headline:
            rep.update(before=pev.headline_tuned, after=match.headline_tuned, base=pev.headline_base,
                       headline=pev.headline, evaluations=[pev.id, match.id], rows_scored=match.n)
            break
    return rep


def step_report_markdown(rep: dict, esc=str) -> str:
    """The step in words (``esc``: how the page escapes people's text)."""
    head = (f"#### What this step changed\nRun #{rep['run_id']} continued run #{rep['parent_id']} "
            f"({esc(rep['parent_objective']).upper()} → **{esc(rep['objective']).upper()}**, {rep['steps']} steps) "
            f"on dataset {esc(rep['dataset'])}" + (f" ({rep['rows']} rows)" if rep.get("rows") is not None else ""))
    lines = [head + "."]
    if rep.get("feedback"):
        lines.append(f"Data: {esc(rep['feedback'])}.")
    if rep.get("margin") is not None:
        lines.append(f"Last step: reward margin {rep['margin']:.3f}"
                     + (f", preference accuracy {rep['accuracy']:.2f}" if rep.get("accuracy") is not None else "")
                     + ".")
    if rep.get("evaluations"):
        b, a = rep["before"], rep["after"]
        delta = f" ({a - b:+.3f})" if a is not None and b is not None else ""
        lines.append(f"On the same {rep.get('rows_scored', '?')} held-out rows (evaluations #{rep['evaluations'][0]} "
                     f"and #{rep['evaluations'][1]}): {esc(rep['headline'])} run #{rep['parent_id']} {_fmt(b)} → "
                     f"run #{rep['run_id']} **{_fmt(a)}**{delta} (base {_fmt(rep.get('base'))}).")
    else:
        lines.append("Not yet evaluated on the rows its parent was: **Improve from feedback → Evaluate on the same "
                     "rows** scores it.")
    return "\n\n".join(lines)
