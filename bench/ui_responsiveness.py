"""Does the dashboard stay responsive while a worker trains on the same machine?

    .venv/bin/python bench/ui_responsiveness.py [--steps 15]

Starts the real app, then times page requests (GET /config, the page itself) idle and while a LoRA run of the
embedded model trains (worker at its default priority, nice 10). Prints median/p95 latency and the ratio.
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sample(url: str, seconds: float) -> list[float]:
    out = []
    end = time.time() + seconds
    while time.time() < end:
        t = time.perf_counter()
        with urllib.request.urlopen(url, timeout=30) as r:
            r.read()
        out.append(time.perf_counter() - t)
        time.sleep(0.2)
    return out


def summary(xs: list[float]) -> str:
    xs = sorted(xs)
    return (f"median {statistics.median(xs) * 1000:.0f} ms, "
            f"p95 {xs[int(0.95 * (len(xs) - 1))] * 1000:.0f} ms (n={len(xs)})")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=30)
    args = ap.parse_args()
    ws = Path(tempfile.mkdtemp(prefix="fts-ui-bench-"))
    os.environ["FTS_WORKSPACE"] = str(ws)
    os.environ.setdefault("FTS_MODELS_DIR", str(REPO / "workspace" / "models"))
    port = free_port()
    app = subprocess.Popen([sys.executable, "app.py"], cwd=REPO, env=dict(os.environ, PORT=str(port)),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}/"
    try:
        for _ in range(240):
            try:
                urllib.request.urlopen(base, timeout=2).read()
                break
            except OSError:
                time.sleep(0.5)
        idle = sample(base + "config", args.seconds / 2) + sample(base, args.seconds / 2)
        from core import runs as jobs
        from core.train.config import TrainConfig
        from core.train.jobs import submit_training

        data = REPO / "tests" / "fixtures" / "alpaca_en_demo.json"
        run = submit_training(TrainConfig(dataset=str(data), max_steps=1000, batch_size=4, max_length=512,
                                          save_steps=0))
        while jobs.get_run(run.id).step < 1:
            time.sleep(0.5)
        busy = sample(base + "config", args.seconds / 2) + sample(base, args.seconds / 2)
        jobs.stop(run.id, timeout_s=60)
        print(f"idle:     {summary(idle)}")
        print(f"training: {summary(busy)}")
        print(f"ratio (median training / idle): {statistics.median(busy) / statistics.median(idle):.2f}x")
    finally:
        app.terminate()
        app.wait(timeout=30)


if __name__ == "__main__":
    main()
