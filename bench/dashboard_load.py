"""A team's dashboard under load (issue 12): 20 runs in the table and 2 signed-in users whose pages poll, against the
same dashboard idle. Page (GET /) and Train-tab refresh latency, p50 / p95, and the ratio loaded / idle (target:
p95 within 2x of idle).

    .venv/bin/python bench/dashboard_load.py [--seconds 40] [--runs 20] [--metric-rows 300]

The app is the real one (`python app.py`) with two accounts (alice, bob) in a fresh workspace holding 20 training
runs, each with its metric rows. The probe signs in as alice through the Gradio client and calls the Train tab's own
1 s refresh (`/tick`: runs table, selection, the selected run's details) with a run selected — each call from a new
session, so the refresh sends everything (a page's later refreshes send only what changed) — and fetches the page,
one request at a time. "Idle": only the probe. "Loaded": alice and bob each have the studio open in headless Chromium
(signed in, on the Train tab with a run selected), so each page's timers poll every second as they do for a person.
"""
from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
USERS = {"alice": "alice-password", "bob": "bob-password"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def seed_runs(n: int, metric_rows: int) -> list[int]:
    """n finished training runs (alternating owners), each with a loss/lr curve of metric_rows rows."""
    from sqlalchemy import insert

    from core.config import db_session
    from core.runs import store
    from storage import RunMetric

    ids = []
    for i in range(n):
        owner = "alice" if i % 2 == 0 else "bob"
        run = store.submit("train", {"dataset": "demo", "name": f"sweep-{i}", "max_steps": metric_rows},
                           name=f"sweep-{i}", method="lora", owner=owner)
        store.transition(run.id, "starting")
        store.transition(run.id, "running", started_at=store.utcnow())
        with db_session() as s:
            s.exec(insert(RunMetric), params=[{"run_id": run.id, "step": k, "loss": 2.0 / k, "lr": 2e-4}
                                              for k in range(1, metric_rows + 1)])
        store.report_progress(run.id, step=metric_rows, max_steps=metric_rows)
        store.finish(run.id, "succeeded" if i % 5 else "stopped")
        ids.append(run.id)
    return ids


def quantiles(xs: list[float]) -> tuple[float, float]:
    xs = sorted(xs)
    return statistics.median(xs), xs[round(0.95 * (len(xs) - 1))]


def probe(base: str, client, run_id: int, seconds: float) -> dict[str, list[float]]:
    """Alternate a Train-tab refresh and a page fetch, one at a time, for `seconds`."""
    out: dict[str, list[float]] = {"page": [], "train refresh": []}
    end = time.time() + seconds
    while time.time() < end:
        client.reset_session()  # a page that has shown nothing yet: the refresh sends everything (the worst case)
        t = time.perf_counter()
        table, *_ = client.predict(str(run_id), False, api_name="/tick")
        out["train refresh"].append(time.perf_counter() - t)
        assert len(table["data"]) >= 20, table  # the refresh really read the 20 runs
        t = time.perf_counter()
        with urllib.request.urlopen(base, timeout=30) as r:
            assert r.status == 200
            r.read()
        out["page"].append(time.perf_counter() - t)
        time.sleep(0.1)
    return out


def open_studio(browser, base: str, name: str, newest: str, run_label: str):
    from playwright.sync_api import expect

    page = browser.new_context(viewport={"width": 1400, "height": 1100}).new_page()
    page.goto(base)
    page.get_by_label("username").fill(name)
    page.get_by_label("password").fill(USERS[name])
    page.get_by_role("button", name="Login").click()
    page.get_by_role("tab", name="Train", exact=True).click(timeout=60_000)
    expect(page.get_by_role("gridcell", name=newest, exact=True)).to_be_visible(timeout=30_000)
    sel = page.get_by_label("Selected run")
    for _ in range(10):  # the 1 s refresh re-renders the list's choices: a click can land between two of them
        sel.click()
        page.get_by_role("option", name=run_label, exact=True).first.click()
        page.wait_for_timeout(1500)
        if sel.input_value() == run_label:
            return page
    raise AssertionError(f"{name} could not select {run_label}: {sel.input_value()}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=40)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--metric-rows", type=int, default=300)
    args = ap.parse_args()
    ws = Path(tempfile.mkdtemp(prefix="fts-bench-load-"))
    os.environ["FTS_WORKSPACE"] = str(ws)
    os.environ.pop("DATABASE_URL", None)
    os.environ.setdefault("FTS_MODELS_DIR", str(REPO / "workspace" / "models"))

    from gradio_client import Client
    from playwright.sync_api import sync_playwright

    from core.users import add_user

    for name, password in USERS.items():
        add_user(name, password)
    ids = seed_runs(args.runs, args.metric_rows)
    probe_run = ids[-1]

    port = free_port()
    base = f"http://127.0.0.1:{port}/"
    log = open(ws / "app.log", "w")
    app = subprocess.Popen([sys.executable, "app.py"], cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                           env=dict(os.environ, PORT=str(port), GRADIO_ANALYTICS_ENABLED="False"))
    try:
        for _ in range(360):
            try:
                urllib.request.urlopen(base, timeout=2).read()
                break
            except OSError:
                time.sleep(0.5)
        client = Client(base, auth=("alice", USERS["alice"]), verbose=False)
        probe(base, client, probe_run, 5)  # warm-up: first imports, first queries
        idle = probe(base, client, probe_run, args.seconds)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            newest = f"sweep-{args.runs - 1}"  # the table lists the newest first
            pages = [open_studio(browser, base, name, newest, f"#{ids[k]} sweep-{k} — succeeded")
                     for name, k in (("alice", 1), ("bob", 2))]
            time.sleep(3)
            loaded = probe(base, client, probe_run, args.seconds)
            for page in pages:  # still polling at the end: the load was there the whole time
                assert page.get_by_role("gridcell", name=newest, exact=True).is_visible()
            browser.close()
    finally:
        app.terminate()
        app.wait(timeout=30)
        log.close()

    print(f"{args.runs} runs x {args.metric_rows} metric rows; probe signed in as alice; {args.seconds:.0f} s each")
    for what in ("page", "train refresh"):
        (i50, i95), (l50, l95) = quantiles(idle[what]), quantiles(loaded[what])
        print(f"{what:14s} idle    p50 {i50 * 1000:6.0f} ms  p95 {i95 * 1000:6.0f} ms  (n={len(idle[what])})")
        print(f"{what:14s} 2 users p50 {l50 * 1000:6.0f} ms  p95 {l95 * 1000:6.0f} ms  (n={len(loaded[what])})"
              f"   p95 ratio {l95 / i95:.2f}x (target <= 2x)")


if __name__ == "__main__":
    main()
