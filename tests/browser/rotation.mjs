// The dashboard during a secret rotation, in a real browser (headless Chromium, driven by
// playwright-core): the operator logs in with the previous operator token (still accepted) and
// the page says which rotations are not finished, in the worker's words. Run by the integration
// test `rotation_every_secret_without_a_failed_request`, which passes, in the environment:
// WORKER_URL, OPERATOR_TOKEN (the previous value), EXPECT (the settings the banner must name,
// comma-separated; empty: no banner), SCREENSHOT (a file, optional), CHROMIUM.
import { chromium } from "playwright-core";

const env = (name, fallback) => {
  const value = process.env[name] ?? fallback;
  if (value === undefined) throw new Error(`${name} is not set`);
  return value;
};
const expected = env("EXPECT", "").split(",").filter(Boolean);

const browser = await chromium.launch({
  executablePath: env("CHROMIUM"),
  chromiumSandbox: false,
  args: ["--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 700 } });
  page.on("pageerror", (e) => {
    throw new Error(`a script error in the page: ${e.message}`);
  });
  await page.goto(`${env("WORKER_URL")}/dashboard/`);
  await page.fill("#token", env("OPERATOR_TOKEN"));
  await page.click("#token-form button[type=submit]");
  await page.waitForSelector("#stats .card");
  const shown = await page.$$eval("#rotations:not([hidden]) p", (ps) =>
    ps.map((p) => [p.dataset.setting, p.textContent]));
  console.log(`browser: the rotation banner reads ${JSON.stringify(shown)}`);
  const settings = shown.map(([setting]) => setting);
  if (JSON.stringify(settings) !== JSON.stringify(expected)) {
    throw new Error(`the banner names ${JSON.stringify(settings)}, expected ${JSON.stringify(expected)}`);
  }
  for (const [setting, text] of shown) {
    if (!text.includes(setting)) throw new Error(`the notice for ${setting} reads: ${text}`);
  }
  if (process.env.SCREENSHOT) await page.screenshot({ path: process.env.SCREENSHOT });
} finally {
  await browser.close();
}
