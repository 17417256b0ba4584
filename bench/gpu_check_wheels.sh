#!/usr/bin/env bash
# The wheels bench/gpu_check.py needs on a lent GPU machine, into .whl/ (ignored by git), and their size.
#
#   bash bench/gpu_check_wheels.sh          # then: the device tool's run with carry [".whl"] (see bench/gpu_check.py)
#
# The device image (Python 3.12, torch 2.11+cu130) has torch, transformers 5.17, peft, accelerate 1.15, numpy, pandas,
# pyarrow, tokenizers, safetensors, huggingface_hub 1.x, xxhash, psutil, pyyaml, jinja2 — not trl, datasets,
# bitsandbytes, nor what core.runs / TrainConfig import (sqlmodel, SQLAlchemy, pydantic). What travels, at the versions
# of this project's .venv (its pins): trl, datasets (+ dill, multiprocess), bitsandbytes, transformers and peft (the
# pinned ones, not the image's), sqlmodel, SQLAlchemy, greenlet, pydantic, pydantic_core, annotated-types,
# typing-inspection, regex (transformers 5.23 needs a recent one). No model weights: the check builds its models.
# bitsandbytes ships one native library per CUDA/ROCm version (43 MB): the copy that travels keeps the CUDA 13 ones
# (BNB_CUDA, default "130 132": the image's torch is cu130) and the CPU one. Everything that travels (the tracked tree
# + .whl) must fit 64 MiB; the script says how much is left and exits 1 when it does not fit.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$PWD/.venv/bin/python}
DEST=.whl
BNB_CUDA=${BNB_CUDA:-"130 132"}
LIMIT=$((64 * 1024 * 1024))
NAMES="trl datasets dill multiprocess bitsandbytes transformers peft sqlmodel SQLAlchemy greenlet pydantic
pydantic_core annotated-types typing-inspection regex"

mkdir -p "$DEST"  # ignored by .gitignore; where a checkout does not ignore it, the local exclude list does
git check-ignore -q "$DEST/" || echo "/$DEST/" >>"$(git rev-parse --git-path info/exclude)"
pins=()
for n in $NAMES; do
  pins+=("$n==$("$PY" -c "import sys; from importlib.metadata import version; print(version(sys.argv[1]))" "$n")")
done
rm -rf "$DEST" && mkdir -p "$DEST"
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
  -d "$DEST" "${pins[@]}" 2> >(grep -v "is ignored: it is neither" >&2)

# bitsandbytes: keep the CUDA 13 and CPU libraries, drop the other CUDA / ROCm / XPU builds (pip installs a wheel
# whose RECORD lists files it no longer holds; nothing reads them)
bnb=$(ls "$DEST"/bitsandbytes-*.whl)
tmp=$(mktemp -d)
(cd "$tmp" && "$PY" -m zipfile -e "$OLDPWD/$bnb" .)
keep=" cpu $(for v in $BNB_CUDA; do printf 'cuda%s ' "$v"; done)"
for lib in "$tmp"/bitsandbytes/libbitsandbytes_*.so; do
  v=$(basename "$lib" .so); v=${v#libbitsandbytes_}
  [[ "$keep" == *" $v "* ]] || rm -f "$lib"
done
rm -f "$bnb"
(cd "$tmp" && "$PY" -c "import os, sys, zipfile
with zipfile.ZipFile(sys.argv[1], 'w', zipfile.ZIP_DEFLATED) as z:
    for root, _dirs, files in os.walk('.'):
        for f in sorted(files):
            p = os.path.join(root, f)[2:]
            z.write(p, p)" "$OLDPWD/$bnb")
rm -rf "$tmp"

wheels=$(du -cb "$DEST"/*.whl | tail -1 | cut -f1)
tree=$(git ls-files -z | du -cb --files0-from=- 2>/dev/null | tail -1 | cut -f1)
untracked=$(git ls-files -z --others --exclude-standard | du -cb --files0-from=- 2>/dev/null | tail -1 | cut -f1 || true)
total=$((wheels + tree + ${untracked:-0}))
ls -1 "$DEST"
printf 'wheels %.1f MiB + tracked tree %.1f MiB + untracked %.1f MiB = %.1f MiB of 64 MiB\n' \
  "$(echo "$wheels / 1048576" | bc -l)" "$(echo "$tree / 1048576" | bc -l)" \
  "$(echo "${untracked:-0} / 1048576" | bc -l)" "$(echo "$total / 1048576" | bc -l)"
if [ "$total" -gt "$LIMIT" ]; then
  echo "too big to travel: carry less" >&2
  exit 1
fi
