// Prints, as JSON, the configuration wrangler itself resolves for one environment of
// wrangler.toml (name, vars, bindings, migrations): what scripts/deploy.sh checks before deploying.
// Usage: node scripts/deploy-config.mjs production|staging [path/to/wrangler.toml]
import { unstable_readConfig } from "wrangler";

const [env, file = "wrangler.toml"] = process.argv.slice(2);
if (!env) {
  console.error("usage: node scripts/deploy-config.mjs <environment> [wrangler.toml]");
  process.exit(2);
}
const config = unstable_readConfig({ config: file, env }, {});
process.stdout.write(
  JSON.stringify(
    {
      environment: env,
      name: config.name,
      vars: config.vars ?? {},
      durable_objects: config.durable_objects?.bindings ?? [],
      d1_databases: config.d1_databases ?? [],
      migrations: config.migrations ?? [],
    },
    null,
    2,
  ) + "\n",
);
