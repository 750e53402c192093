#!/usr/bin/env bash
# Formatting, lints and the workflow schema, as CI checks them (scripts/setup.sh installs the tools).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
# The pure core stays runnable natively: nothing under src/lab/ may use the Workers runtime.
if grep -rnE '(^|[^_a-z])worker(_sys)?::' src/lab | grep -vE '^[^:]+:[0-9]+:[[:space:]]*//'; then
  echo "lint: src/lab/ must not use worker:: (the pure core; adapters go in src/platform/)" >&2
  exit 1
fi
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# The benchmark's minimal workers-rs worker is a crate of its own (tests/bench/rs/), built for wasm.
cargo fmt --manifest-path tests/bench/rs/Cargo.toml -- --check
cargo clippy --manifest-path tests/bench/rs/Cargo.toml --target wasm32-unknown-unknown -- -D warnings
# The GitHub workflows against the GitHub workflow schema (vendored in check-jsonschema: offline).
.tools/venv/bin/check-jsonschema --builtin-schema vendor.github-workflows .github/workflows/*.yml
