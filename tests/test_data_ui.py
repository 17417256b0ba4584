"""The Data tab: handler flow (upload → check → import → preview → stats) and the same flow in headless Chromium."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import CHROMIUM, REPO, free_port


def test_handler_flow(workspace, fixtures_dir):
    from ui import data as ui

    src = str(fixtures_dir / "identity.json")
    report, drop, placeholders, columns, sample = ui.inspect_source(src, "", "auto", None, None)
    assert "alpaca" in report and "placeholder" in report
    assert placeholders["value"] == [["author", ""], ["name", ""]]
    fill = [["name", "Ada"], ["author", "Acme"]]
    msg, table, dd, hist, stats = ui.run_import(src, "", "auto", "who", None, fill, ui.DEFAULT_DROP, 0.2, 0.0, 1,
                                                "default", 2048, progress=lambda *a, **k: None)
    assert "imported as dataset 1" in msg and "training tokens" in stats
    assert dd["value"] == "1" and len(hist) > 0
    segments, info = ui.show_row("1", "train", 0, "default", 2048)
    assert any(lab == "trained" and "Ada" in text for text, lab in segments) and "carry loss" in info
    hist2, stats2 = ui.run_stats("1", "default", 16, progress=lambda *a, **k: None)
    assert "over the max length 16" in stats2
    bad, *_ = ui.inspect_source(None, "/no/such/file.json", "auto", None, None)
    assert "not found" in bad


def test_an_upload_is_named_by_its_own_file_name_not_the_temp_path(workspace, tmp_path):
    """Gradio hands uploads over as …/gradio/<hash>/<name>; that path is gone once it cleans its cache."""
    from core.data import get_dataset
    from ui import data as ui

    tmp = tmp_path / "gradio" / "0123abcd"
    tmp.mkdir(parents=True)
    broken = tmp / "broken.json"
    broken.write_text('[{"instruction": "a", "output": "b"},')  # cut off
    report, *_ = ui.inspect_source(str(broken), "", "auto", None, None)
    assert "broken.json" in report and str(tmp) not in report
    good = tmp / "support.jsonl"
    good.write_text('{"instruction": "Say hi", "output": "Hi"}\n{"instruction": "Say bye", "output": "Bye"}\n')
    msg, table, dd, hist, stats = ui.run_import(str(good), "", "auto", "", None, None, ui.DEFAULT_DROP, 0.0, 0.0, 1,
                                                "default", 2048, progress=lambda *a, **k: None)
    ds = get_dataset(dd["value"])
    assert ds.source == "support.jsonl" and ds.name.startswith("support") and str(tmp) not in msg


LAUNCHER = """
import sys, time
import gradio as gr
from ui.data import build_tab
with gr.Blocks() as demo:
    with gr.Tab("Data"):
        build_tab()
demo.launch(server_name="127.0.0.1", server_port=int(sys.argv[1]), prevent_thread_lock=True)
print("READY", flush=True)
while True:
    time.sleep(1)
"""


@pytest.mark.browser
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian chromium")
def test_browser_upload_preview_stats(workspace, fixtures_dir, tmp_path):
    pytest.importorskip("playwright")
    from playwright.sync_api import sync_playwright

    port = free_port()
    script = tmp_path / "launch.py"
    script.write_text(LAUNCHER)
    env = {**os.environ, "PYTHONPATH": str(REPO), "GRADIO_ANALYTICS_ENABLED": "False"}
    proc = subprocess.Popen([sys.executable, str(script), str(port)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            line = proc.stdout.readline()
            if "READY" in line:
                break
            if proc.poll() is not None:
                pytest.fail(f"launcher exited: {proc.stdout.read()}")
        upload = tmp_path / "alpaca_en_demo.json"
        shutil.copy(fixtures_dir / "alpaca_en_demo.json", upload)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM,
                                        args=["--headless", "--no-sandbox", "--disable-gpu",
                                              "--disable-background-networking"])
            page = browser.new_page(viewport={"width": 1300, "height": 2400})
            page.goto(f"http://127.0.0.1:{port}/")  # the tab polls its import jobs: wait for an element, not idle
            page.locator("#data-upload input[type=file]").wait_for(state="attached", timeout=30_000)
            page.locator("#data-upload input[type=file]").set_input_files(str(upload))
            page.get_by_text("20 usable").wait_for(timeout=30_000)  # upload triggers the check
            page.locator("#data-import").click()
            page.get_by_text("imported as dataset 1").first.wait_for(timeout=60_000)
            page.locator("#data-stats").get_by_text("training tokens").wait_for(timeout=30_000)
            page.locator("#data-preview-info").get_by_text("carry loss").wait_for(timeout=30_000)
            page.locator("#data-hist canvas, #data-hist svg").first.wait_for(timeout=30_000)
            page.screenshot(path=str(REPO / "workspace" / "data_tab.png"), full_page=True)
            preview_text = page.locator("#data-preview").inner_text()
            assert "Making crepes" in preview_text or "assistant" in preview_text
            browser.close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
