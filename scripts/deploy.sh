#!/usr/bin/env bash
# Deploys one environment of wrangler.toml, and refuses a configuration that would not work.
#   bash scripts/deploy.sh production|staging
# Needs a Cloudflare login: `npx wrangler login` on a workstation, or CLOUDFLARE_API_TOKEN and
# CLOUDFLARE_ACCOUNT_ID in the environment (CI). Steps:
#   1. the settings, as wrangler resolves them for the environment, and the names of its secrets
#      are checked with the worker's own rules (src/bin/deploy-check.rs): an empty BACKEND_URL, a
#      missing API_TOKEN or a bad value stops here, before anything is uploaded;
#   2. the fleet index's D1 migrations (`npx wrangler d1 migrations apply DB --remote`), then
#      `npx wrangler deploy --env <env>` (it builds the worker; a build made earlier, without
#      secrets, is reused when LABS_CLEANUP_SKIP_BUILD=1);
#   3. a smoke test: GET /healthz must answer 200 {"status":"ok"} (503 = the settings are wrong).
#      The URL is the workers.dev one wrangler prints, or HEALTH_URL when you set it.
# In CI (.github/workflows/deploy.yml) the build and the checker are made in a job without
# secrets; the deploy job passes them in: LABS_CLEANUP_SKIP_BUILD=1 (reuse build/),
# DEPLOY_CHECK_BIN=<prebuilt deploy-check>, SKIP_SETUP=1 (node_modules already installed).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
export WRANGLER_SEND_METRICS=false

env_name="${1:-}"
case "$env_name" in
  production | staging) ;;
  *)
    echo "usage: bash scripts/deploy.sh production|staging" >&2
    exit 2
    ;;
esac
work=.wrangler/deploy/$env_name
mkdir -p "$work"
step() { printf '\n==> %s\n' "$*"; }

if [ "${SKIP_SETUP:-0}" != 1 ]; then
  step "tools"
  bash scripts/setup.sh --deploy >"$work/setup.log" 2>&1 || {
    cat "$work/setup.log"
    exit 1
  }
  echo "ok"
fi

step "settings of [env.$env_name] and its secrets"
node scripts/deploy-config.mjs "$env_name" wrangler.toml >"$work/config.json"
if ! npx wrangler secret list --env "$env_name" --format json >"$work/secrets.json" 2>"$work/secrets.err"; then
  if grep -qi "does not exist\|10007" "$work/secrets.err"; then
    echo "[]" >"$work/secrets.json" # a first deploy: the worker has no secrets yet
  else
    cat "$work/secrets.err" >&2
    echo "deploy: cannot list the secrets of $env_name; log in first (npx wrangler login) or set CLOUDFLARE_API_TOKEN" >&2
    exit 1
  fi
fi
if [ -n "${DEPLOY_CHECK_BIN:-}" ]; then
  "$DEPLOY_CHECK_BIN" "$work/config.json" "$work/secrets.json"
else
  cargo run --quiet --bin deploy-check -- "$work/config.json" "$work/secrets.json"
fi

step "fleet index: D1 migrations"
CI=true npx wrangler d1 migrations apply DB --remote --env "$env_name"

step "deploy"
LABS_CLEANUP_DEPLOY_CHECKED="$env_name" npx wrangler deploy --env "$env_name" 2>&1 | tee "$work/deploy.log"

step "smoke test"
url="${HEALTH_URL:-$(grep -o 'https://[A-Za-z0-9.-]*\.workers\.dev' "$work/deploy.log" | head -n 1 || true)}"
if [ -z "$url" ]; then
  echo "no workers.dev URL in wrangler's output; set HEALTH_URL=https://<your route> to smoke-test it"
  exit 0
fi
for attempt in 1 2 3 4 5 6; do
  answer=$(curl -sS --max-time 10 -w ' %{http_code}' "$url/healthz" || true)
  case "$answer" in
    *' 200') echo "GET $url/healthz -> $answer"; echo "deployed $env_name"; exit 0 ;;
    *' 503') echo "GET $url/healthz -> $answer: the deployed settings are not valid; see npx wrangler tail --env $env_name" >&2; exit 1 ;;
  esac
  sleep 5
done
echo "GET $url/healthz never answered 200 (last: ${answer:-nothing})" >&2
exit 1
