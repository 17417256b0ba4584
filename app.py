"""Finetune Studio: `python app.py` starts the dashboard (also the Hugging Face Spaces entry point).

Reads PORT / GRADIO_SERVER_NAME (Spaces sets them), FTS_WORKSPACE, DATABASE_URL and FTS_AUTH ("user:password").

Jobs run in their own process groups and outlive the dashboard: stopping the dashboard (Ctrl-C, SIGTERM) leaves
them running, and a restarted dashboard re-attaches. One exception: when the dashboard is PID 1 (a container),
its SIGTERM is the container's shutdown and only PID 1 receives it, so it passes the SIGTERM on to the local jobs —
they checkpoint and end ``interrupted``, ready to resume.
"""
from __future__ import annotations

import os
import signal
import sys

import gradio as gr

from core import runs
from core.config import get_settings
from ui import data, deploy, estimate, evaluate, playground, run_improve, train
from ui.common import CSS, I18N, THEME

TABS = ("Estimate", "Data", "Train", "Evaluate", "Playground", "Deploy")
FIRST_TAB = "Train"  # the tab a page opens on


def _tab_builders():
    """One builder per tab. A tab module that fails to import fails the app (and the tests), loudly."""
    return {"Estimate": estimate.build_tab, "Data": data.build_tab, "Train": train.build_tab,
            "Evaluate": evaluate.build_tab, "Playground": playground.build_tab,
            "Deploy": deploy.build_tab}


def build_app() -> gr.Blocks:
    from core.access import serve_page
    from core.space import banner_markdown, in_space, oauth_enabled
    from ui import quickstart
    from ui.common import guard_events, page_requester, poll_the_open_tab_only

    serve_page(page_requester)  # from here on, what this process resolves for a page user is checked (core.access)
    builders = _tab_builders()
    with gr.Blocks(title="Finetune Studio") as demo:
        gr.Markdown("## Finetune Studio\nEstimate → Data → Train → Evaluate → Playground → Deploy. "
                    "Runs live in their own processes: close the tab and come back whenever you like.")
        if in_space():
            gr.Markdown(banner_markdown(), elem_id="space-banner")
            if oauth_enabled():  # Sign in with Hugging Face (README: hf_oauth: true); Gradio mocks it off a Space
                from ui.common import signed_in_line

                with gr.Row():
                    gr.LoginButton(elem_id="hf-login", scale=0, min_width=240)
                    who = gr.Markdown(elem_id="hf-who")
                demo.load(signed_in_line, None, who, show_progress="hidden")
        panel = quickstart.build_panel(open_=_first_visit())
        loaders, tab_items = {}, {}
        with gr.Tabs(selected=FIRST_TAB) as tabs:
            for tab in TABS:
                with gr.Tab(tab, id=tab) as tab_item:
                    loader = builders[tab]()
                tab_items[tab] = tab_item
                if loader:
                    # (fn, inputs, outputs): the tab's lists, read when the tab is shown — Gradio fires a tab's
                    # select when a person opens it, when a handler switches to it, and for the first tab when the
                    # page loads (a page used to read all six tabs' lists at load, and the first tab's twice)
                    loaders[tab] = loader
                    fn, inputs, outputs = loader
                    tab_item.select(fn, inputs, outputs, show_progress="hidden")
        poll_the_open_tab_only(tab_items, FIRST_TAB)
        quickstart.wire(demo, panel, tabs, loaders)
        run_improve.wire_playground(tabs)  # "Open both in the Playground" on a run's page switches tabs
        from core.access import mode_line

        gr.Markdown(f"Finetune Studio · {mode_line()}", elem_id="fts-mode")
    guard_events(demo)  # every handler: an unexpected exception reaches the page as one clear line
    return demo


def _first_visit() -> bool:
    """The quick start opens by itself until the workspace has a training run."""
    try:
        return not runs.list_runs(kind="train", limit=1)
    except Exception:  # noqa: BLE001 - a page is built even when the DB is not readable yet
        return True


def _terminate_local_jobs() -> None:
    from core.runs.backends import get_backend

    backend = get_backend("local")
    for run in runs.list_runs():
        if run.status.is_active and run.backend == "local":
            backend.terminate(run)


