"""The page's own API, walked (issue 25): a shared studio (accounts, FTS_DATA_ROOTS) started under an audit hook
that records any file opened or listed under a canary folder. Every endpoint that ``gradio_client`` describes gets,
in each parameter that can carry text, every spelling of a server location the attack set has — so a field added
later is tried without anyone listing it. Then the sign-in and upload doors, over HTTP, on the same app."""
from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import CancelledError, ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import REPO, SHARED_MODELS, launch_app, stop_app

pytestmark = pytest.mark.slow
TEXT_COMPONENTS = {"Textbox", "Dropdown", "Radio", "Code", "Textarea", "Markdown", "Checkboxgroup"}
CLOSED = ("not in the list of choices", "not in the choices")
SECRET, TEMPLATE = "CANARY-SECRET-5b1d", "CANARY-TEMPLATE-77c2"


def _users(ws: Path, *names: str) -> None:
    for name in names:
        subprocess.run([sys.executable, "-m", "core", "users", "add", name, "--password-stdin"], cwd=REPO,
                       input=f"{name}-password\n", text=True, check=True, capture_output=True,
                       env={**os.environ, "FTS_WORKSPACE": str(ws)})


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    """(url, paths): the audited shared studio, with one dataset the host imported."""
    t = tmp_path_factory.mktemp("walk")
    canary = t / f"canary-{secrets.token_hex(4)}"
    (canary / "model").mkdir(parents=True)
    (canary / "model" / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 8,
                                                              "num_hidden_layers": 1, "num_attention_heads": 1,
                                                              "vocab_size": 10, "intermediate_size": 16}))
    (canary / "model" / "tokenizer_config.json").write_text(json.dumps({"chat_template": f"{{{{ '{TEMPLATE}' }}}}"}))
    (canary / "secret.jsonl").write_text(json.dumps({"instruction": "q", "output": SECRET}) + "\n")
    (canary / "data").mkdir()
    (canary / "data" / "README.md").write_text(f"---\nconfigs:\n- config_name: default\n  data_files: "
                                               f"{canary / 'secret.jsonl'}\n---\n")
    roots = t / "roots"
    (roots / "adapter").mkdir(parents=True)
    (roots / "adapter" / "adapter_config.json").write_text(json.dumps({
        "base_model_name_or_path": str(canary / "model"), "peft_type": "LORA", "r": 4}))
    (roots / "adapter" / "adapter_model.safetensors").write_bytes(b"")
    ws = t / "ws"
    ws.mkdir()
    env = {**os.environ, "FTS_WORKSPACE": str(ws), "FTS_MODELS_DIR": str(SHARED_MODELS), "HOME": str(t)}
    env.pop("DATABASE_URL", None)
    _users(ws, "walker", "bob", "carol", "dave", "erin")
    subprocess.run([sys.executable, "-m", "core", "data", "import", str(REPO / "tests/fixtures/alpaca_en_demo.json")],
                   cwd=REPO, env=env, check=True, capture_output=True)
    proc, url = launch_app(t / "app.log", script="tests/audited_app.py", env=env, any_answer=True,
                           FTS_DATA_ROOTS=str(roots), GRADIO_TEMP_DIR=str(t / "gradio"), FTS_TEST_CANARY=str(canary),
                           FTS_TEST_CANARY_LOG=str(t / "hits.log"), FTS_LOGIN_FAILURES_ACCOUNT="3", HF_HUB_OFFLINE="1")
    yield url, {"canary": canary, "roots": roots, "hits": t / "hits.log", "log": t / "app.log", "ws": ws, "home": t}
    stop_app(proc)


def _attacks(p: dict) -> dict[str, str]:
    """One value per way into the resolver (its spellings — relative, ``~``, ``file:`` … — are tried one by one in
    tests/test_shared_studio.py; here the point is that every field reaches it)."""
    c = p["canary"]
    return {"folder": str(c / "model"), "missing": str(c / "no-such-model"), "hub-prefix": f"hub:{c / 'data'}",
            "file-url": f"file://{c / 'secret.jsonl'}", "adapter-naming-it": str(p["roots"] / "adapter")}


# what the walk sets where a default would only cost time: a location in a prompt is text to the model, and the
# Playground's two models writing 256 tokens for each of its calls was most of the walk's minute
WALK_VALUES = {"Max new tokens": 1}


def _default(param: dict):
    if param.get("label") in WALK_VALUES:
        return WALK_VALUES[param["label"]]
    if param.get("parameter_has_default"):
        return param.get("parameter_default")
    return param.get("example_input")


