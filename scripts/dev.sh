#!/usr/bin/env bash
# The local run command: installs the tools if needed, starts the mock lab backend on
# 127.0.0.1:8788 and the worker (`wrangler dev`) on 127.0.0.1:8787 wired to it, and stops both
# on Ctrl-C. Durations are real minutes unless DURATION_UNIT_SECONDS is set, e.g.
#   DURATION_UNIT_SECONDS=1 CLEANUP_RETRY_SECONDS=10 bash scripts/dev.sh
# Sessions start from an empty state each run; KEEP_STATE=1 keeps the previous run's.
# STAGE=1 turns the grace stage on (STOP_PATH/START_PATH at the mock's stop and start): a lab's
# VMs are stopped at its end and deleted KEEP_STOPPED_MINUTES (default 5) units later.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

WORKER_PORT="${WORKER_PORT:-8787}"
MOCK_PORT="${MOCK_PORT:-8788}"
DURATION_UNIT_SECONDS="${DURATION_UNIT_SECONDS:-60}"
CLEANUP_RETRY_SECONDS="${CLEANUP_RETRY_SECONDS:-300}"
stage=()
if [ "${STAGE:-0}" = 1 ]; then
  stage=(--var "STOP_PATH:/api/v1/labs/stop" --var "START_PATH:/api/v1/labs/start"
         --var "KEEP_STOPPED_MINUTES:${KEEP_STOPPED_MINUTES:-5}")
fi
# Durable Object state of the local run; starts empty unless KEEP_STATE=1.
STATE_DIR=.wrangler/dev-state
if [ "${KEEP_STATE:-0}" != 1 ]; then rm -rf "$STATE_DIR"; fi

bash scripts/setup.sh
cargo build --quiet -p mock-backend --bin mock-backend

# Development tokens, created once in the git-ignored .dev.vars (wrangler dev loads it).
random_token() { echo "dev-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"; }
if [ ! -f .dev.vars ]; then
  sed -e "s/^API_TOKEN=.*/API_TOKEN=$(random_token)/" \
      -e "s/^OPERATOR_TOKEN=.*/OPERATOR_TOKEN=$(random_token)/" .dev.vars.example > .dev.vars
  echo "created .dev.vars with random development tokens"
elif ! grep -q '^OPERATOR_TOKEN=' .dev.vars; then
  echo "OPERATOR_TOKEN=$(random_token)" >> .dev.vars
  echo "added a random development OPERATOR_TOKEN to .dev.vars"
fi
API_TOKEN=$(sed -n 's/^API_TOKEN=//p' .dev.vars | head -n 1)
OPERATOR_TOKEN=$(sed -n 's/^OPERATOR_TOKEN=//p' .dev.vars | head -n 1)

# The fleet index (local D1) of this state: its tables, from ./migrations.
CI=true WRANGLER_SEND_METRICS=false node_modules/.bin/wrangler d1 migrations apply DB --local \
  --persist-to "$STATE_DIR" >/dev/null

pids=()
cleanup() {
  trap - EXIT INT TERM
  for pid in "${pids[@]}"; do
    kill -TERM -- "-$pid" 2>/dev/null || true
  done
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

setsid target/debug/mock-backend --listen "127.0.0.1:$MOCK_PORT" &
pids+=($!)

cat <<MSG

  Worker:       http://127.0.0.1:$WORKER_PORT   (ready when wrangler prints "Ready on")
  Mock backend: http://127.0.0.1:$MOCK_PORT    (calls: curl 127.0.0.1:$MOCK_PORT/__mock/calls)
  One duration unit = $DURATION_UNIT_SECONDS s; retry every $CLEANUP_RETRY_SECONDS s.

  API token (from .dev.vars):      $API_TOKEN
  Operator token (from .dev.vars): $OPERATOR_TOKEN
  Dashboard: http://127.0.0.1:$WORKER_PORT/dashboard/  (paste the operator token)
  The Cron Trigger now (inventory pull from the mock, then the sweep):
    curl -s "http://127.0.0.1:$WORKER_PORT/__scheduled?cron=*/15+*+*+*+*"

  Try the multi-node example (expires after duration x $DURATION_UNIT_SECONDS s):
    export API_TOKEN=$API_TOKEN
    curl -s http://127.0.0.1:$WORKER_PORT/api/v1/labs/sessions -H "Authorization: Bearer \$API_TOKEN" \\
      -H 'Content-Type: application/json' -d @docs/examples/multi-node.json
  With STAGE=1 it is stopped at its end, then deleted; resume it while it is stopped:
    curl -s http://127.0.0.1:$WORKER_PORT/api/v1/labs/sessions/k8s-master-abc-123/resume \\
      -H "Authorization: Bearer \$API_TOKEN" -d '{"duration": 30}'

MSG

CI=true WRANGLER_SEND_METRICS=false setsid node_modules/.bin/wrangler dev \
  --ip 127.0.0.1 --port "$WORKER_PORT" --persist-to "$STATE_DIR" \
  --var "BACKEND_URL:http://127.0.0.1:$MOCK_PORT" \
  --var "DURATION_UNIT_SECONDS:$DURATION_UNIT_SECONDS" \
  --var "CLEANUP_RETRY_SECONDS:$CLEANUP_RETRY_SECONDS" \
  --var "INVENTORY_PATH:/api/v1/labs/inventory" "${stage[@]}" --test-scheduled &
pids+=($!)
wait -n || true
