"""The Train tab's list of runs: its table (columns sized for the runs column), the selection's choices and which
run is selected when nothing is. Read from the database on each call."""
from __future__ import annotations

import pandas as pd

from core import runs
from core.runs import RunStatus
from ui.common import fmt_duration, fmt_num

# "job": training runs, evaluations and exports share one numbering, so a list of runs can skip numbers
RUN_COLUMNS = ["job", "name", "owner", "status", "method", "steps", "loss", "tok/s", "time", "evaluation"]
# every column wide enough for its header on one line, the table as wide as its column (nothing cut at the right)
# (percent of the table; sized at ~7.3 px a character in the runs column of a 1280-1500 px window)
RUN_WIDTHS = {"job": 6, "name": 12, "owner": 11.5, "status": 13.5, "method": 8.5, "steps": 8.5, "loss": 8.5,
              "tok/s": 7.5, "time": 7.5, "evaluation": 16.5}
WITHOUT_OWNER = {"name": 4.5, "evaluation": 7}  # where the owner column's width goes when it is not shown


def run_columns() -> list[str]:
    """The runs table's columns: 'owner' only where several people share the studio (locally it is always empty)."""
    from ui.common import several_users

    return RUN_COLUMNS if several_users() else [c for c in RUN_COLUMNS if c != "owner"]


def run_column_widths() -> list[str]:
    cols = run_columns()
    widths = {c: RUN_WIDTHS[c] + (WITHOUT_OWNER.get(c, 0) if "owner" not in cols else 0) for c in cols}
    total = sum(widths.values())
    return [f"{100 * widths[c] / total:.1f}%" for c in cols]


LIVE = {RunStatus.running, RunStatus.stopping, RunStatus.starting, RunStatus.queued}


def train_runs() -> list:
    return runs.list_runs(kind="train")


def runs_frame(rows: list | None = None) -> pd.DataFrame:
    from core.evaluate.results import latest_for_runs

    rows = train_runs() if rows is None else rows
    evals = latest_for_runs([r.id for r in rows])
    out = []
    for r in rows:
        prog = f"{r.step}/{r.max_steps}" if r.max_steps else "-"
        ev = evals.get(r.id)
        headline = (f"{ev.headline} {fmt_num(ev.headline_tuned, '{:.3f}')} (base {fmt_num(ev.headline_base, '{:.3f}')})"
                    if ev and ev.headline else "")
        name = r.name + ("  " + " ".join(f"#{t}" for t in r.tags) if r.tags else "")
        owner = r.owner or ""
        owner = owner[:8] + "…" if owner.startswith("v-") and len(owner) > 9 else owner  # a visitor's long id
        out.append([r.id, name, owner, r.status.value, r.method, prog, fmt_num(r.last_loss),
                    fmt_num(r.tokens_per_s, "{:.0f}"), fmt_duration(runs.duration_s(r)), headline])
    cols = run_columns()
    return pd.DataFrame(out, columns=RUN_COLUMNS)[cols]


def run_choices(rows: list | None = None) -> list[tuple[str, str]]:
    return [(f"#{r.id} {r.name} — {r.status.value}", str(r.id)) for r in (train_runs() if rows is None else rows)]


def default_selected_run(rows: list | None = None) -> str | None:
    rows = train_runs() if rows is None else rows
    for r in rows:
        if r.status in LIVE:
            return str(r.id)
    return str(rows[0].id) if rows else None


