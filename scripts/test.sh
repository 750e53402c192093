#!/usr/bin/env bash
# The one test command. Installs what it needs (scripts/setup.sh: a quick no-op once done), then
# runs every test: native unit tests of the pure logic and of the mock backend, then the
# integration tests, which start the mock backend and the real worker on workerd (`wrangler dev`)
# on 127.0.0.1 and stop them when done. Arguments filter integration tests by name.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

bash scripts/setup.sh

echo "==> unit tests (native)"
cargo test --workspace --lib --bins

echo
echo "==> integration tests (wrangler dev + mock backend)"
cargo test --test integration -- "$@"
