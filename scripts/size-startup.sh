#!/usr/bin/env bash
# The worker's size and startup, rerunnable: builds the worker as a deploy does
# (scripts/build-worker.sh: release, wasm-opt), prints the wasm's size raw and gzipped, then runs
# `wrangler check startup` RUNS times (default 5) and prints each profile's span (the module's
# evaluation, in ms) and their median. Used for the before/after numbers in docs/PERFORMANCE.md.
#   bash scripts/size-startup.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-5}
bash scripts/build-worker.sh >/dev/null
wasm=build/index_bg.wasm
printf 'wasm: %d bytes, %d gzipped\n' "$(stat -c %s "$wasm")" "$(gzip -9 -c "$wasm" | wc -c)"
out=$(mktemp -d)
spans=()
for i in $(seq "$runs"); do
  CI=true WRANGLER_SEND_METRICS=false LABS_CLEANUP_SKIP_BUILD=1 \
    npx wrangler check startup --outfile "$out/$i.cpuprofile" >/dev/null 2>&1
  spans+=("$(python3 -c 'import json,sys; p=json.load(open(sys.argv[1])); print("%.1f" % ((p["endTime"] - p["startTime"]) / 1000))' "$out/$i.cpuprofile")")
done
rm -rf "$out"
printf 'startup (ms): %s; median %s\n' "${spans[*]}" \
  "$(printf '%s\n' "${spans[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')"
