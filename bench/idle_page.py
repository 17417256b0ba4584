"""What an open, idle dashboard page costs: CPU of the app process and of the browser, and the page's events.

    .venv/bin/python bench/idle_page.py [--seconds 30] [--tabs Train,Evaluate,Deploy,Estimate] [--opens 5]

Starts ``app.py`` on a fresh workspace (the quick-start panel open, as for a newcomer), opens one Chromium page,
and for each tab: selects it, waits 8 s, then counts over ``--seconds`` the CPU seconds the app (with its children)
and every Chromium process used, and the events the page sent (``queue/join`` requests, by what triggered them).
Run it from another checkout's root (``cd ../other && python /path/to/bench/idle_page.py``) to measure that tree's
app with the same script. One JSON line per tab, then a summary line. ``--opens N`` first opens the page N times
afresh (each in a new browser page, closed after it settled: 6 s) and reports what one opening costs the app and the
browser, and the events it sent.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
import urllib.request
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--tabs", default="Train,Evaluate,Deploy,Estimate")
    ap.add_argument("--opens", type=int, default=0)
    args = ap.parse_args()
    root = Path.cwd()  # the checkout whose app is measured
    sys.path.insert(0, str(root))
    import psutil
    from playwright.sync_api import sync_playwright

    from tests.conftest import launch_app, stop_app

    ws = Path(tempfile.mkdtemp(prefix="fts-idle-page-")) / "ws"
    ws.mkdir()
    os.environ["FTS_WORKSPACE"] = str(ws)
    os.environ.pop("DATABASE_URL", None)
    os.environ.setdefault("FTS_MODELS_DIR", str(root / "workspace" / "models"))
    proc, url = launch_app(ws / "app.log")
    app = psutil.Process(proc.pid)
    with urllib.request.urlopen(url + "config", timeout=30) as r:
        config = json.loads(r.read())
    kinds = {c["id"]: c.get("type") for c in config["components"]}
    deps = config["dependencies"]
    events: collections.Counter = collections.Counter()

    def on_request(req) -> None:
        if "queue/join" not in req.url or not req.post_data:
            return
        fn = json.loads(req.post_data).get("fn_index")
        dep = deps[fn] if isinstance(fn, int) and fn < len(deps) else {}
        events["+".join(f"{kinds.get(t[0])}.{t[1]}" for t in dep.get("targets") or []) or "?"] += 1

    def app_cpu() -> float:
        total = 0.0
        for p in [app, *app.children(recursive=True)]:
            try:
                t = p.cpu_times()
                total += t.user + t.system + t.children_user + t.children_system
            except psutil.Error:
                pass
        return total

    def browser_cpu() -> float:
        total = 0.0
        for p in psutil.process_iter(["name"]):
            if "chrom" in (p.info["name"] or ""):
                try:
                    t = p.cpu_times()
                    total += t.user + t.system
                except psutil.Error:
                    pass
        return total

    rows = []
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            if args.opens:
                spent = []
                for _ in range(args.opens + 1):  # the first opening warms the app: not counted
                    opened = browser.new_page(viewport={"width": 1500, "height": 1300})
                    opened.on("request", on_request)
                    events.clear()
                    a0, b0 = app_cpu(), browser_cpu()
                    opened.goto(url)
                    opened.get_by_role("tab", name="Deploy", exact=True).wait_for()
                    opened.wait_for_timeout(6000)
                    spent.append((app_cpu() - a0, browser_cpu() - b0, sum(events.values()), dict(events)))
                    opened.close()
                spent = spent[1:]
                row = {"open": args.opens, "app_cpu_s": round(sum(s[0] for s in spent) / len(spent), 2),
                       "browser_cpu_s": round(sum(s[1] for s in spent) / len(spent), 2),
                       "events": round(sum(s[2] for s in spent) / len(spent), 1), "last": spent[-1][3]}
                print(json.dumps(row), flush=True)
            page = browser.new_page(viewport={"width": 1500, "height": 1300})
            page.on("request", on_request)
            page.goto(url)
            page.get_by_role("tab", name="Deploy", exact=True).wait_for()
            for tab in args.tabs.split(","):
                page.get_by_role("tab", name=tab, exact=True).click()
                page.wait_for_timeout(8000)  # (not time.sleep: the page's request events reach us only meanwhile)
                events.clear()
                a0, b0 = app_cpu(), browser_cpu()
                page.wait_for_timeout(args.seconds * 1000)
                a1, b1 = app_cpu(), browser_cpu()
                row = {"tab": tab, "app_cores": round((a1 - a0) / args.seconds, 3),
                       "browser_cores": round((b1 - b0) / args.seconds, 3),
                       "events_per_s": round(sum(events.values()) / args.seconds, 2),
                       "events": dict(events.most_common())}
                rows.append(row)
                print(json.dumps(row), flush=True)
            browser.close()
    finally:
        stop_app(proc)
    print(json.dumps({"summary": {r["tab"]: round(r["app_cores"] + r["browser_cores"], 3) for r in rows},
                      "checkout": str(root)}), flush=True)


if __name__ == "__main__":
    main()