def term_handler(on_first=None):
    """The SIGTERM handler (docker stop, systemd, ``timeout``): on the first signal it notes it and raises
    KeyboardInterrupt, which Gradio's main loop turns into closing the server; a signal that arrives while shutting
    down (a supervisor and ``timeout`` both send one) does nothing. It takes no lock and does no work — stopping the
    monitor, passing the signal on to the jobs — so a second signal can never interrupt it holding one (two SIGTERMs
    in a row used to hang the dashboard in ``Monitor.stop`` → ``Event.set``). ``on_first``: test hook."""
    def on_term(signum, frame):
        if SHUTDOWN["signal"] is not None:
            return
        SHUTDOWN["signal"] = signum
        try:  # os.write, not print: print takes the stream's lock, which a signal may find held
            os.write(2, b"SIGTERM: shutting the dashboard down (runs keep going in their own processes)\n")
        except OSError:
            pass
        if on_first is not None:
            on_first()
        raise KeyboardInterrupt  # gradio's main loop closes the server on it

    return on_term


SHUTDOWN: dict = {"signal": None}


def install_shutdown_handler() -> None:
    signal.signal(signal.SIGTERM, term_handler())


def finish_shutdown(monitor: runs.Monitor) -> None:
    """After the server closed, in the main thread's normal flow: stop watching; when the dashboard is PID 1 (a
    container) and a SIGTERM ended it, pass the shutdown on to the local jobs (they checkpoint and end interrupted)."""
    monitor.shutdown()
    if SHUTDOWN.get("warm"):  # the warm worker this dashboard started goes with it (its running workers do not)
        from core.runs.backends import unwarm

        unwarm()
    if SHUTDOWN["signal"] is not None and os.getpid() == 1:
        try:
            _terminate_local_jobs()
        except Exception as exc:  # noqa: BLE001
            print(f"could not pass the shutdown on to the jobs: {exc}", file=sys.stderr)


def main() -> None:
    from core.secrets import install_redaction

    install_redaction()  # the app's own log never holds a token either
    settings = get_settings()
    settings.workspace.mkdir(parents=True, exist_ok=True)
    from core.models import ensure_default_model

    ensure_default_model(progress=print)
    from core.deploy.deployments import reconcile_on_start

    # reconcile leftovers from a previous start, then watch workers; every round also collects the job supervisors
    # this process started that have ended — local servers' included: they are serve jobs (no <defunct> children)
    monitor = runs.start_monitor()
    from core.runs.backends import prewarm

    if prewarm():  # runs then fork from it with the libraries imported: seconds, not 10-30 s, to their first step
        SHUTDOWN["warm"] = True
        print("warm worker: starting (FTS_WARM_WORKER=0 turns it off)", flush=True)

    try:
        print(f"deployments: {reconcile_on_start()}", flush=True)  # rows follow their jobs; orphans stopped
    except Exception as exc:  # noqa: BLE001 - the dashboard starts anyway; the next read of a row checks it again
        print(f"deployments could not be reconciled: {exc}", file=sys.stderr, flush=True)
    install_shutdown_handler()
    from core.quickstart import preload_demo
    from core.space import in_space, max_upload_mb

    if in_space():
        try:
            print(f"space: {preload_demo()}", flush=True)
        except Exception as exc:  # noqa: BLE001 - the studio starts without it; the quick start can load it
            print(f"space: the demo task could not be preloaded: {exc}", file=sys.stderr, flush=True)
    from starlette.middleware import Middleware

    from core.users import accounts_configured
    from ui.gate import Gate, async_auth

    demo = build_app()
    demo.queue(default_concurrency_limit=4)
    try:
        demo.launch(
            server_name=os.environ.get("GRADIO_SERVER_NAME") or "127.0.0.1",  # loopback unless told otherwise
            server_port=int(os.environ.get("PORT") or os.environ.get("GRADIO_SERVER_PORT") or 7860),
            # named users (core.users) and/or FTS_AUTH, hashed off the event loop; None: a single-user local studio
            auth=async_auth if accounts_configured() else None,
            app_kwargs={"middleware": [Middleware(Gate)]},  # sign-in throttling, sessions that end, uploads' owners
            auth_message="Finetune Studio: sign in with your studio account",
            max_file_size=f"{max_upload_mb()}mb",  # a bigger upload is refused (413) before it is written
            theme=THEME,
            css=CSS,
            i18n=I18N,  # words Gradio's own locale lacks (screen readers heard "common.complete")
            show_error=True,
        )
    finally:
        finish_shutdown(monitor)
        print("dashboard stopped", flush=True)


if __name__ == "__main__":
    main()
