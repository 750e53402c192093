// The operator dashboard in a real browser (headless Chromium, driven by playwright-core): enter
// the token, see the seeded labs and the stats, filter the stuck ones, open one, press Retry now
// and watch it complete; an API error shown in words; the page on a phone. Screenshots go to
// docs/screenshots/. Run by the integration test `the_dashboard_in_a_real_browser`, which seeds
// the labs and passes, in the environment: WORKER_URL, OPERATOR_TOKEN, MOCK_URL, STUCK_LAB,
// SCHEDULED_LAB, CLASS_LABEL (a label some seeded labs carry), SCREENSHOTS (a directory), CHROMIUM
// (the browser's path).
import { chromium } from "playwright-core";
import { mkdirSync } from "node:fs";
import { join } from "node:path";

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
};
const WORKER = env("WORKER_URL");
const TOKEN = env("OPERATOR_TOKEN");
const MOCK = env("MOCK_URL");
const STUCK = env("STUCK_LAB");
const SCHEDULED = env("SCHEDULED_LAB");
const SHOTS = env("SCREENSHOTS");
mkdirSync(SHOTS, { recursive: true });

const step = (text) => console.log(`browser: ${text}`);
const fail = (text) => {
  throw new Error(text);
};

const browser = await chromium.launch({
  executablePath: env("CHROMIUM"),
  chromiumSandbox: false,
  args: [
    "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
  ],
});
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  const requests = [];
  page.on("request", (r) => requests.push(r.url()));
  page.on("pageerror", (e) => fail(`a script error in the page: ${e.message}`));
  page.on("dialog", (d) => d.accept());

  step("open /dashboard/ and enter a wrong token: refused, in words");
  await page.goto(`${WORKER}/dashboard/`);
  await page.fill("#token", "not-the-token");
  await page.click("#token-form button[type=submit]");
  await page.waitForSelector("#message.error:not([hidden])");
  const refused = await page.textContent("#message");
  if (!/token/i.test(refused) || !refused.includes("401")) fail(`the refusal reads: ${refused}`);
  await page.waitForSelector("#login:not([hidden])");

  step("enter the operator token: the stats and the seeded labs show");
  await page.fill("#token", TOKEN);
  await page.click("#token-form button[type=submit]");
  await page.waitForSelector(`#labs tr[data-lab="${STUCK}"]`);
  await page.waitForSelector(`#labs tr[data-lab="${SCHEDULED}"]`);
  const stats = await page.textContent("#stats");
  if (!stats.includes("Stuck") || !stats.includes("Retrying")) fail(`stats read: ${stats}`);
  if (process.env.STOPPED_LAB) {
    // The grace stage: a stopped lab is counted, and listed with its own badge.
    if (!stats.includes("Stopped") || !stats.includes("VMs stopped, kept")) fail(`stats read: ${stats}`);
    await page.waitForSelector('#labs [data-status="stopped"]');
  }
  const stored = await page.evaluate(() => Object.keys(sessionStorage));
  if (!stored.some((k) => k.includes("operator-token"))) fail("the token is not in sessionStorage");
  if (requests.some((u) => u.includes(TOKEN))) fail("the token went into a URL");
  if (requests.some((u) => !u.startsWith(WORKER))) fail(`a request left the site: ${requests}`);
  // The service levels: their line, and the two plots of the last 24 hours.
  await page.waitForSelector("#plot-completed");
  await page.waitForSelector("#plot-backlog");
  const levels = await page.textContent("#levels");
  if (!levels.includes("Last 24 hours")) fail(`the service levels read: ${levels}`);
  const bars = await page.$$eval("#plot-completed rect.bar", (rects) => rects.length);
  if (bars === 0) fail("the plot of labs completed per hour has no bar");
  await page.screenshot({ path: join(SHOTS, "dashboard-fleet.png"), fullPage: true });

  if (process.env.CLASS_LABEL) {
    step("a class by its label: preview an extend, run it, follow the job");
    const label = process.env.CLASS_LABEL;
    await page.fill("#filter-label", label);
    await page.click("#apply");
    await page.waitForSelector("#bulk:not([hidden])");
    await page.waitForFunction(() => document.querySelectorAll("#labs tbody tr").length > 0);
    const shown = await page.$$eval("#labs tbody tr", (trs) => trs.map((tr) => tr.dataset.lab));
    if (shown.some((id) => !id.startsWith("dash-class-"))) fail(`the label filter shows ${shown}`);
    await page.selectOption("#bulk-action", "extend");
    await page.fill("#bulk-minutes", "15");
    await page.click("#bulk-preview-button");
    await page.waitForSelector("#bulk-count");
    const matched = Number(await page.getAttribute("#bulk-count", "data-matched"));
    if (matched !== shown.length) fail(`the preview matched ${matched}, the list shows ${shown.length}`);
    await page.screenshot({ path: join(SHOTS, "dashboard-bulk-preview.png"), fullPage: true });
    await page.click("#bulk-run");
    await page.waitForSelector('#bulk-status[data-done="true"]', { timeout: 60_000 });
    const status = await page.textContent("#bulk-status");
    if (!status.includes(`${matched} applied`)) fail(`the job reads: ${status}`);
    await page.screenshot({ path: join(SHOTS, "dashboard-bulk-job.png"), fullPage: true });
    await page.fill("#filter-label", "");
    await page.click("#apply");
    await page.waitForSelector(`#labs tr[data-lab="${SCHEDULED}"]`);
    if (!(await page.isHidden("#bulk"))) fail("the bulk panel shows without a label or a user");
  }

  step("the last reconciliation, and the orphan labs by their origin");
  await page.waitForSelector("#reconcile[data-reconcile]");
  const reconcile = await page.textContent("#reconcile");
  if (!reconcile.includes("reconciliation")) fail(`the reconciliation reads: ${reconcile}`);
  if (process.env.ORPHAN_LAB) {
    await page.selectOption("#filter-origin", "inventory");
    await page.click("#apply");
    await page.waitForSelector(`#labs tr[data-lab="${process.env.ORPHAN_LAB}"]`);
    // The filtered page replaces the one before it (which may hold the orphan too).
    await page
      .waitForFunction(() => [...document.querySelectorAll("#labs tbody tr")].every((tr) => tr.dataset.origin === "inventory"), null, { timeout: 10_000 })
      .catch(() => {});
    const origins = await page.$$eval("#labs tbody tr", (trs) => trs.map((tr) => tr.dataset.origin));
    if (origins.length === 0 || origins.some((o) => o !== "inventory")) fail(`the origin filter shows ${origins}`);
    await page.selectOption("#filter-origin", "");
    await page.click("#apply");
    await page.waitForSelector(`#labs tr[data-lab="${SCHEDULED}"]`);
  }
  if (process.env.ORPHAN_LAB) {
    await page.selectOption("#filter-end-reason", "orphan");
    await page.click("#apply");
    await page.waitForSelector(`#labs tr[data-lab="${process.env.ORPHAN_LAB}"]`);
    await page
      .waitForFunction(() => [...document.querySelectorAll("#labs tbody td[data-end-reason]")].every((td) => td.dataset.endReason === "orphan"), null, { timeout: 10_000 })
      .catch(() => {});
    const reasons = await page.$$eval("#labs tbody tr td[data-end-reason]", (tds) => tds.map((td) => td.dataset.endReason));
    if (reasons.length === 0 || reasons.some((r) => r !== "orphan")) fail(`the end-reason filter shows ${reasons}`);
    await page.selectOption("#filter-end-reason", "");
    await page.click("#apply");
    await page.waitForSelector(`#labs tr[data-lab="${SCHEDULED}"]`);
  }
  const escaped = await page.evaluate(() => visible("id\u202e\n\u2028x"));
  if (escaped !== "id\\u{202e}\\u{a}\\u{2028}x") fail(`text from outside is shown as ${escaped}`);

  step("filter the stuck labs");
  await page.selectOption("#filter-stuck", "true");
  await page.click("#apply");
  await page.waitForFunction(
    (scheduled) => !document.querySelector(`#labs tr[data-lab="${scheduled}"]`),
    SCHEDULED,
  );
  await page.waitForSelector(`#labs tr[data-lab="${STUCK}"]`);
  const rows = await page.$$eval("#labs tbody tr", (trs) =>
    trs.map((tr) => ({ id: tr.dataset.lab, stuck: !!tr.querySelector("[data-stuck]") })));
  if (rows.length === 0 || rows.some((r) => !r.stuck)) fail(`the stuck filter shows ${JSON.stringify(rows)}`);
  await page.screenshot({ path: join(SHOTS, "dashboard-stuck.png"), fullPage: true });

  step("open the stuck lab: its status and its last errors");
  await page.click(`button[data-open="${STUCK}"]`);
  await page.waitForSelector("#detail:not([hidden])");
  const detail = await page.textContent("#detail");
  if (!detail.includes("retrying") || !detail.includes("backend answered")) fail(`the detail reads: ${detail}`);
  if (await page.isDisabled("#retry-now")) fail("Retry now is disabled for a retrying lab");
  // The timeline: created, ended (expired), its failed attempts, stuck.
  const events = await page.$$eval("#timeline li[data-event]", (lis) => lis.map((li) => li.dataset.event));
  for (const expected of ["created", "ended", "attempt", "stuck"]) {
    if (!events.includes(expected)) fail(`the timeline has no ${expected}: ${events}`);
  }
  const timeline = await page.textContent("#timeline");
  if (!timeline.includes("ended: expired") || !timeline.includes("failed (500)")) fail(`the timeline reads: ${timeline}`);
  await page.screenshot({ path: join(SHOTS, "dashboard-detail.png"), fullPage: true });

  step("the backend recovers; press Retry now and watch the lab complete");
  const cleared = await fetch(`${MOCK}/__mock/faults/clear`, {
    method: "POST",
    body: JSON.stringify({ lab_request_id: `${STUCK}-w1` }),
  });
  if (!cleared.ok) fail(`the mock's faults could not be cleared: ${cleared.status}`);
  await page.click("#retry-now");
  await page.waitForSelector('#detail [data-status="completed"]', { timeout: 30_000 });
  await page.waitForSelector('#timeline li[data-event="completed"]');
  await page.waitForSelector('#timeline li[data-event="retry_now"]');
  const done = await page.textContent("#message");
  if (!done.includes("Retry now: done")) fail(`after Retry now the message reads: ${done}`);
  await page.screenshot({ path: join(SHOTS, "dashboard-completed.png"), fullPage: true });

  step("an action the API refuses: its error in words");
  await page.selectOption("#filter-stuck", "");
  await page.click("#apply");
  await page.click(`button[data-open="${SCHEDULED}"]`);
  await page.waitForSelector('#detail [data-status="scheduled"]');
  // Retry now is disabled for a scheduled lab; ask the API anyway, as a stale page would. Enabled
  // and clicked in one turn of the page: its periodic refresh re-renders the detail (disabling
  // the button again) between two steps of the test.
  await page.evaluate(() => {
    const button = document.querySelector("#retry-now");
    button.disabled = false;
    button.click();
  });
  await page.waitForFunction(() => document.querySelector("#message").textContent.includes("409"));
  const conflict = await page.textContent("#message");
  if (!conflict.includes("Retry now failed") || !conflict.includes("DELETE")) fail(`the conflict reads: ${conflict}`);

  step("the page on a phone");
  await page.setViewportSize({ width: 390, height: 844 });
  await page.screenshot({ path: join(SHOTS, "dashboard-phone.png"), fullPage: true });
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  if (overflow > 2) fail(`the page is ${overflow} px wider than a phone`);

  step("all good");
} finally {
  await browser.close();
}
