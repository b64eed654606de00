#!/usr/bin/env bash
# Rehearse the two device calls here, on the CPU, with the GPU image's Python packages:
# a venv holding the versions the device README lists for that image (transformers,
# tokenizers, safetensors, accelerate, huggingface_hub, numpy 2), none of this project's
# own pins, and a copy of the tree as a call ships it (tracked + untracked files, .gpu/).
# A version drift that breaks the campaign then shows here, not in the lease.
#   bash build/gpu/prepare.sh && bash build/gpu/simulate.sh [campaign args]
# Default campaign args: a 4-sentence run of every job (about 5 min on 2 cores).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT"
[ -d .gpu/a ] && [ -d .gpu/b ] || { echo "run build/gpu/prepare.sh first" >&2; exit 2; }
WORK="${SIM_DIR:-/tmp/padellm-gpu-sim}"
VENV="${SIM_VENV:-$WORK/venv}"
PY="${PYTHON:-python3.11}"
# NOTE: the image's versions (device KINDS.md, 2026-11); torch stays the CPU build on this
# disk (the image has 2.11.0+cu130), and numpy 2.5 needs Python 3.12, so 3.11 gets 2.4.
PINS=(transformers==5.17.0 tokenizers==0.23.2 safetensors==0.8.0 accelerate==1.15.0
      huggingface_hub==1.33.0 peft tqdm rich matplotlib)
if [ ! -x "$VENV/bin/python3" ]; then
  "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install -q torch==2.13.0
  numpy=$("$VENV/bin/python3" -c 'import sys; print("numpy==2.5.2" if sys.version_info >= (3, 12) else "numpy==2.4.6")')
  "$VENV/bin/pip" install -q "$numpy" "${PINS[@]}"
fi
"$VENV/bin/python3" -c 'import numpy, torch, transformers, peft; print("stack:", "numpy", numpy.__version__, "torch", torch.__version__, "transformers", transformers.__version__, "peft", peft.__version__)'
rm -rf "$WORK/tree" "$WORK/stash" "$WORK/out" "$WORK/site"
mkdir -p "$WORK/tree"
git ls-files -z -co --exclude-standard | xargs -0 cp --parents -t "$WORK/tree"
cp -r .gpu "$WORK/tree/"
cd "$WORK/tree"
export PATH="$VENV/bin:$PATH" STASH="$WORK/stash" OUT="$WORK/out" SITE="$WORK/site"
bash build/gpu/run.sh stash
if [ "$#" -eq 0 ]; then
  set -- --device cpu --train-limit 4 --eval-limit 2 --latency-limit 2 --epochs 1 --budget-minutes 20
fi
bash build/gpu/run.sh campaign "$@"
echo "simulated: $OUT (campaign in $STASH/campaign)"
