"""A stand-in Docker engine for the registry side of the launch tests: the real engine here (tests/test_container.py)
reaches no image registry, so a pull that streams progress, or one refused by a registry that does not resolve, is
answered here over HTTP — ping, version, image inspect, image pull (``/images/create``), container create / inspect /
start / stop / logs / remove. The docker SDK, its error types and the studio's code run for real.

    python -m tests.fake_docker [--offline] [--port N]     # by hand: DOCKER_HOST=tcp://127.0.0.1:N
"""
from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

API = "1.45"
NO_SUCH_HOST = ('Get "https://ghcr.io/v2/": dial tcp: lookup ghcr.io on 127.0.0.53:53: no such host')


class FakeEngine:
    """``offline``: every pull fails as an engine without a route to the registry answers (HTTP 500);
    else a pull streams ``layers`` layers of ``layer_bytes`` over about ``pull_s`` seconds."""

    def __init__(self, offline: bool = False, layers: int = 3, layer_bytes: int = 400_000_000, pull_s: float = 3.0):
        self.offline, self.layers, self.layer_bytes, self.pull_s = offline, layers, layer_bytes, pull_s
        self.images: set[str] = set()
        self.containers: dict[str, dict] = {}
        self.removed: dict[str, dict] = {}  # what a DELETE took away, with its last status
        self.calls: list[str] = []
        engine = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _send(self, code: int, body=None, ctype="application/json"):
                data = b"" if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Api-Version", API)
                self.end_headers()
                self.wfile.write(data)

            def _route(self, method: str):
                url = urlparse(self.path)
                path = re.sub(r"^/v[0-9.]+", "", url.path)
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                engine.calls.append(f"{method} {path}")
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                if path == "/_ping":
                    return self._send(200, b"OK", "text/plain")
                if path == "/version":
                    return self._send(200, {"ApiVersion": API, "Version": "28.2.2", "MinAPIVersion": "1.24"})
                m = re.fullmatch(r"/images/(.+)/json", path)
                if m and method == "GET":
                    name = m.group(1)
                    if name in engine.images:
                        return self._send(200, {"Id": "sha256:" + "ab" * 32, "RepoTags": [name]})
                    return self._send(404, {"message": f"No such image: {name}"})
                if path == "/images/create" and method == "POST":
                    image = f"{query.get('fromImage')}:{query.get('tag')}"
                    if engine.offline:
                        return self._send(500, {"message": NO_SUCH_HOST})
                    return self._pull(image)
                if path == "/containers/create" and method == "POST":
                    cid = f"{len(engine.containers) + 1:02d}" + "c0ffee" * 10
                    engine.containers[cid] = {"name": query.get("name", "x"), "status": "created"}
                    return self._send(201, {"Id": cid, "Warnings": []})
                m = re.fullmatch(r"/containers/([0-9a-f]+)", path)
                if m and method == "DELETE" and m.group(1) in engine.containers:
                    engine.removed[m.group(1)] = engine.containers.pop(m.group(1))
                    return self._send(204)
                m = re.fullmatch(r"/containers/([0-9a-f]+)/logs", path)
                if m and m.group(1) in engine.containers:  # no output (the multiplexed stream, empty)
                    return self._send(200, b"", "application/vnd.docker.raw-stream")
                m = re.fullmatch(r"/containers/([0-9a-f]+)/(json|start|stop)", path)
                if m and m.group(1) in engine.containers:
                    c = engine.containers[m.group(1)]
                    if m.group(2) == "json":
                        return self._send(200, {"Id": m.group(1), "Name": "/" + c["name"],
                                                "State": {"Status": c["status"]}, "Config": {"Tty": False},
                                                "HostConfig": {}})
                    c["status"] = "running" if m.group(2) == "start" else "exited"
                    return self._send(204)
                return self._send(404, {"message": f"page not found: {method} {path}"})

            def _pull(self, image: str):
                self.send_response(200)  # as the engine streams it: one JSON object per HTTP chunk
                self.send_header("Content-Type", "application/json")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()

                def emit(event):
                    data = (json.dumps(event) + "\r\n").encode()
                    self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                    self.wfile.flush()

                emit({"status": f"Pulling from {image.rsplit(':', 1)[0]}", "id": image.rsplit(":", 1)[1]})
                ids = [f"layer{i}" for i in range(engine.layers)]
                for lid in ids:
                    emit({"status": "Pulling fs layer", "id": lid, "progressDetail": {}})
                steps = 6
                for k in range(1, steps + 1):
                    time.sleep(engine.pull_s / steps)
                    for lid in ids:
                        emit({"status": "Downloading", "id": lid, "progressDetail": {
                            "current": engine.layer_bytes * k // steps, "total": engine.layer_bytes}})
                for lid in ids:
                    emit({"status": "Download complete", "id": lid, "progressDetail": {}})
                    emit({"status": "Pull complete", "id": lid, "progressDetail": {}})
                emit({"status": f"Status: Downloaded newer image for {image}"})
                engine.images.add(image)
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()

            def do_GET(self):
                self._route("GET")

            def do_POST(self):
                self._route("POST")

            def do_HEAD(self):
                self._route("HEAD")

            def do_DELETE(self):
                self._route("DELETE")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.address = f"tcp://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeEngine:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--offline", action="store_true")
    ap.add_argument("--pull-s", type=float, default=30.0)
    args = ap.parse_args()
    with FakeEngine(offline=args.offline, pull_s=args.pull_s) as eng:
        print(f"DOCKER_HOST={eng.address}", flush=True)
        while True:
            time.sleep(3600)
