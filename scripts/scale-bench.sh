#!/usr/bin/env bash
# The scale of Taobao-shaped click logs (issue 12): for generated UserBehavior files of
# 1M, 10M and 100M rows, the load from CSV (parse, sort, splits), the load from the cache,
# the peak resident memory of each whole process, bytes per row, and training samples/s
# (`bench --steps`). Usage: scripts/scale-bench.sh [DIR] [SIZES...]
# (DIR default /tmp/scale; sizes default "1m 10m 100m"; needs /usr/bin/time and a
# release build: cargo build --release -p bst-train).
set -euo pipefail
dir=${1:-/tmp/scale}
shift || true
sizes=${*:-1m 10m 100m}
bin=${BST_TRAIN:-target/release/bst-train}
steps=${STEPS:-10}
mkdir -p "$dir"
rows_of() { case $1 in *m) echo $(( ${1%m} * 1000000 ));; *) echo "$1";; esac; }
run() { # log file, then the bench: prints "load_seconds peak_kb samples_per_sec"
    local log=$1; shift
    /usr/bin/time -v "$bin" --cache "$dir/cache" bench --device cpu --steps "$steps" "$@" \
        >"$log.json" 2>"$log.err"
    local load peak sps
    load=$(grep -o '([0-9.]*s)$' "$log.err" | head -1 | tr -d '()s')
    peak=$(grep 'Maximum resident' "$log.err" | awk '{print $NF}')
    sps=$(python3 -c 'import json,sys; print(round(json.load(open(sys.argv[1]))["train"]["samples_per_sec"]))' "$log.json")
    echo "$load $peak $sps"
}
echo "| rows | pv events | CSV load s | rows/s | cache load s | peak RSS (CSV run) | peak RSS (cached run) | bytes/row (cached peak) | train samples/s |"
echo "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
for s in $sizes; do
    rows=$(rows_of "$s")
    file="$dir/ub-$s.csv"
    [ -f "$file" ] || "$bin" generate-taobao --rows "$rows" --seed 0 --out "$file" >/dev/null 2>&1
    rm -f "$dir"/cache/ub-"$s".csv.*.store
    read -r load1 peak1 sps1 < <(run "$dir/bench-$s-csv" --data "taobao:$file")
    read -r load2 peak2 sps2 < <(run "$dir/bench-$s-cache" --data "taobao:$file")
    events=$(grep -o '^data .*' "$dir/bench-$s-csv.err" | head -1)
    pv=$(grep -c ',pv,' "$file" || true)
    echo "| $rows | $pv | $load1 | $(python3 -c "print(f'{$rows/$load1:,.0f}')") | $load2 | $(( peak1 / 1024 )) MiB | $(( peak2 / 1024 )) MiB | $(( peak2 * 1024 / rows )) | $sps2 |"
done
