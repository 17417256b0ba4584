"""The first ten minutes, timed (issue 11): a fresh workspace, `python app.py` started the way `make run` (or a
Space) starts it, and the quick start driven in headless Chromium with its default settings until both models
have answered in the Playground.

    .venv/bin/python bench/first_ten_minutes.py            # local mode
    .venv/bin/python bench/first_ten_minutes.py --space    # as a Space starts it (SPACE_ID, 0.0.0.0, PORT)

Prints the seconds from the app's start to: the page served, each quick-start stage done, and both Playground panes
answering. The install (`scripts/setup.sh`) is timed separately (it needs a fresh clone; see bench/RESULTS.md).
"""
from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--space", action="store_true", help="start as a Hugging Face Space does")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="fts-first10-"))
    port = free_port()
    env = {**os.environ, "PORT": str(port), "GRADIO_ANALYTICS_ENABLED": "False",
           "FTS_MODELS_DIR": os.environ.get("FTS_MODELS_DIR", str(REPO / "workspace" / "models"))}
    for k in ("FTS_QUICKSTART_STEPS", "FTS_QUICKSTART_EVAL_ROWS", "DATABASE_URL"):
        env.pop(k, None)  # the defaults a newcomer gets
    if args.space:
        (tmp / "data").mkdir()
        env.update(SPACE_ID="bench/finetune-studio", GRADIO_SERVER_NAME="0.0.0.0", FTS_SPACE_DATA_DIR=str(tmp / "data"),
                   FTS_WORKSPACE="")
    else:
        env.update(GRADIO_SERVER_NAME="127.0.0.1", FTS_WORKSPACE=str(tmp / "ws"))
    load0 = os.getloadavg()  # other work on the machine slows every stage: say how busy it was
    t0 = time.time()
    marks: list[tuple[str, float]] = []

    def mark(what: str) -> None:
        marks.append((what, time.time() - t0))
        print(f"{time.time() - t0:7.1f} s  {what}", flush=True)

    log = open(tmp / "app.log", "w")
    app = subprocess.Popen([sys.executable, "app.py"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        while True:
            if app.poll() is not None:
                print((tmp / "app.log").read_text()[-3000:])
                return 1
            try:
                with urllib.request.urlopen(url, timeout=2):
                    break
            except OSError:
                time.sleep(0.2)
        mark("page served (app started, default model ready)")
        from playwright.sync_api import expect, sync_playwright

        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = browser.new_page(viewport={"width": 1500, "height": 1300})
            page.goto(url)
            status = page.locator("#qs-status")
            expect(status).to_contain_text("1 · Demo task", timeout=60_000)
            mark("page open in the browser, quick start shown")
            if "✓ 1 · Demo task" not in status.inner_text():
                page.locator("#qs-stage-1").click()
                expect(status).to_contain_text("✓ 1 · Demo task", timeout=120_000)
            mark("1 demo task loaded")
            page.locator("#qs-stage-2").click()
            expect(page.locator("#qs-message")).to_contain_text("Estimated peak memory", timeout=60_000)
            mark("2 estimate shown")
            page.locator("#qs-stage-3").click()
            expect(page.locator("#qs-message")).to_contain_text("Started training job", timeout=60_000)
            mark("3 run started")
            expect(status).to_contain_text("succeeded", timeout=1_200_000)
            mark("3 run succeeded")
            page.locator("#qs-stage-4").click()
            expect(page.locator("#qs-report")).to_contain_text("What changed", timeout=1_200_000)
            mark("4 evaluation stored: " + " ".join(page.locator("#qs-report").inner_text().split())[:120])
            page.locator("#qs-stage-5").click()
            expect(page.locator("#pg-model-b input")).to_have_value(re.compile("quickstart-lora"), timeout=30_000)
            page.get_by_role("button", name="Send to both").click()
            expect(page.locator("#pg-stats-a")).to_contain_text("tokens/s", timeout=300_000)
            expect(page.locator("#pg-stats-b")).to_contain_text("tokens/s", timeout=300_000)
            mark("5 both Playground panes answered")
            expect(status).to_contain_text("✓ 5 · Playground", timeout=60_000)
            mark("5 checked: " + str(status.inner_text().count("✓")) + " of 5 stages")
            browser.close()
    finally:
        app.terminate()
        try:
            app.wait(timeout=30)
        except subprocess.TimeoutExpired:
            app.kill()
        log.close()
    mode = "Space mode" if args.space else "local mode"
    answered = next(t for what, t in marks if what.startswith("5 both"))
    print(f"\n{mode}: app start → both models answering in {answered:.0f} s "
          f"(first click → answering {answered - marks[1][1]:.0f} s); load average at the start "
          f"{load0[0]:.1f}, at the end {os.getloadavg()[0]:.1f} (an idle machine: below 0.5)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
