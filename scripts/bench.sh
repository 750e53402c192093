#!/usr/bin/env bash
# The benchmark (not a test): cleanup wall time concurrent vs one by one vs the physical limit,
# POST load with wrk, release wasm size, storage operations. Writes the results into
# docs/PERFORMANCE.md (between its bench markers) and the plot docs/perf/cleanup.svg.
# Settings (environment): BENCH_LATENCY_MS=200 BENCH_REPS=5 BENCH_WORKERS=0,1,5,20,48
# BENCH_LOAD_SECONDS=10 BENCH_LOAD_CONNECTIONS=16.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

bash scripts/setup.sh
if ! command -v wrk >/dev/null 2>&1; then
  echo "==> installing wrk (Debian package)"
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq wrk
  else
    sudo apt-get update -qq && sudo apt-get install -y -qq wrk
  fi
fi
cargo bench --bench cleanup

# The simulation's long mode: SIM_SEEDS seeds (100,000 by default here; 500 in `cargo test`) of
# SIM_STEPS steps, steps per second printed at the end (docs/TESTING.md). BENCH_SIM=0 skips it.
if [ "${BENCH_SIM:-1}" != 0 ]; then
  echo "==> the simulation, long mode"
  SIM_SEEDS="${SIM_SEEDS:-100000}" SIM_STEPS="${SIM_STEPS:-200}" \
    cargo test --lib sim::tests::seeds -- --nocapture 2>&1 | grep -E "^simulation:|panicked|^seed|^replay|^shrunk|^[+-] "
fi
