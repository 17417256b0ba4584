#!/usr/bin/env bash
# `make image`: build the studio's image on this machine.
#   scripts/build-image.sh [TAG]        (default finetune-studio:latest)
# The base is python:3.11-slim when a registry gives it, else a Debian bookworm base made here once
# (scripts/docker-engine.sh). Where this machine keeps wheels on disk (pip's find-links / file:// indexes, e.g.
# /opt/wheels and /opt/pypi*/simple), they are served on a loopback port for the build's pip, so the build needs no
# network beyond it; without them pip uses PyPI. The build runs with the host's network (dockerd has no bridge).
# Prints the build time and the image's size.
set -euo pipefail
cd "$(dirname "$0")/.."
TAG=${1:-${FTS_IMAGE:-finetune-studio:latest}}
base=$(scripts/docker-engine.sh | tail -1)

args=(--network host --build-arg "BASE=$base" -t "$TAG")
mirror_root=${FTS_WHEEL_MIRROR:-/opt}
server_pid=
# the CA bundle pip uses here (PIP_CERT, or pip's config): a proxy that re-signs TLS needs it inside the build too
cert=${PIP_CERT:-$(pip3 config get global.cert 2>/dev/null || true)}
[[ -f "$cert" ]] || cert=
if [[ -d "$mirror_root/wheels" || -d "$mirror_root/pypi/simple" || -n "$cert" ]]; then
  portfile=$(mktemp)
  python3 - "$mirror_root" "$portfile" "$cert" "${FTS_MIRROR_PORT:-8798}" <<'PY' &
import http.server, sys
root, portfile, cert, port = sys.argv[1:5]

class Handler(http.server.SimpleHTTPRequestHandler):
    def __init__(self, *a, **k):
        super().__init__(*a, directory=root, **k)

    def translate_path(self, path):  # /ca.pem: the CA bundle pip trusts here (a TLS-intercepting proxy's included)
        return cert if cert and path.split("?")[0] == "/ca.pem" else super().translate_path(path)

    def log_message(self, *a):
        pass

try:  # a fixed port keeps the build args, so docker's layer cache, the same from one build to the next
    server = http.server.ThreadingHTTPServer(("127.0.0.1", int(port)), Handler)
except OSError:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
open(portfile, "w").write(str(server.server_address[1]))
server.serve_forever()
PY
  server_pid=$!
  trap '[[ -n "$server_pid" ]] && kill "$server_pid" 2>/dev/null; rm -f "$portfile"' EXIT
  for _ in $(seq 50); do [[ -s "$portfile" ]] && break; sleep 0.1; done
  url="http://127.0.0.1:$(cat "$portfile")"
  indexes=()
  for d in "$mirror_root"/pypi*/simple; do [[ -d "$d" ]] && indexes+=("$url/${d#"$mirror_root"/}"); done
  [[ -d "$mirror_root/wheels" ]] && args+=(--build-arg "PIP_FIND_LINKS=$url/wheels/")
  if ((${#indexes[@]})); then
    args+=(--build-arg "PIP_EXTRA_INDEX_URL=${indexes[*]}" --build-arg "TORCH_INDEX=${indexes[0]}")
  fi
  args+=(--build-arg "PIP_TRUSTED_HOST=127.0.0.1")
  [[ -n "$cert" ]] && args+=(--build-arg "PIP_CERT_URL=$url/ca.pem")
  echo ">> pip inside the build reads the wheels on this machine through $url" >&2
fi
echo ">> docker build (base $base) -> $TAG" >&2
start=$(date +%s)
docker build "${args[@]}" . >&2
size=$(docker image inspect -f '{{.Size}}' "$TAG")
echo ">> built $TAG in $(( $(date +%s) - start )) s, $(( size / 1000000 )) MB" >&2
