"""A hostile studio, end to end in Chromium (issue 15: "untrusted text stays text" and "secrets"):

a dataset whose rows and name are HTML/JS payloads (script tags, event handlers, ``javascript:`` links and iframes,
a Markdown image on an outside host, a code fence that tries to close itself), a run named with a payload and
trained on it for 2 steps, an evaluation of it, a run whose Hub model answers 401 quoting the token back, a planted
``HF_TOKEN``, a payload prompt in the Playground, and every tab visited. Asserted: no script ran (window flag), no
dialog opened, no request left for a host other than the studio's, the token is nowhere on the page nor in any file
of the workspace (database included), and a container command's dry run names the token only as ``-e HF_TOKEN``.
"""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from urllib.parse import urlparse

import pytest

from core.config import REPO_ROOT

TOKEN = "PlantedToken-7f3a9c1e5b2d"  # not hf_-shaped: found by value, not by pattern
EVIL = "evil.invalid"
PAYLOADS = [
    '<script>window.__xss="script"</script>',
    '<img src=x onerror="window.__xss=\'img\'">',
    '<svg onload="window.__xss=\'svg\'"></svg>',
    '<iframe src="javascript:parent.__xss=\'iframe\'"></iframe>',
    '[click me](javascript:window.__xss="link")',
    f'![tracker](http://{EVIL}/pixel.png)',
    f'<a href="http://{EVIL}/">x</a><img src="http://{EVIL}/img.png">',
    '```\n</pre></code><script>window.__xss="fence"</script><img src=y onerror="window.__xss=\'fence\'">',
    '<details open ontoggle="window.__xss=\'details\'">',
    '<style>@import url(http://evil.invalid/x.css);</style>',
]


