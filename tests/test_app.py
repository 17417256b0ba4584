"""The real dashboard (`python app.py`) in a subprocess: it serves all six tabs, and in headless Chromium a run is
started from the Train tab, survives a page reload (re-attach) and its steps show up live."""
from __future__ import annotations

import json
import os
import re
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import launch_app, stop_app
from tests.pages import start_training_from_the_tab

CHROMIUM = "/usr/bin/chromium"
TABS = ["Estimate", "Data", "Train", "Evaluate", "Playground", "Deploy"]


@pytest.fixture
def app_server(workspace, default_model_dir):
    proc, url = launch_app(workspace / "app.log", FTS_TENSORBOARD_PORT="8773")  # the page's TensorBoard (issue 29)
    APP_PIDS[url] = proc.pid
    yield url
    stop_app(proc)


APP_PIDS: dict[str, int] = {}  # app_server's URL -> its process


def torch_loaded_in(pid: int) -> bool:
    """Whether process ``pid`` has torch's native library mapped (``import torch`` maps it)."""
    return "/libtorch_cpu" in Path(f"/proc/{pid}/maps").read_text()


def test_app_builds_and_serves_all_six_tabs(app_server):
    with urllib.request.urlopen(app_server + "config", timeout=10) as r:
        config = json.loads(r.read())
    labels = [c.get("props", {}).get("label") for c in config["components"] if c.get("type") == "tabitem"]
    assert labels == TABS
    text = json.dumps(config)
    assert "not built" not in text  # every tab is real
    assert "Start evaluation" in text and "Send to both" in text  # Evaluate and Playground are built
    assert "Deploy" in text and "Smoke-test prompt" in text  # and Deploy
    assert "Start training" in text
    if Path(CHROMIUM).exists():  # (the page's own polling, on the same app)
        a_page_polls_only_for_the_tab_it_shows_and_slowly_while_nothing_runs(app_server, config)
    import torch

    if torch.version.cuda is None and torch.version.hip is None:  # a CPU-only torch: no GPU to count
        # the dashboard built its form, and a page went through every tab, without loading torch (~1.5 s of a start)
        assert not torch_loaded_in(APP_PIDS[app_server])


def _tab_of_each_component(config: dict) -> dict[int, str]:
    labels = {c["id"]: c.get("props", {}).get("label") for c in config["components"] if c.get("type") == "tabitem"}
    out: dict[int, str] = {}

    def walk(node: dict, tab: str | None) -> None:
        tab = labels.get(node["id"], tab)
        if tab:
            out[node["id"]] = tab
        for child in node.get("children") or []:
            walk(child, tab)

    walk(config["layout"], None)
    return out


