"""Train tab: pick model, data, method and hyperparameters; start/stop/resume; watch runs live.

The New run form (ui.train_form, built from TrainConfig's field metadata) on the left, the runs and the selected
run's progress (ui.train_runs, read from the DB on a timer) on the right, the run comparison (ui.compare) and the
hyperparameter sweeps (ui.sweeps) below.
"""
from __future__ import annotations

import gradio as gr

from ui.common import user_of
from ui.compare import build_section as build_compare
from ui.sweeps import build_section as build_sweeps
from ui.train_form import build_form, start_run
from ui.train_runs import REFRESH_S, build_panel, run_choices


def build_tab():
    with gr.Row(equal_height=False):
        with gr.Column(scale=2, min_width=320):
            inputs, skip_preflight, start_btn, start_msg, refresh_lists, refresh_outputs = build_form()
        with gr.Column(scale=3, min_width=420):
            selected, refresh_timer = build_panel()
    build_compare()
    build_sweeps(inputs)
    keys = list(inputs)

    def start(request: gr.Request, *values):  # the request first: gradio injects only positional special args
        *cfg_values, skip = values
        message, run_id = start_run(dict(zip(keys, cfg_values)), skip_preflight=bool(skip), owner=user_of(request))
        if run_id is None:
            return message, gr.update(), gr.update()
        # the run list refreshes every second from now (its refresh slows down while nothing runs)
        return message, gr.update(choices=run_choices(), value=str(run_id)), gr.Timer(value=REFRESH_S)

    start_btn.click(start, inputs=[*inputs.values(), skip_preflight], outputs=[start_msg, selected, refresh_timer])
    return refresh_lists, [], refresh_outputs  # app.py runs it when a page (or the tab) opens: no stale lists
