#!/usr/bin/env bash
# The whole check on a lent GPU machine, in one call of the workplace's `device` tool, from
# the repository root there, with the kit that scripts/device-kit.sh built here:
#   run(command="scripts/device-run.sh", carry=[".devkit", ".gl", "data"], timeout_s=600)
# No Rust is needed there. In order, each phase under its own time limit, all within
# BUDGET_S seconds (default 540), skipping what would not fit:
#   1. every test binary on the GPU (WGPU_BACKEND=vulkan), GPU tests first  -> log.txt
#   2. bst-train bench at batch 4096, then benches/pytorch on CUDA with the
#      same config, and the ratios                                  -> b4096-{bst,torch}.json
#   3. the README's default training run on the GPU (synthetic, 3 epochs)
#                                                                -> train.log, metrics.json
#   4. the bench at batch 256 against PyTorch, when training left time -> b256-{bst,torch}.json
# Everything lands in $OUT, at most 8 files (what the device tool brings back), written as
# it goes so that a run stopped at its limit still returns what it did; summary.txt holds
# each phase's outcome and the ratios. Other logs go to log.txt. Exits non-zero when a
# test binary failed.
set -uo pipefail
ROOT_HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT_HERE"
OUT="${OUT:-$(mktemp -d -t bst-device-XXXXXX)}"
BUDGET_S="${BUDGET_S:-540}"
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
note() { echo "$*" | tee -a "$SUMMARY"; }
left() { echo $((BUDGET_S - SECONDS)); }

# Vulkan's loader (the NVIDIA driver brings only its ICD).
if ! /sbin/ldconfig -p | grep libvulkan.so.1 >/dev/null; then
  for f in .gl/*.deb; do dpkg -x "$f" /; done
  /sbin/ldconfig
fi
icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
if [ -z "${VK_DRIVER_FILES:-}" ] && [ -f "$icd" ]; then export VK_DRIVER_FILES="$icd"; fi
export WGPU_BACKEND=vulkan NODEVICE_SELECT=1 RUST_BACKTRACE=1
nvidia-smi -L 2>&1 | tee -a "$SUMMARY"

# The kit, and the absolute paths its binaries were built with.
[ -f .devkit/kit.tar.xz ] || { note "no .devkit/kit.tar.xz: run scripts/device-kit.sh here first"; exit 1; }
KIT="$(mktemp -d -t bst-kit-XXXXXX)"
trap 'rm -rf "$KIT"' EXIT
tar xJf .devkit/kit.tar.xz -C "$KIT"
# shellcheck disable=SC1091
. .devkit/paths  # ROOT, TARGET, COMMIT
note "kit built from ${COMMIT:-an older device-kit.sh: rebuild it}"
if [ "$ROOT" != "$ROOT_HERE" ]; then
  mkdir -p "$(dirname "$ROOT")" || note "cannot make $(dirname "$ROOT"): tests that read data will fail"
  if [ -e "$ROOT" ] && [ "$(cd "$ROOT" && pwd -P)" != "$(pwd -P)" ]; then
    note "warning: $ROOT exists and is another tree; tests read their data from there"
  fi
  [ -e "$ROOT" ] || ln -s "$ROOT_HERE" "$ROOT"
fi
mkdir -p "$TARGET/debug" "$TARGET/release"
cp "$KIT/debug/bst-train" "$TARGET/debug/"
cp "$KIT/release/bst-train" "$TARGET/release/"
BIN="$TARGET/release/bst-train"

# 1. Tests: GPU ones first, then the rest while the phase's time lasts.
note "== tests ($(left) s left)"
TESTS_END=$((SECONDS + ${TESTS_S:-240}))
gpu='\tgpu_|\tmemory$|\tcli$'
order="$(grep -P "$gpu" "$KIT/manifest" | sort -r; grep -vP "$gpu" "$KIT/manifest")"
failed=0
while IFS=$'\t' read -r dir name; do
  budget=$((TESTS_END - SECONDS))
  if [ "$budget" -le 5 ]; then note "test $name: not run (phase time spent)"; continue; fi
  start=$SECONDS
  (cd "$dir" && timeout "$budget" "$KIT/tests/$name" < /dev/null) > "$KIT/test.log" 2>&1
  rc=$?
  [ "$rc" = 0 ] || failed=$((failed + 1))
  cat "$KIT/test.log" >> "$OUT/log.txt"
  result="$(grep -a '^test result:' "$KIT/test.log" | tail -1)"
  note "test $name: rc $rc, $((SECONDS - start)) s: $result"
done <<< "$order"

# 2 and 4. bst against PyTorch at one batch size.
compare() {
  local batch=$1 limit=$2 bst="$OUT/b$1-bst.json" torch="$OUT/b$1-torch.json"
  note "== bench at batch $batch ($(left) s left)"
  timeout "$limit" "$BIN" bench --device gpu --batch "$batch" > "$bst" 2>> "$OUT/log.txt"
  note "bst-train bench: rc $?"
  (cd benches/pytorch && timeout "$limit" python3 bench_torch.py --from-bst "$bst" --device cuda) \
    > "$torch" 2>> "$OUT/log.txt"
  note "bench_torch.py: rc $?"
  python3 benches/ratios.py "$bst" "$torch" 2>&1 | tee -a "$SUMMARY"
}
if [ "$(left)" -gt 150 ]; then compare 4096 120; fi

# 3. The README's main job on the GPU.
if [ "$(left)" -gt 60 ]; then
  note "== default training on the GPU ($(left) s left)"
  run="$(mktemp -d -t bst-run-XXXXXX)"
  timeout $(($(left) - 45)) "$BIN" train --device gpu --out "$run" > "$OUT/train.log" 2>&1
  note "bst-train train: rc $?"
  cp "$run/metrics.json" "$OUT/" 2>/dev/null
  grep -aiE 'epoch|test|samples/s' "$OUT/train.log" | tail -8 | tee -a "$SUMMARY"
fi

if [ "$(left)" -gt 100 ]; then compare 256 45; fi
note "== done in $SECONDS s, $failed test binaries failed; files in $OUT"
[ "$failed" = 0 ]