class _EchoHub(BaseHTTPRequestHandler):
    """A Hub endpoint that lets config.json through and answers 401 to the rest, quoting the caller's token and a
    payload back (what a hostile or misconfigured endpoint could do)."""

    def do_GET(self):
        if self.path.endswith("/config.json") and "gated" not in self.path:
            body = json.dumps({"model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
                               "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2,
                               "vocab_size": 256}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
        else:
            auth = self.headers.get("Authorization", "")
            body = json.dumps({"error": f"Invalid credentials in Authorization header: {auth} "
                                        f"<img src=http://{EVIL}/err.png>"}).encode()
            self.send_response(401)
            self.send_header("Content-Type", "application/json")
            self.send_header("X-Error-Message", f"Invalid credentials: {auth}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_HEAD = do_GET

    def log_message(self, *a):
        pass


@pytest.fixture
def echo_hub():
    server = HTTPServer(("127.0.0.1", 0), _EchoHub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def _scan_workspace(ws) -> list[str]:
    hits = []
    for p in ws.rglob("*"):
        if p.is_file() and p.stat().st_size < 200 * 1024**2:
            try:
                if TOKEN.encode() in p.read_bytes():
                    hits.append(str(p.relative_to(ws)))
            except OSError:
                pass
    return hits


@pytest.mark.browser
@pytest.mark.slow
def test_payloads_stay_text_and_the_token_stays_secret_on_every_tab(workspace, echo_hub, monkeypatch, start_app,
                                                                    browser, tmp_path, tiny_model_dir):
    from playwright.sync_api import expect

    from core import runs
    from core.data.importer import import_records
    from core.deploy.deployments import deploy_container
    from core.evaluate.submit import submit_evaluation
    from core.train.config import TrainConfig
    from core.train.jobs import submit_training

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("HF_ENDPOINT", echo_hub)  # the Hub of the CLI, the workers and the app started below
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    rows = [{"instruction": f"{PAYLOADS[i % len(PAYLOADS)]} row {i}", "output": PAYLOADS[(i + 3) % len(PAYLOADS)]}
            for i in range(24)]
    ds_name = f'<img src=x onerror="window.__xss=\'dsname\'">![t](http://{EVIL}/ds.png)'
    ds = import_records(rows, source="payloads.json", name=ds_name)
    good = submit_training(TrainConfig(name=f'<script>window.__xss="runname"</script>![t](http://{EVIL}/run.png)',
                                       dataset=str(ds.dataset_id), base_model=tiny_model_dir,  # payloads are the point
                                       max_steps=2, batch_size=2, max_length=64, lora_r=4, lora_alpha=8,
                                       save_steps=0, logging_steps=1))
    # through the CLI, whose Hub is the echoing endpoint: the submit-time check passes (config.json answers), the
    # worker's download of the tokenizer gets the 401 that quotes the token
    leaky = tmp_path / "leaky.yaml"
    leaky.write_text(TrainConfig(name="leaky-hub", base_model="acme/leaky", dataset=str(ds.dataset_id), max_steps=2,
                                 chat_template="chatml").to_yaml())
    out = subprocess.run([sys.executable, "-m", "core", "train", "--config", str(leaky), "--json"], cwd=REPO_ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    bad = runs.get_run(json.loads(out.stdout)["id"])
    assert runs.wait_for(good.id, timeout_s=300).status == "succeeded", runs.log_tail(good.id)
    failed = runs.wait_for(bad.id, timeout_s=300)
    assert failed.status == "failed" and failed.error and TOKEN not in failed.error
    print(f"\nthe failing Hub run's error: {failed.error.splitlines()[0][:300]}")
    ev = submit_evaluation({"run_id": good.id, "limit": 2, "max_new_tokens": 12, "split": "validation"})
    assert runs.wait_for(ev.id, timeout_s=300).status == "succeeded", runs.log_tail(ev.id)
    # a failing Hub call at submit: the endpoint's 401 quotes the token; the refusal does not
    gated = tmp_path / "gated.yaml"
    gated.write_text(TrainConfig(base_model="acme/gated-model", dataset=str(ds.dataset_id), max_steps=1).to_yaml())
    refused = subprocess.run([sys.executable, "-m", "core", "train", "--config", str(gated)], cwd=REPO_ROOT,
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "gated or private" in refused.stderr, refused.stderr
    assert TOKEN not in refused.stderr + refused.stdout
    # the container command passes the token by name only
    dry = deploy_container(f"run:{good.id}", "tgi", gpu="a10g", dry_run=True)
    assert TOKEN not in dry["command"] and TOKEN not in json.dumps(dry["args"])

    url = start_app(tmp_path / "app-hostile.log")
    page = browser.new_page(viewport={"width": 1500, "height": 1300})
    dialogs, outside = [], []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.on("request", lambda r: outside.append(r.url) if urlparse(r.url).hostname not in ("127.0.0.1", "localhost")
            and not r.url.startswith(("data:", "blob:")) else None)
    page.goto(url)
    texts = []

    def tab(name):
        page.get_by_role("tab", name=name, exact=True).click()
        page.wait_for_timeout(800)

    def pick(label_or_locator, option_text):
        box = page.get_by_label(label_or_locator, exact=True) if isinstance(label_or_locator, str) \
            else label_or_locator
        box.click()
        page.get_by_role("option", name=option_text).first.click()
        page.wait_for_timeout(1200)

    tab("Data")
    pick(page.locator("#data-dataset input"), "dsname")
    expect(page.locator("#data-detail")).to_contain_text("24", timeout=20_000)
    page.locator("#data-preview-btn").click()
    expect(page.locator("#data-preview")).to_contain_text("row 0", timeout=20_000)
    assert "<script>" in page.locator("#data-preview").inner_text()  # shown as the text it is
    # an upload whose column names and cells are payloads: the Check report shows them as text
    csv_file = tmp_path / "payload.csv"
    csv_file.write_text(f'instruction,output,"<img src=http://{EVIL}/col.png onerror=window.__xss=1>"\n'
                        + "".join(f'"{p.replace(chr(34), chr(39))}","ok","{i}"\n' for i, p in enumerate(PAYLOADS)))
    page.locator("#data-upload input[type=file]").set_input_files(str(csv_file))
    expect(page.locator("#data-report")).to_contain_text("records", timeout=30_000)
    texts.append(page.content())
    page.screenshot(path=str(tmp_path / "hostile-data.png"), full_page=True)

    tab("Train")
    for option in ("leaky-hub", "runname"):
        pick("Selected run", option)
        texts.append(page.content())
    page.screenshot(path=str(tmp_path / "hostile-train.png"), full_page=True)

    tab("Evaluate")
    page.wait_for_timeout(1500)
    pick(page.locator("#eval-selected input"), "runname")
    expect(page.locator("#eval-examples")).to_contain_text("row", timeout=20_000)
    texts.append(page.content())
    page.screenshot(path=str(tmp_path / "hostile-evaluate.png"), full_page=True)

    tab("Playground")
    page.get_by_text("Generation settings").click()
    page.locator("#pg-max-new input").fill("24")  # the payloads echoed as text are the point, not a long answer
    page.locator("#pg-prompt textarea").fill(" ".join(PAYLOADS))
    page.get_by_role("button", name="Send to both").click()
    deadline = time.time() + 120
    while time.time() < deadline and not ("tokens/s" in page.locator("#pg-stats-a").inner_text()
                                           and "tokens/s" in page.locator("#pg-stats-b").inner_text()):
        time.sleep(0.3)
    assert "<script>" in page.locator("#pg-pane-a").inner_text()  # the prompt, echoed as text
    texts.append(page.content())
    page.screenshot(path=str(tmp_path / "hostile-playground.png"), full_page=True)

    for name in ("Deploy", "Estimate"):
        tab(name)
        texts.append(page.content())
    page.wait_for_timeout(1000)
    flag = page.evaluate("() => window.__xss === undefined ? null : String(window.__xss)")
    assert flag is None, f"a payload ran: {flag}"
    assert dialogs == [], dialogs
    assert outside == [], f"requests left for other hosts: {sorted(set(outside))[:5]}"
    assert not any(TOKEN in t for t in texts), "the token is on the page"
    hits = _scan_workspace(workspace)
    assert hits == [], f"the token is in the workspace: {hits}"
