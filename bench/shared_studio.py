"""What a shared studio costs its other users when one user misbehaves (issue 25), measured on the real app.

    .venv/bin/python bench/shared_studio.py [--repo DIR] [--json]

Starts ``app.py`` from ``--repo`` (default: this checkout; point it at a worktree of an older commit for the before
figures) as a shared studio with named users, and measures, in one run:

* **expanding file** — a 3 KB-class Parquet holding 1,000,000 rows, uploaded and imported by alice: seconds until the
  page answers and the dashboard process's RSS growth (goal: refused in seconds, growth under 100 MB);
* **sign-in burst** — 200 wrong passwords for one account from 8 threads, while bob's light request (the Evaluate
  tab's list refresh) is timed: bob's p95 against idle (goal ≤ 2×);
* **generation burst** — alice sends 50 Playground requests at once; bob's light request p95 against idle (goal
  ≤ 2×), and how long bob's own Playground answer takes.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(repo: Path, ws: Path, port: int, log: Path) -> subprocess.Popen:
    env = {**os.environ, "FTS_WORKSPACE": str(ws), "PORT": str(port), "GRADIO_SERVER_NAME": "127.0.0.1",
           "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1",
           "FTS_MODELS_DIR": str(HERE / "workspace" / "models"), "PYTHONPATH": str(repo)}
    env.pop("DATABASE_URL", None)
    for name in ("alice", "bob", "erin"):
        subprocess.run([sys.executable, "-m", "core", "users", "add", name, "--password-stdin"], cwd=repo, env=env,
                       input=f"{name}-password\n", text=True, check=True, capture_output=True)
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=repo, env=env, stdout=open(log, "w"),
                            stderr=subprocess.STDOUT)
    deadline = time.time() + 240
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)
            return proc
        except urllib.error.HTTPError:
            return proc
        except OSError:
            time.sleep(0.5)
    raise RuntimeError("the app did not start: " + log.read_text()[-2000:])


def login(url: str, name: str, password: str) -> int:
    data = urllib.parse.urlencode({"username": name, "password": password}).encode()
    try:
        with urllib.request.urlopen(urllib.request.Request(url + "login", data=data, method="POST"), timeout=120) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def p95(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(0.95 * (len(xs) - 1))))]


def endpoint_with(client, labels: tuple[str, ...]) -> tuple[str, list]:
    """The API name of the first endpoint whose parameters start with these labels (names shift as tabs gain events),
    and default values for its parameters."""
    api = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    for name, ep in api.items():
        if tuple(p.get("label") for p in ep["parameters"])[:len(labels)] == labels:
            return name, [p.get("parameter_default") if p.get("parameter_has_default") else None
                          for p in ep["parameters"]]
    raise LookupError(f"no endpoint with parameters {labels}")


def light_latencies(client, n: int, stop: threading.Event | None = None) -> list[float]:
    """bob's light request: the Evaluate tab's lists (two dropdowns, a table), through the page's queue."""
    out = []
    name, args = endpoint_with(client, ("Training run", "Evaluation"))
    for _ in range(n):
        if stop is not None and stop.is_set():
            break
        t0 = time.perf_counter()
        client.predict(*args, api_name=name)
        out.append(time.perf_counter() - t0)
        time.sleep(0.05)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repo", default=str(HERE))
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    repo = Path(args.repo).resolve()
    import psutil
    from gradio_client import Client, handle_file

    results: dict = {"repo": str(repo)}
    tmp = Path(tempfile.mkdtemp(prefix="fts-bench-shared-"))
    port = _free_port()
    url = f"http://127.0.0.1:{port}/"
    proc = start_app(repo, tmp / "ws", port, tmp / "app.log")
    app = psutil.Process(proc.pid)
    try:
        alice = Client(url, auth=("alice", "alice-password"), verbose=False)
        bob = Client(url, auth=("bob", "bob-password"), verbose=False)
        light_latencies(bob, 5)  # warm up
        idle = light_latencies(bob, 40)
        results["light_request_idle_p95_s"] = round(p95(idle), 3)

        # ---- sign-in burst
        stop = threading.Event()
        during: list[float] = []
        t = threading.Thread(target=lambda: during.extend(light_latencies(bob, 10_000, stop)))
        t.start()
        t0 = time.perf_counter()
        with ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(lambda i: login(url, "erin", f"wrong-{i}"), range(200)))
        burst_s = time.perf_counter() - t0
        stop.set()
        t.join()
        results["signin_burst"] = {"attempts": 200, "seconds": round(burst_s, 1),
                                   "answers": {str(c): codes.count(c) for c in sorted(set(codes))},
                                   "bob_p95_s": round(p95(during), 3),
                                   "bob_p95_vs_idle": round(p95(during) / p95(idle), 2)}

        # ---- expanding file
        import pyarrow as pa
        import pyarrow.parquet as pq

        bomb = tmp / "bomb.parquet"
        pq.write_table(pa.table({"text": pa.array(["x"] * 1_000_000)}), bomb, compression="zstd")
        rss0 = app.memory_info().rss + sum(c.memory_info().rss for c in app.children(recursive=True)
                                           if "app.py" in " ".join(c.cmdline()))
        peak = [rss0]
        watching = threading.Event()

        def watch():
            while not watching.is_set():
                try:
                    peak.append(app.memory_info().rss)
                except psutil.Error:
                    break
                time.sleep(0.1)

        w = threading.Thread(target=watch)
        w.start()
        frame = {"headers": ["a", "b"], "data": [["", ""]], "metadata": None}
        t0 = time.perf_counter()
        job = alice.submit(handle_file(str(bomb)), "", "auto", "", frame, frame, [], 0.0, 0.0, 0, "default", 256,
                           api_name="/run_import")
        try:
            answer = str(job.result(timeout=180)[0])
        except Exception as exc:  # noqa: BLE001 - a timeout or an error is the figure
            answer = f"{type(exc).__name__}: {exc}"
        took = time.perf_counter() - t0
        watching.set()
        w.join()
        results["expanding_parquet"] = {"file_bytes": bomb.stat().st_size, "rows": 1_000_000,
                                        "seconds_to_answer": round(took, 2),
                                        "dashboard_rss_growth_mb": round((max(peak) - peak[0]) / 1024**2, 1),
                                        "answer": answer[:160]}

        # ---- generation burst
        stop = threading.Event()
        during = []
        t = threading.Thread(target=lambda: during.extend(light_latencies(bob, 10_000, stop)))
        t.start()
        jobs = [alice.submit("default", "default", f"Say {i}.", "", 0.0, 1.0, 32, 0, False, False, None, None,
                             api_name="/respond") for i in range(50)]
        time.sleep(1.0)
        t0 = time.perf_counter()
        mine = bob.submit("default", "default", "Hello!", "", 0.0, 1.0, 32, 0, False, False, None, None,
                          api_name="/respond")
        try:
            mine.result(timeout=600)
        except Exception as exc:  # noqa: BLE001
            results["bob_generation_error"] = str(exc)[:200]
        bob_answer_s = time.perf_counter() - t0
        done = turned_away = 0
        for j in jobs:
            try:
                out = j.result(timeout=600)
            except Exception:  # noqa: BLE001, S112 - an error is neither answered nor turned away
                continue
            if "already have answers" in str(out[-1]):
                turned_away += 1
            else:
                done += 1
        stop.set()
        t.join()
        results["generation_burst"] = {"alice_requests": 50, "alice_answered": done, "alice_turned_away": turned_away,
                                       "bob_answer_s": round(bob_answer_s, 1), "bob_p95_s": round(p95(during), 3),
                                       "bob_p95_vs_idle": round(p95(during) / p95(idle), 2)}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    print(json.dumps(results, indent=None if args.json else 2))


if __name__ == "__main__":
    main()