def test_every_endpoint_refuses_every_spelling_of_a_server_location(studio):
    from gradio_client import Client

    url, p = studio
    client = Client(url, auth=("walker", "walker-password"), verbose=False)
    api = client.view_api(return_format="dict", print_info=False)
    endpoints = {**api["named_endpoints"], **api.get("unnamed_endpoints", {})}
    attacks = _attacks(p)
    results: dict[tuple, str] = {}

    # one client per walking thread: gradio_client's shared event stream is not safe for concurrent submits from
    # threads (under load a call came back as a bare client-side CancelledError, never an answer of the page's)
    local = threading.local()

    def call(name: str, args: list) -> str:
        if not hasattr(local, "client"):
            local.client = Client(url, auth=("walker", "walker-password"), verbose=False)
        answer = ""
        for _ in range(3):
            try:
                job = local.client.submit(*args, api_name=name)
                return "OK " + json.dumps(job.result(timeout=120), default=str)
            except CancelledError:  # the client's own bookkeeping, not the handler's answer: ask again
                answer = f"ERR CancelledError (the client gave up 3 times on {name})"
            except Exception as exc:  # noqa: BLE001 - an error answer is an answer
                return f"ERR {type(exc).__name__}: {exc}"
        return answer

    tried_params, closed = 0, 0

    def walk_param(name: str, params: list, i: int) -> None:
        nonlocal tried_params, closed
        args = [_default(q) for q in params]
        args[i] = "zz-open-probe"
        probe = call(name, args)
        if any(c in probe for c in CLOSED):
            closed += 1
            return  # a closed list of choices: Gradio refuses any other text before the handler runs
        tried_params += 1
        for key, value in attacks.items():
            args[i] = value
            results[(name, params[i].get("label") or params[i].get("parameter_name"), key)] = call(name, args)

    # one handler bound to several events appears as name, name_1, name_2 …: walk it once
    distinct: dict[tuple, str] = {}
    for name, ep in endpoints.items():
        labels = tuple((q.get("label"), q.get("component")) for q in ep["parameters"])
        distinct.setdefault((re.sub(r"_\d+$", "", name), labels), name)
    work = [(name, endpoints[name]["parameters"], i) for name in distinct.values()
            for i, q in enumerate(endpoints[name]["parameters"]) if q.get("component") in TEXT_COMPONENTS]
    # a file parameter given a server path as if it were an upload (a script sends what it likes; no client upload)
    _, _, cookie = _login(url, "walker", "walker-password")
    for name in distinct.values():
        params = endpoints[name]["parameters"]
        for i, q in enumerate(params):
            if q.get("component") != "File":
                continue
            args = [_default(x) for x in params]
            args[i] = {"path": attacks["file-url"].removeprefix("file://"), "meta": {"_type": "gradio.FileData"},
                       "orig_name": "x.jsonl"}
            results[(name, q.get("label"), "file-param")] = _raw_call(url, cookie, name.lstrip("/"), args)
    started = time.time()
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda w: walk_param(*w), work))
    took = time.time() - started
    print(f"walked {len(endpoints)} endpoints ({len(distinct)} distinct handlers), {tried_params} open text "
          f"parameters ({closed} closed lists), {len(results)} attack calls in {took:.0f} s")
    assert len(endpoints) > 50 and tried_params > 20  # the walk reached the page's fields
    hits = p["hits"].read_text() if p["hits"].exists() else ""
    assert hits == "", f"files under the canary were opened or listed:\n{hits[:3000]}"
    problems = []
    for key, answer in results.items():
        if SECRET in answer or TEMPLATE in answer:
            problems.append(f"{key}: canary content in the answer")
        if "Traceback" in answer or re.search(r'File "/[^"]+", line \d+', answer):
            problems.append(f"{key}: raw exception text: {answer[:300]}")
    # nothing about the disk is revealed: an existing folder and a missing one get the same answer
    for (name, label, kind), answer in results.items():
        if kind != "folder":
            continue
        twin = results.get((name, label, "missing"))
        # (numbers aside: the other side of a comparison may report its own timings)
        a = re.sub(r"\d+(\.\d+)?", "#", answer.replace(attacks["folder"], "<P>"))
        b = re.sub(r"\d+(\.\d+)?", "#", (twin or "").replace(attacks["missing"], "<P>"))
        if a != b:
            problems.append(f"{(name, label)}: existing {a[:200]!r} vs missing {b[:200]!r}")
    assert not problems, "\n".join(problems[:30])
    log = p["log"].read_text()
    assert SECRET not in log and TEMPLATE not in log


