#!/usr/bin/env bash
# bst against the PyTorch reference on this machine: runs `bst-train bench` with the given
# flags, then benches/pytorch/bench_torch.py with the same model config, vocabulary sizes,
# batch, step counts and candidates (read from bst's JSON), and prints both numbers and
# the ratio bst / torch of each.
#
#   benches/compare.sh [bst-train bench flags]     e.g.  --device gpu --batch 256 --steps 50
#
# BST_TRAIN=path/to/bst-train uses that binary instead of building one.
#
# PyTorch runs on CUDA when bst ran on a GPU (and torch sees one), else on the CPU.
# Needs python3 with torch (PYTHON=... picks the interpreter). The two JSON files are kept
# in $OUT (default: a new temporary folder, printed at the end).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
OUT="${OUT:-$(mktemp -d -t bst-compare-XXXXXX)}"
mkdir -p "$OUT"
cd "$ROOT"

if ! "$PYTHON" -c "import torch" 2>/dev/null; then
  echo "compare.sh: $PYTHON cannot import torch; install it (pip install torch) or set PYTHON" >&2
  exit 1
fi
# The binary cargo builds, wherever CARGO_TARGET_DIR puts it; BST_TRAIN=path skips the build.
if [ -z "${BST_TRAIN:-}" ]; then
  cargo build --release --quiet -p bst-train
  BST_TRAIN="$(cargo metadata --format-version 1 --no-deps | "$PYTHON" -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')/release/bst-train"
fi
echo "bst-train bench $*" >&2
"$BST_TRAIN" bench "$@" > "$OUT/bst.json"

device=$("$PYTHON" -c 'import json, sys; print("cpu" if json.load(open(sys.argv[1]))["adapter"] == "cpu" else "auto")' "$OUT/bst.json")
echo "bench_torch.py --from-bst $OUT/bst.json --device $device" >&2
(cd benches/pytorch && "$PYTHON" bench_torch.py --from-bst "$OUT/bst.json" --device "$device") > "$OUT/torch.json"

"$PYTHON" "$ROOT/benches/ratios.py" "$OUT/bst.json" "$OUT/torch.json"
echo "JSON: $OUT/bst.json $OUT/torch.json" >&2
