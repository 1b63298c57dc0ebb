#!/usr/bin/env bash
# Data-parallel scaling on this machine, in one run: `bst-train bench` under
# `mpirun -n 1` and `mpirun -n 2`, each rank with RANK_THREADS (default 1) CPU threads
# and bound to cores of its own (`--bind-to core`: a rank that the scheduler moves
# between cores loses its caches; unbound when 2 x RANK_THREADS exceeds the cores), the
# same global batch; prints both JSON objects and the ratio of global samples/s.
# Needs the binary built with the mpi feature:
#   cargo build --release -p bst-train --features mpi
# Usage: scripts/bench-mpi.sh [bench flags...]   (default: ml-100k, default model)
# BST_TRAIN overrides the binary.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
BIN="${BST_TRAIN:-target/release/bst-train}"
THREADS="${RANK_THREADS:-1}"
if [ "$#" -eq 0 ]; then
  set -- --data recbole:data/ml-100k --steps 40 --warmup 5
fi
if [ $((2 * THREADS)) -le "$(nproc)" ]; then
  BIND=(--bind-to core --map-by "core:PE=$THREADS")
else
  BIND=(--bind-to none)
fi
run() {
  mpirun --allow-run-as-root --oversubscribe --mca btl_vader_single_copy_mechanism none \
    "${BIND[@]}" -n "$1" -x RAYON_NUM_THREADS="$THREADS" "$BIN" bench --device cpu "${@:2}"
}
one="$(run 1 "$@")"
two="$(run 2 "$@")"
echo "$one"
echo "$two"
python3 - "$one" "$two" "${BIND[*]}" <<'PY'
import json, sys
a, b = (json.loads(x) for x in sys.argv[1:3])
print(f"ranks bound with mpirun {sys.argv[3]}")
print(f"1 rank x {a['threads_per_rank']} thread(s): {a['samples_per_sec']:.0f} samples/s, step {a['step_ms_mean']:.1f} ms (median {a['step_ms_median']:.1f})")
overlap = "overlapped with the backward" if b['overlap'] else "after the backward"
print(f"2 ranks x {b['threads_per_rank']} thread(s): {b['samples_per_sec']:.0f} samples/s, step {b['step_ms_mean']:.1f} ms "
      f"(compute {b['compute_ms']:.1f} ms, exchange {b['exchange_ms']:.2f} ms not hidden, dense part {overlap}; "
      f"medians: step {b['step_ms_median']:.1f}, compute {b['compute_ms_median']:.1f}, exchange {b['exchange_ms_median']:.2f} ms; "
      f"{b['exchange_bytes_per_step']/1e6:.2f} MB/step: "
      f"allreduce {b['allreduce_bytes_per_step']/1e6:.2f} MB, allgather {b['allgather_bytes_per_step']/1e6:.3f} MB, "
      f"{b['sparse_tables_per_step']:.1f} of 4 tables by rows)")
print(f"speed-up 2 ranks / 1 rank: {b['samples_per_sec']/a['samples_per_sec']:.2f}x "
      f"(of the median steps: {a['step_ms_median']/b['step_ms_median']:.2f}x)")
PY
