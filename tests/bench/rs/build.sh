#!/usr/bin/env bash
# Builds this benchmark worker with the tools scripts/setup.sh installs (as scripts/build-worker.sh
# does for labs-cleanup).
set -euo pipefail
cd "$(dirname "$0")"
root="$(cd ../../.. && pwd)"
export PATH="$HOME/.cargo/bin:$PATH"
export WASM_BINDGEN_BIN="${WASM_BINDGEN_BIN:-$(command -v wasm-bindgen)}"
export WASM_OPT_BIN="${WASM_OPT_BIN:-$root/node_modules/.bin/wasm-opt}"
export ESBUILD_BIN="${ESBUILD_BIN:-$root/node_modules/.bin/esbuild}"
worker-build --release