def _login(url: str, name: str, password: str) -> tuple[int, dict, str]:
    data = urllib.parse.urlencode({"username": name, "password": password}).encode()
    req = urllib.request.Request(url + "login", data=data, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            cookie = "; ".join(h.split(";", 1)[0] for h in r.headers.get_all("set-cookie") or [])
            return r.status, dict(r.headers), cookie
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), ""


def _get(url: str, cookie: str) -> tuple[int, str]:
    req = urllib.request.Request(url, headers={"Cookie": cookie})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def test_sign_in_is_throttled_per_account_and_sessions_end_with_their_account(studio):
    url, p = studio
    statuses = [_login(url, "erin", "wrong-password")[0] for _ in range(3)]
    assert statuses == [400, 400, 400]
    status, headers, _ = _login(url, "erin", "erin-password")  # even the right password waits now
    assert status == 429 and int(headers.get("retry-after") or headers.get("Retry-After")) >= 1
    assert _login(url, "bob", "bob-password")[0] == 200  # another account is not held up
    time.sleep(int(headers.get("retry-after") or headers.get("Retry-After")) + 0.5)
    assert _login(url, "erin", "erin-password")[0] == 200
    # a removed account's open session ends at its next request; so does one whose password changed
    _, _, carol = _login(url, "carol", "carol-password")
    _, _, dave = _login(url, "dave", "dave-password")
    assert _get(url + "gradio_api/user", carol) == (200, '"carol"')
    env = {**os.environ, "FTS_WORKSPACE": str(p["ws"])}
    subprocess.run([sys.executable, "-m", "core", "users", "remove", "carol"], cwd=REPO, env=env, check=True,
                   capture_output=True)
    subprocess.run([sys.executable, "-m", "core", "users", "add", "dave", "--password-stdin"], cwd=REPO, env=env,
                   input="a-new-password\n", text=True, check=True, capture_output=True)
    for cookie in (carol, dave):
        assert _get(url + "gradio_api/user", cookie)[1] in ("null", "")
        assert _get(url + "gradio_api/login_check", cookie)[0] == 401


def _upload(url: str, cookie: str, name: str, body: bytes) -> str:
    boundary = secrets.token_hex(8)
    data = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{name}\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode() + body + f"\r\n--{boundary}--\r\n".encode()
    req = urllib.request.Request(url + "gradio_api/upload", data=data, method="POST",
                                 headers={"Content-Type": f"multipart/form-data; boundary={boundary}",
                                          "Cookie": cookie})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())[0]


def _raw_call(url: str, cookie: str, api_name: str, data: list) -> str:
    """An API call as a script would send it (no client-side upload of the files it names)."""
    req = urllib.request.Request(url + f"gradio_api/call/{api_name}", data=json.dumps({"data": data}).encode(),
                                 method="POST", headers={"Content-Type": "application/json", "Cookie": cookie})
    with urllib.request.urlopen(req, timeout=30) as r:
        event_id = json.loads(r.read())["event_id"]
    return _get(url + f"gradio_api/call/{api_name}/{event_id}", cookie)[1]


def test_an_upload_is_served_to_and_imported_by_its_uploader_only(studio):
    url, _ = studio
    _, _, bob = _login(url, "bob", "bob-password")
    _, _, walker = _login(url, "walker", "walker-password")
    rows = json.dumps([{"instruction": "bob's question", "output": "BOBS-PRIVATE-ANSWER"}]).encode()
    path = _upload(url, bob, "bob.json", rows)
    assert _get(url + "gradio_api/file=" + path, bob)[0] == 200
    status, body = _get(url + "gradio_api/file=" + path, walker)
    assert status == 403 and "BOBS-PRIVATE-ANSWER" not in body
    assert _get(url + "gradio_api/file/" + path.lstrip("/"), walker)[0] == 403
    file_data = {"path": path, "meta": {"_type": "gradio.FileData"}, "orig_name": "bob.json"}
    frame = {"headers": ["a", "b"], "data": [["", ""]], "metadata": None}
    args = [file_data, "", "auto", "", frame, frame, [], 0.0, 0.0, 0, "default", 256]
    out = _raw_call(url, walker, "run_import", args)
    assert "not one of your uploads" in out and "BOBS-PRIVATE-ANSWER" not in out
    out = _raw_call(url, bob, "run_import", args)
    assert "imported as dataset" in out, out[-500:]