def a_page_polls_only_for_the_tab_it_shows_and_slowly_while_nothing_runs(app_server: str, config: dict):
    """Each event costs a page this size ~0.1 s of browser time (bench/idle_page.py): an idle page used to tick 4
    times a second for all its tabs. Now a tab's timers tick only while it is shown; Train's every 4 s while nothing
    runs (every second while a run is queued or running: test_train_ui), Evaluate's only while it watches a job."""
    from playwright.sync_api import sync_playwright

    tab_of = _tab_of_each_component(config)
    timers = {c["id"]: c for c in config["components"] if c.get("type") == "timer"}
    in_tabs = {i: tab_of[i] for i in timers if i in tab_of}
    assert {"Train", "Evaluate", "Deploy"} <= set(in_tabs.values())
    # as built, only the first tab's timers (and the quick-start panel's, open for a newcomer) tick
    assert {tab_of.get(i, "panel") for i, c in timers.items() if c["props"].get("active")} == {"Train", "panel"}
    ticks_of = {d["id"]: tab_of.get(d["targets"][0][0], "panel") for d in config["dependencies"]
                if d["targets"] and d["targets"][0][0] in timers and d["targets"][0][1] == "tick"}
    tab_items = {c["id"] for c in config["components"] if c.get("type") == "tabitem"}
    switches = {d["id"] for d in config["dependencies"]
                if d["targets"] and d["targets"][0][0] in tab_items and d["targets"][0][1] == "select"
                and d["outputs"] and set(d["outputs"]) <= set(timers)}
    # a tab's lists: what its select reads (by its outputs: the same reader bound to the page's load counts too)
    reads = {frozenset(d["outputs"]): tab_of[d["targets"][0][0]] for d in config["dependencies"]
             if d["targets"] and d["targets"][0][0] in tab_items and d["targets"][0][1] == "select"
             and d["id"] not in switches}
    loader_of = {d["id"]: reads[frozenset(d["outputs"])] for d in config["dependencies"]
                 if frozenset(d["outputs"]) in reads}
    # the switch runs in the browser: no reply from the server can come back after a later one (below)
    assert len(switches) == len(TABS)
    assert all(d["js_implementation"] for d in config["dependencies"] if d["id"] in switches)
    seen: list[str] = []
    sent: list[int] = []

    def on_request(req) -> None:
        if "queue/join" in req.url and req.post_data:
            fn = json.loads(req.post_data).get("fn_index")
            sent.append(fn)
            if fn in ticks_of:
                seen.append(ticks_of[fn])

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu",
                                                                    "--disable-background-networking"])
        page = browser.new_page()
        page.on("request", on_request)
        page.goto(app_server)
        # (waiting through the page, not time.sleep: its request events reach us only while Playwright runs)
        page.get_by_role("tab", name="Deploy", exact=True).wait_for()
        for _ in range(40):  # the shown tab's lists are read once the page is built (slowly on a busy machine)
            if any(f in loader_of for f in sent):
                break
            page.wait_for_timeout(250)
        page.wait_for_timeout(2000)  # and no other tab's, nor that one's again
        loaded_at_open = [loader_of[f] for f in sent if f in loader_of]
        page.get_by_role("tab", name="Evaluate", exact=True).click()
        page.wait_for_timeout(3000)
        seen.clear()
        page.wait_for_timeout(6000)
        on_evaluate = list(seen)
        page.get_by_role("tab", name="Train", exact=True).click()
        page.wait_for_timeout(1500)
        seen.clear()
        page.wait_for_timeout(9000)
        on_train = list(seen)
        # another tab opened the moment the page is there (a test's open_tab, a quick person): its timer ticks. The
        # first tab's select at load used to be a request whose reply could land after this one's and switch it off
        page.close()
        page = browser.new_page()
        page.on("request", on_request)
        page.goto(app_server)
        page.get_by_role("tab", name="Deploy", exact=True).click()
        page.wait_for_timeout(1000)  # (a Train tick sent before the click may still be on its way)
        seen.clear()
        page.wait_for_timeout(5000)
        on_deploy = list(seen)
        browser.close()
    assert not switches & set(sent), "a tab switch went to the server"
    # a page opens reading the lists of the tab it shows, once (it read all six, the first one twice)
    assert loaded_at_open == ["Train"], loaded_at_open
    assert on_deploy.count("Deploy") >= 1 and not {"Train", "Evaluate"} & set(on_deploy), on_deploy
    # Evaluate shown, nothing to watch: no timer of Train's, Deploy's or Evaluate's own ticks
    assert not [t for t in on_evaluate if t != "panel"], on_evaluate
    # Train shown, no run: its refresh ticks, at its idle pace (9 s at 1 s would be 9 ticks)
    assert 1 <= on_train.count("Train") <= 4 and set(on_train) <= {"Train", "panel"}, on_train


