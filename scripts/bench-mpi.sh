#!/usr/bin/env bash
# Data-parallel scaling on this machine, in one run: `bst-train bench` under
# `mpirun -n 1` and `mpirun -n 2`, each rank with RANK_THREADS (default 1) CPU threads
# and bound to cores of its own (`--bind-to core`: a rank that the scheduler moves
# between cores loses its caches; unbound when 2 x RANK_THREADS exceeds the cores), the
# same global batch; prints both JSON objects and the ratio of global samples/s. Then,
# where the cores allow, the ceiling this machine puts on that ratio: two independent
# 1-rank runs at half the batch at the same time, each on cores of its own, with no
# exchange at all (their samples/s summed against the 1-rank run).
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
pair="{}"
if [ $((2 * THREADS)) -le "$(nproc)" ]; then
  half=$(python3 -c 'import json, sys; print(json.loads(sys.argv[1])["batch"] // 2)' "$one")
  flags=()
  while [ "$#" -gt 0 ]; do # the user's --batch gives way to the half batch
    case "$1" in
      --batch) shift 2 ;;
      --batch=*) shift ;;
      *) flags+=("$1"); shift ;;
    esac
  done
  solo() {
    taskset -c "$1" mpirun --allow-run-as-root --oversubscribe --bind-to none -n 1 \
      -x RAYON_NUM_THREADS="$THREADS" "$BIN" bench --device cpu "${flags[@]}" --batch "$half"
  }
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  solo "0-$((THREADS - 1))" > "$tmp/a" &
  solo "$THREADS-$((2 * THREADS - 1))" > "$tmp/b"
  wait
  pair="$(python3 -c 'import json, sys; print(json.dumps([json.load(open(f)) for f in sys.argv[1:]]))' "$tmp/a" "$tmp/b")"
fi
python3 - "$one" "$two" "${BIND[*]}" "$pair" <<'PY'
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
pair = json.loads(sys.argv[4])
if pair:
    total = sum(p['samples_per_sec'] for p in pair)
    steps = ", ".join(f"{p['step_ms_median']:.1f}" for p in pair)
    print(f"ceiling, 2 independent 1-rank runs at batch {pair[0]['batch']} side by side (no exchange): "
          f"{total:.0f} samples/s, median steps {steps} ms: {total/a['samples_per_sec']:.2f}x "
          f"(of the median steps: {a['step_ms_median']/max(p['step_ms_median'] for p in pair):.2f}x)")
PY
