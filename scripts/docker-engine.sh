#!/usr/bin/env bash
# A Docker engine for the image and container tests, and the base image to build the studio's image from.
#   scripts/docker-engine.sh          an engine answering (Debian's docker.io installed and dockerd started when
#                                     missing and we are root), then the base image: python:3.11-slim when a registry
#                                     gives it, else fts-base:bookworm made once here (debootstrap, ~2 min; cached).
#                                     Prints the base image's name on its last line.
# dockerd is started with no bridge and no iptables rules: containers get the host's network only (the studio's tests
# run them with --network host on loopback ports); its log is /var/log/fts-dockerd.log.
set -euo pipefail
LOCAL_BASE=${FTS_LOCAL_BASE:-fts-base:bookworm}
WORLD_BASE=python:3.11-slim
root() { [[ $(id -u) == 0 ]]; }

if ! command -v dockerd >/dev/null 2>&1 && ! docker info >/dev/null 2>&1; then
  if root && command -v apt-get >/dev/null 2>&1; then
    echo ">> installing Debian docker.io (the engine for the image and container tests)" >&2
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io >/dev/null
  else
    echo ">> no Docker engine and cannot apt-get docker.io: the image and container tests will be skipped" >&2
    exit 1
  fi
fi
if ! docker info >/dev/null 2>&1; then
  if ! root; then
    echo ">> the Docker engine does not answer and we are not root to start it (start dockerd)" >&2
    exit 1
  fi
  echo ">> starting dockerd (--bridge=none --iptables=false: host networking only)" >&2
  setsid dockerd --bridge=none --iptables=false --ip-forward=false --ip-masq=false \
    >>/var/log/fts-dockerd.log 2>&1 < /dev/null &
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
  docker info >/dev/null 2>&1 || { echo ">> dockerd did not answer in 30 s (see /var/log/fts-dockerd.log)" >&2; exit 1; }
fi

if docker image inspect "$WORLD_BASE" >/dev/null 2>&1; then echo "$WORLD_BASE"; exit 0; fi
if docker image inspect "$LOCAL_BASE" >/dev/null 2>&1; then echo "$LOCAL_BASE"; exit 0; fi
if [[ "${FTS_TRY_PULL:-1}" == 1 ]] && timeout 60 docker pull -q "$WORLD_BASE" >/dev/null 2>&1; then
  echo "$WORLD_BASE"; exit 0
fi
# no registry answers: a Debian bookworm base (its python3 is 3.11) from the Debian mirror apt already uses
root || { echo ">> making the base image needs root (debootstrap)" >&2; exit 1; }
command -v debootstrap >/dev/null 2>&1 || {
  apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null; }
mirror=$(grep -rhoE 'https?://[^ ]+/debian/?( |$)' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null \
         | head -1 | tr -d ' ' || true)
mirror=${mirror:-http://deb.debian.org/debian}
dir=$(mktemp -d /var/tmp/fts-base.XXXXXX)
trap 'rm -rf "$dir"' EXIT
echo ">> no registry answers: making $LOCAL_BASE with debootstrap from $mirror (~2 min, once)" >&2
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$dir" "$mirror" \
  >/var/log/fts-debootstrap.log 2>&1 || { echo ">> debootstrap failed (see /var/log/fts-debootstrap.log)" >&2; exit 1; }
rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/* "$dir"/usr/share/doc/* "$dir"/usr/share/man/*
tar -C "$dir" -c . | docker import -c 'ENV LANG=C.UTF-8' -c 'CMD ["python3"]' - "$LOCAL_BASE" >/dev/null
echo "$LOCAL_BASE"