@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian chromium")
def test_start_run_from_the_browser_reload_and_watch_it_live(app_server, workspace, fixtures_dir, tiny_model_dir):
    """Then a second run from the same form: 2 processes, FSDP, on the tiny model (issue 27)."""
    from playwright.sync_api import expect, sync_playwright

    from core import runs as jobs

    dataset = str(fixtures_dir / "alpaca_en_demo.json")
    seen_at: dict[int, float] = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu",
                                                                    "--disable-background-networking"])
        page = browser.new_page(viewport={"width": 1500, "height": 1300})
        page.goto(app_server)
        for tab in TABS:
            expect(page.get_by_role("tab", name=tab, exact=True)).to_be_visible()
        start_training_from_the_tab(page, dataset, max_steps=6, batch_size=2, max_length=96)
        expect(page.get_by_text("Run #1")).to_be_visible(timeout=30_000)

        # close the page mid-run and open a fresh one: it re-attaches to the running run
        deadline = time.time() + 300
        while jobs.get_run(1).step < 1 and time.time() < deadline:
            time.sleep(0.2)
        # the page open since before the run draws the curve as it arrives (legend appears with the first line)
        expect(page.get_by_text("train loss", exact=True)).to_be_visible(timeout=10_000)
        page.close()
        page = browser.new_page(viewport={"width": 1500, "height": 1300})
        page.goto(app_server)
        progress = page.locator(".fts-status")
        expect(progress).to_contain_text("running", timeout=30_000)
        live_since = time.time()
        while time.time() < deadline:  # note when each step first shows in the page
            text = progress.inner_text()
            for step in range(1, 7):
                if f"step {step}/6" in text and step not in seen_at:
                    seen_at[step] = time.time()
            if "succeeded" in text:
                break
            time.sleep(0.05)
        expect(progress).to_contain_text("succeeded", timeout=60_000)
        expect(page.locator(".fts-progress")).to_be_visible()
        page.screenshot(path=str(workspace / "train_tab.png"), full_page=True)
        start_parallel_run_from_the_tab(page, dataset, tiny_model_dir)
        expect(page.get_by_text("Run #2")).to_be_visible(timeout=30_000)
        expect(page.locator(".fts-parallel")).to_have_text("2 processes · fsdp", timeout=30_000)
        parallel = jobs.wait_for(2, timeout_s=300)
        assert parallel.status == "succeeded", jobs.log_tail(2)
        expect(page.locator(".fts-status")).to_contain_text("succeeded", timeout=30_000)
        expect(page.locator("#train-log textarea")).to_have_value(re.compile("ranks: peak RSS rank 0"), timeout=30_000)
        page.screenshot(path=str(workspace / "train_tab_2_processes.png"), full_page=True)
        # it reported to TensorBoard (issue 29): the page says where, starts the TensorBoard and links the run there
        outcome = page.locator("#train-outcome")
        expect(outcome).to_contain_text(f"event files in {workspace}/runs/2/tensorboard", timeout=30_000)
        page.get_by_role("button", name="TensorBoard (runs that report to it)").click()
        page.locator("#train-tb-start").click()
        expect(page.locator("#train-tb-status")).to_contain_text("TensorBoard runs", timeout=90_000)
        expect(outcome.get_by_role("link", name="open in TensorBoard")).to_have_attribute(
            "href", "http://127.0.0.1:8773/?runFilter=%5E2%2F#timeseries", timeout=30_000)
        with urllib.request.urlopen("http://127.0.0.1:8773/data/runs", timeout=10) as r:
            assert "2/tensorboard" in json.loads(r.read())
        page.screenshot(path=str(workspace / "train_tab_tensorboard.png"), full_page=True)
        page.locator("#train-tb-stop").click()
        expect(page.locator("#train-tb-status")).to_contain_text("stopped", timeout=30_000)
        sweep = run_a_sweep_from_the_tab(page, dataset, tiny_model_dir, workspace)
        browser.close()
    assert (parallel.config["num_processes"], parallel.config["distributed"]) == (2, "fsdp")
    assert "ranks: 2 processes started" in jobs.log_tail(2, max_lines=400)
    # of its two processes only rank 0 reported to TensorBoard: one event file
    assert parallel.config["report_to"] == ["tensorboard"]
    assert len(list((workspace / "runs" / "2" / "tensorboard").glob("events.out.tfevents.*"))) == 1

    done = sweep.final_metrics
    assert sweep.status == "succeeded" and done["complete"] + done["pruned"] == 2, jobs.log_tail(sweep.id)
    from core.sweep.jobs import sweep_to_dict

    d = sweep_to_dict(sweep.id)
    trial_ids = {t["run_id"] for t in d["trials"]}
    assert len(trial_ids) == 2 and all(f"sweep-{sweep.id}" in jobs.get_run(i).tags for i in trial_ids)
    # "continue the best trial": a new run from the best trial's adapter
    assert [r.parent_run_id for r in jobs.list_runs(kind="train") if r.id > max(trial_ids)] == [d["best_run"]]

    run = jobs.get_run(1)
    assert run.status == "succeeded" and run.step == 6
    logged = {m.step: m.created_at.timestamp() if m.created_at.tzinfo else
              m.created_at.replace(tzinfo=__import__("datetime").timezone.utc).timestamp()
              for m in jobs.run_metrics(1) if m.loss is not None}
    # steps logged while the page was open (earlier ones only show the reload time)
    lags = [seen_at[s] - logged[s] for s in seen_at if s in logged and s < 6 and logged[s] > live_since]
    assert lags, "no intermediate step was seen live in the page"
    print(f"\nstep logged -> shown in the UI: mean {sum(lags) / len(lags):.2f}s, max {max(lags):.2f}s "
          f"over {len(lags)} steps")
    assert max(lags) < 5.0  # the chart/progress refresh every second; 5 s means the page is not live


