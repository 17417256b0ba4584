"""Finetune Studio: `python app.py` starts the dashboard (also the Hugging Face Spaces entry point).

Reads PORT / GRADIO_SERVER_NAME (Spaces sets them), FTS_WORKSPACE, DATABASE_URL and FTS_AUTH ("user:password").
"""
from __future__ import annotations

import os

import gradio as gr

from core import jobs
from core.config import get_settings
from ui.common import CSS, THEME

TABS = ("Estimate", "Data", "Train", "Evaluate", "Playground", "Deploy")


def _tab_builders():
    from ui import placeholders, train

    builders = {"Train": train.build_tab, "Evaluate": placeholders.build_evaluate_tab,
                "Playground": placeholders.build_playground_tab, "Deploy": placeholders.build_deploy_tab}
    try:
        from ui import estimate

        builders["Estimate"] = estimate.build_tab
    except ImportError:
        pass
    try:
        from ui import data

        builders["Data"] = data.build_tab
    except ImportError:
        pass
    return builders


def build_app() -> gr.Blocks:
    builders = _tab_builders()
    with gr.Blocks(title="Finetune Studio") as demo:
        gr.Markdown("## Finetune Studio\nEstimate → Data → Train → Evaluate → Playground → Deploy. "
                    "Runs live in their own processes: close the tab and come back whenever you like.")
        with gr.Tabs(selected="Train"):
            for tab in TABS:
                with gr.Tab(tab, id=tab):
                    build = builders.get(tab)
                    if build is None:
                        gr.Markdown(f"### {tab}: not built yet")
                    else:
                        build()
    return demo


def main() -> None:
    settings = get_settings()
    settings.workspace.mkdir(parents=True, exist_ok=True)
    from core.models import ensure_default_model

    ensure_default_model(progress=print)
    jobs.start_monitor()  # reconcile leftovers from a previous start, then watch workers
    demo = build_app()
    demo.queue(default_concurrency_limit=4)
    demo.launch(
        server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        server_port=int(os.environ.get("PORT") or os.environ.get("GRADIO_SERVER_PORT") or 7860),
        auth=settings.auth,
        theme=THEME,
        css=CSS,
        show_error=True,
    )


if __name__ == "__main__":
    main()
