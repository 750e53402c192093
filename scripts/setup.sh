#!/usr/bin/env bash
# Installs everything the build, the local run and the tests need, pinned. Needs Rust (rustup),
# Node.js 20 and Python 3 (with venv) on the machine; installs the rest itself. Each step is a
# quick no-op once done.
#   bash scripts/setup.sh            everything (build, run, test)
#   bash scripts/setup.sh --deploy   only what a build and a deploy need (no test tools)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

WORKER_BUILD_VERSION=0.8.7
SCHEMATHESIS_VERSION=4.32.5
CHECK_JSONSCHEMA_VERSION=0.39.0
PROMETHEUS_CLIENT_VERSION=0.26.0
STANDARDWEBHOOKS_VERSION=1.3.0
# wasm-bindgen-cli must be exactly the wasm-bindgen version that Cargo.lock resolved.
WASM_BINDGEN_VERSION=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/version = |"/, ""); print; exit }' Cargo.lock)
DEPLOY_ONLY=0
[ "${1:-}" = --deploy ] && DEPLOY_ONLY=1

step() { printf '\n==> %s\n' "$*"; }

step "Rust target wasm32-unknown-unknown"
rustup target add wasm32-unknown-unknown

step "worker-build $WORKER_BUILD_VERSION"
if [ "$(worker-build --version 2>/dev/null | awk "{print \$NF}")" != "$WORKER_BUILD_VERSION" ]; then
  cargo install worker-build --version "$WORKER_BUILD_VERSION" --locked
else
  echo "already installed"
fi

step "wasm-bindgen-cli $WASM_BINDGEN_VERSION"
if [ "$(wasm-bindgen --version 2>/dev/null | awk '{print $2}')" != "$WASM_BINDGEN_VERSION" ]; then
  # No --locked: its lock file pins a webpki-roots that no longer builds.
  cargo install wasm-bindgen-cli --version "$WASM_BINDGEN_VERSION"
else
  echo "already installed"
fi

step "JS tools (wrangler, binaryen) from package-lock.json"
if [ -d node_modules ] && [ node_modules/.package-lock.json -nt package-lock.json ]; then
  echo "node_modules is up to date"
else
  npm ci --no-audit --no-fund
fi

if [ "$DEPLOY_ONLY" = 1 ]; then
  echo
  echo "setup done (deploy tools)"
  exit 0
fi

step "Python test tools in .tools/venv: schemathesis $SCHEMATHESIS_VERSION (API fuzzing), check-jsonschema $CHECK_JSONSCHEMA_VERSION (workflow schema), prometheus-client $PROMETHEUS_CLIENT_VERSION (the reference parser of /metrics), standardwebhooks $STANDARDWEBHOOKS_VERSION (the official webhook verifier)"
if [ "$(.tools/venv/bin/st --version 2>/dev/null | awk '{print $NF}')" != "$SCHEMATHESIS_VERSION" ] ||
   [ "$(.tools/venv/bin/check-jsonschema --version 2>/dev/null | awk '{print $NF}')" != "$CHECK_JSONSCHEMA_VERSION" ] ||
   [ "$(.tools/venv/bin/pip show prometheus-client 2>/dev/null | awk '/^Version:/ {print $2}')" != "$PROMETHEUS_CLIENT_VERSION" ] ||
   [ "$(.tools/venv/bin/pip show standardwebhooks 2>/dev/null | awk '/^Version:/ {print $2}')" != "$STANDARDWEBHOOKS_VERSION" ]; then
  python3 -m venv .tools/venv
  .tools/venv/bin/pip install --quiet --disable-pip-version-check \
    "schemathesis==$SCHEMATHESIS_VERSION" "check-jsonschema==$CHECK_JSONSCHEMA_VERSION" \
    "prometheus-client==$PROMETHEUS_CLIENT_VERSION" "standardwebhooks==$STANDARDWEBHOOKS_VERSION"
else
  echo "already installed"
fi

step "Chromium for the dashboard's browser test (Debian packages chromium, chromium-driver)"
if command -v chromium >/dev/null 2>&1; then
  echo "already installed ($(chromium --version 2>/dev/null))"
elif command -v apt-get >/dev/null 2>&1 && { [ "$(id -u)" = 0 ] || command -v sudo >/dev/null 2>&1; }; then
  as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver
else
  echo "no apt-get here: the browser test will say it skips (install Chromium and set CHROMIUM=<its path>)"
fi

echo
echo "setup done"
