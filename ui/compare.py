"""Compare runs (in the Train tab): pick several training runs, see one curve of each on one chart — by step or by
tokens seen —, the config fields that differ and their headline numbers side by side. Binds core.train.compare."""
from __future__ import annotations

import gradio as gr
import pandas as pd

from core import runs
from core.runs import JobError
from core.train import compare as C
from ui.common import md_text

CURVE_DTYPES = {"x": "float64", "value": "float64", "series": "str"}
# the tables' headers before two runs are picked (an empty table without headers shows "1 2 3")
HEADLINE_HEADERS = ["run", "status", "objective", "method", "steps", "train loss", "eval loss", "reward margin",
                    "tokens/s", "seconds", "evaluation (base → tuned)"]


def compare_choices() -> list[tuple[str, str]]:
    return [(f"#{r.id} {r.name} ({r.status.value})", str(r.id)) for r in runs.list_runs(kind="train")]


def compare_view(run_ids: list[str] | None, curve: str, x: str):
    """(message, curve frame or None, config-diff frame, headlines frame)."""
    ids = list(run_ids or [])
    empty_diff, empty_head = pd.DataFrame(columns=["field"]), pd.DataFrame(columns=HEADLINE_HEADERS)
    if len(ids) < 2:
        return "Pick two or more runs to compare.", None, empty_diff, empty_head
    try:
        rows, notes = C.curves(ids, curve, x)
        head, diff = C.config_diff(ids)
        h_head, h_rows = C.headlines(ids)
    except (JobError, ValueError) as exc:
        return f"**Error:** {md_text(exc)}", None, empty_diff, empty_head
    frame = pd.DataFrame(rows, columns=["x", "value", "series"]).astype(CURVE_DTYPES) if rows else None
    msg = f"{len(ids)} runs · {curve} by {x}" + "".join(f"\n\n_{md_text(n)}_" for n in notes)
    if not diff:
        msg += "\n\nTheir configs are the same."
    plot = gr.update(value=frame, x_title=x, y_title=curve)
    return (msg, plot, pd.DataFrame(diff, columns=head) if diff else pd.DataFrame(columns=head),
            pd.DataFrame(h_rows, columns=h_head))


def build_section() -> None:
    with gr.Accordion("Compare runs", open=False, elem_id="compare") as acc:
        with gr.Row():
            picked = gr.Dropdown(choices=[], multiselect=True, label="Runs (two or more)", scale=4,
                                 elem_id="compare-runs")
            curve = gr.Dropdown(list(C.CURVES), value="train loss", label="Curve", scale=2, elem_id="compare-curve")
            x_axis = gr.Radio(list(C.X_AXES), value="step", label="x axis", scale=2, elem_id="compare-x")
            refresh = gr.Button("↻", scale=0, min_width=40, size="sm")
        msg = gr.Markdown(elem_id="compare-msg")
        plot = gr.LinePlot(x="x", y="value", color="series", title="Runs compared", height=300, x_title="step",
                           y_title="train loss", elem_id="compare-plot")
        with gr.Row():
            headline = gr.Dataframe(headers=HEADLINE_HEADERS, label="Headline numbers", interactive=False, wrap=True,
                                    elem_id="compare-head")
        diff = gr.Dataframe(headers=["field"], label="Config fields that differ", interactive=False, wrap=True,
                            elem_id="compare-diff")

    def refresh_choices(current):
        choices = compare_choices()
        ids = {v for _, v in choices}
        return gr.update(choices=choices, value=[v for v in (current or []) if v in ids])

    acc.expand(refresh_choices, [picked], [picked])
    refresh.click(refresh_choices, [picked], [picked])
    outputs = [msg, plot, diff, headline]
    for trigger in (picked.change, curve.change, x_axis.change):
        trigger(compare_view, [picked, curve, x_axis], outputs)
