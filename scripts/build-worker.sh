#!/usr/bin/env bash
# Builds the release worker (build/worker/shim.mjs + wasm) with worker-build, using locally
# installed tools only: worker-build would otherwise try to download wasm-bindgen and wasm-opt.
set -euo pipefail
cd "$(dirname "$0")/.."

# A deploy goes through scripts/deploy.sh, which checks the settings and secrets first; a bare
# `wrangler deploy` (which runs this build) is refused so that a broken configuration never ships.
# A dry run uploads nothing (`wrangler deploy --dry-run`, and `wrangler check startup`, which
# builds through one): it is let through. Wrangler tells the build only WRANGLER_COMMAND, so the
# dry run is read from the command lines of the processes above this one.
dry_run() {
  local pid=$$ n=0 args
  while [ "$pid" -gt 1 ] && [ $n -lt 6 ]; do
    args=$(ps -o args= -p "$pid" 2>/dev/null || true)
    case "$args" in
      *"--dry-run"*|*"check startup"*) return 0 ;;
    esac
    pid=$(ps -o ppid= -p "$pid" 2>/dev/null | tr -d ' ' || echo 1)
    [ -n "$pid" ] || pid=1
    n=$((n + 1))
  done
  return 1
}
if [ "${WRANGLER_COMMAND:-}" = deploy ] && [ -z "${LABS_CLEANUP_DEPLOY_CHECKED:-}" ] && ! dry_run; then
  echo "build-worker: deploy with 'bash scripts/deploy.sh production' (or staging); it checks the" >&2
  echo "settings and secrets first. A bare 'wrangler deploy' is refused." >&2
  exit 1
fi

# LABS_CLEANUP_SKIP_BUILD=1 reuses an existing build/ (a second `wrangler dev` started while the
# first one runs; a deploy of a build made earlier without secrets).
if [ "${LABS_CLEANUP_SKIP_BUILD:-0}" = 1 ] && [ -f build/worker/shim.mjs ]; then
  echo "build-worker: LABS_CLEANUP_SKIP_BUILD=1, reusing build/"
  exit 0
fi

export PATH="$HOME/.cargo/bin:$PATH"
export WASM_BINDGEN_BIN="${WASM_BINDGEN_BIN:-$(command -v wasm-bindgen || true)}"
export WASM_OPT_BIN="${WASM_OPT_BIN:-$PWD/node_modules/.bin/wasm-opt}"
export ESBUILD_BIN="${ESBUILD_BIN:-$PWD/node_modules/.bin/esbuild}"

for tool in worker-build "$WASM_BINDGEN_BIN" "$WASM_OPT_BIN" "$ESBUILD_BIN"; do
  if [ -z "$tool" ] || ! command -v "$tool" >/dev/null 2>&1; then
    echo "build-worker: missing tool '${tool:-wasm-bindgen}'; run: bash scripts/setup.sh" >&2
    exit 1
  fi
done
worker-build --release "$@"

# worker-build keeps the wasm function-name section (27 KB of the gzipped worker). A deployed
# worker does without it: a panic still logs its message with the source file and line
# (console_error_panic_hook); only JavaScript stack frames show wasm function indices instead of
# names. KEEP_WASM_NAMES=1 keeps them for debugging.
if [ "${KEEP_WASM_NAMES:-0}" != 1 ]; then
  # Optimized once more for size until nothing changes (--converge: about 1% smaller), after a
  # whole-program flow analysis that finds constants -Oz alone does not (--gufa: about 210 B
  # gzipped).
  "$WASM_OPT_BIN" build/index_bg.wasm --strip-debug --gufa -Oz --converge -o build/index_bg.wasm \
    --enable-mutable-globals --enable-sign-ext --enable-nontrapping-float-to-int \
    --enable-bulk-memory --enable-multivalue --enable-reference-types --enable-exception-handling
fi