def run_a_sweep_from_the_tab(page, dataset: str, tiny_model_dir: str, workspace: Path):
    """Issue 29: a 2-trial sweep from the Train tab's Sweep section (the sweep file typed in), watched to its end: the
    trials table, the best-so-far curve, then "continue the best trial"."""
    from playwright.sync_api import expect

    from core import runs as jobs

    sweep_yaml = (f"name: page-sweep\nbase: {{base_model: '{tiny_model_dir}', dataset: '{dataset}', max_steps: 2, "
                  "batch_size: 2, max_length: 96, lora_r: 4, lora_alpha: 8, eval_split: 0.1, eval_steps: 1, "
                  "save_steps: 0}\nsearch:\n  learning_rate: {type: log_uniform, low: 1.0e-4, high: 5.0e-2}\n"
                  "  lora_r: {type: choice, values: [2, 4]}\nobjective: eval_loss\n")
    page.locator("#sweep").get_by_text("Sweep — search hyperparameters").click()
    editor = page.locator("#sweep-yaml .cm-content")
    editor.click()
    page.keyboard.press("Control+A")
    page.keyboard.press("Delete")
    page.keyboard.insert_text(sweep_yaml)
    page.locator("#sweep-trials input").fill("2")
    page.locator("#sweep-start").click()
    expect(page.locator("#sweep-msg")).to_contain_text("queued", timeout=60_000)
    sweep_id = max(r.id for r in jobs.list_runs(kind="sweep"))
    sweep = jobs.wait_for(sweep_id, timeout_s=600)
    expect(page.locator("#sweep-status")).to_contain_text("succeeded, 2 of 2 trials done", timeout=30_000)
    expect(page.locator("#sweep-trials-table")).to_contain_text("complete")
    expect(page.locator("#sweep-status")).to_contain_text("Best so far: run #")
    expect(page.locator("#sweep-best")).to_contain_text("best so far", timeout=10_000)
    page.locator("#sweep").screenshot(path=str(workspace / "sweep_section.png"))
    page.locator("#sweep-continue").click()
    expect(page.locator("#sweep-action")).to_contain_text("continues the best trial", timeout=30_000)
    return sweep


def test_a_second_sigterm_while_the_first_is_handled_does_nothing():
    """The handler re-entered deterministically: the first SIGTERM's handler sends a second one to the process; the
    second returns at once (no lock, no work), the first goes on and raises KeyboardInterrupt (Gradio closes)."""
    import signal

    import app

    seen = []
    old = signal.getsignal(signal.SIGTERM)
    handler = app.term_handler(on_first=lambda: (seen.append("first"), os.kill(os.getpid(), signal.SIGTERM),
                                                 time.sleep(0.2), seen.append("after the second")))
    app.SHUTDOWN["signal"] = None
    signal.signal(signal.SIGTERM, handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
    finally:
        signal.signal(signal.SIGTERM, old)
        app.SHUTDOWN["signal"] = None
    assert seen == ["first", "after the second"]


def test_two_sigterms_in_a_row_stop_the_dashboard_and_leave_its_runs_alone(workspace, monkeypatch):
    """As `timeout` and a supervisor (or systemd) send them: the dashboard exits 0 within seconds, a running job
    goes on in its own process."""
    import signal

    from core import runs

    monkeypatch.setenv("FTS_JOB_KINDS", "tests.job_kinds")
    log = workspace / "app.log"
    proc, _ = launch_app(log, FTS_JOB_KINDS="tests.job_kinds")
    try:
        job = runs.submit("count", {"steps": 400, "sleep_s": 0.1})
        deadline = time.time() + 60
        while runs.get_run(job.id).step < 2 and time.time() < deadline:
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        proc.send_signal(signal.SIGTERM)
        t0 = time.time()
        assert proc.wait(timeout=30) == 0, log.read_text()[-2000:]
        took = time.time() - t0
        step = runs.get_run(job.id).step
        time.sleep(1.5)
        after = runs.get_run(job.id)
        assert after.status.value == "running" and after.step > step  # untouched, still counting
        assert "dashboard stopped" in log.read_text()
        print(f"dashboard exited in {took:.1f} s after two SIGTERMs")
    finally:
        if proc.poll() is None:
            proc.kill()
        runs.stop(job.id)


def start_parallel_run_from_the_tab(page, dataset: str, model_dir: str) -> None:
    """Base model: a folder; Advanced: 2 processes (Distributed turns to ddp as the count leaves the box), then fsdp;
    2 steps of batch 1 per process."""
    from playwright.sync_api import expect

    base = page.get_by_label("Base model", exact=True)
    base.fill(model_dir)
    base.press("Enter")
    page.get_by_text("Advanced", exact=True).click()
    processes = page.get_by_label("Processes", exact=True)
    processes.fill("2")
    processes.press("Tab")
    expect(page.get_by_label("ddp", exact=True)).to_be_checked(timeout=10_000)
    page.get_by_label("fsdp", exact=True).check()
    page.locator("#train-report-to").get_by_label("TensorBoard", exact=True).check()  # only rank 0 writes it
    start_training_from_the_tab(page, dataset, max_steps=2, batch_size=1, max_length=64)
