#!/usr/bin/env bash
# bst against the PyTorch reference on this machine: runs `bst-train bench` with the given
# flags, then benches/pytorch/bench_torch.py with the same model config, vocabulary sizes,
# batch, step counts and candidates (read from bst's JSON), and prints both numbers and
# the ratio bst / torch of each.
#
#   benches/compare.sh [bst-train bench flags]     e.g.  --device gpu --batch 256 --steps 50
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
cargo build --release --quiet -p bst-train
echo "bst-train bench $*" >&2
./target/release/bst-train bench "$@" > "$OUT/bst.json"

device=$("$PYTHON" -c 'import json, sys; print("cpu" if json.load(open(sys.argv[1]))["adapter"] == "cpu" else "auto")' "$OUT/bst.json")
echo "bench_torch.py --from-bst $OUT/bst.json --device $device" >&2
(cd benches/pytorch && "$PYTHON" bench_torch.py --from-bst "$OUT/bst.json" --device "$device") > "$OUT/torch.json"

"$PYTHON" - "$OUT/bst.json" "$OUT/torch.json" <<'EOF'
import json, sys

bst, torch = (json.load(open(p)) for p in sys.argv[1:3])

def name(r):
    a = r["adapter"]
    return "cpu" if a == "cpu" else a["name"]

print(f"bst:   {name(bst)}")
print(f"torch: {name(torch)} (torch {torch['torch']}, {torch['threads']} threads)")
if (bst["adapter"] == "cpu") != (torch["adapter"] == "cpu"):
    print("warning: bst and torch ran on different kinds of device; the ratios compare those")
c = bst["config"]
print(f"config: batch {c['batch']}, eval batch {c['eval_batch']}, {c['params']} parameters "
      f"(torch {torch['config']['params']}), {bst['scoring']['candidates']} candidates\n")

def get(r, path):
    for k in path.split("."):
        r = r[k] if r is not None else None
    return r

rows = [
    ("training samples/s", "train.samples_per_sec", "higher is better"),
    ("inference samples/s", "inference.samples_per_sec", "higher is better"),
    ("scoring median ms", "scoring.median_ms", "lower is better"),
    ("scoring p99 ms", "scoring.p99_ms", "lower is better"),
    ("peak device memory MiB", "memory.peak_device_bytes", "lower is better"),
]
print(f"{'':24} {'bst':>12} {'torch':>12} {'bst/torch':>10}")
for label, path, better in rows:
    b, t = get(bst, path), get(torch, path)
    if b is None or t is None:
        print(f"{label:24} {'-':>12} {'-':>12} {'-':>10}  (not measured on the CPU)")
        continue
    scale = 1 / 2**20 if path.startswith("memory") else 1
    print(f"{label:24} {b * scale:12.2f} {t * scale:12.2f} {b / t:10.3f}  ({better})")
EOF
echo "JSON: $OUT/bst.json $OUT/torch.json" >&2
