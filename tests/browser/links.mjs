// A signed link of lab.expiring in a real browser (headless Chromium, driven by playwright-core):
// the student opens the link, reads what the click will do, clicks, and reads the new end time.
// The page runs no script and loads nothing from outside; the browser enforces its
// Content-Security-Policy (a violation fails the test). Run by the integration test
// `links_more_time_in_one_click`, which passes, in the environment: LINK_URL, SCREENSHOTS (a
// directory, optional), CHROMIUM.
import { chromium } from "playwright-core";
import path from "node:path";

const env = (name, fallback) => {
  const value = process.env[name] ?? fallback;
  if (value === undefined) throw new Error(`${name} is not set`);
  return value;
};
const shots = process.env.SCREENSHOTS;

const browser = await chromium.launch({
  executablePath: env("CHROMIUM"),
  chromiumSandbox: false,
  args: ["--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking"],
});
try {
  const page = await browser.newPage({ viewport: { width: 800, height: 420 } });
  const violations = [];
  page.on("console", (m) => {
    if (/Content.Security.Policy|Refused to/i.test(m.text())) violations.push(m.text());
  });
  const requests = [];
  page.on("request", (r) => requests.push(`${r.method()} ${new URL(r.url()).pathname}`));

  const offer = await page.goto(env("LINK_URL"));
  if (offer.status() !== 200) throw new Error(`the link answered ${offer.status()}`);
  const asked = await page.textContent("main");
  console.log(`browser: the link's page reads: ${asked.replace(/\s+/g, " ").trim()}`);
  if (!/ends at .* UTC/.test(asked) || !/more\?/.test(asked)) {
    throw new Error(`the page does not say when the lab ends and what the click does: ${asked}`);
  }
  // The style applies (allowed by its hash): the button is drawn blue, not as the default.
  const color = await page.$eval("button", (b) => getComputedStyle(b).backgroundColor);
  if (color !== "rgb(31, 111, 235)") throw new Error(`the page's own style was refused: ${color}`);
  if (shots) await page.screenshot({ path: path.join(shots, "link-offer.png") });

  await Promise.all([page.waitForNavigation(), page.click("button[type=submit]")]);
  const done = await page.textContent("main");
  console.log(`browser: after the click: ${done.replace(/\s+/g, " ").trim()}`);
  if (!/now ends at .* UTC/.test(done)) throw new Error(`no new end time after the click: ${done}`);
  if (shots) await page.screenshot({ path: path.join(shots, "link-done.png") });

  // Opening the link again: it says it was used, and offers nothing more.
  const again = await page.goto(env("LINK_URL"));
  const reused = await page.textContent("main");
  if (again.status() !== 200 || !/used already/.test(reused) || (await page.$("button"))) {
    throw new Error(`the link opened again answered ${again.status()}: ${reused}`);
  }
  console.log(`browser: used again: ${reused.replace(/\s+/g, " ").trim()}`);
  if (violations.length) throw new Error(`policy violations: ${violations.join("; ")}`);
  // The browser's own favicon request aside, the page loads nothing but itself.
  const outside = requests.filter((r) => !r.includes("/links/") && !r.endsWith("/favicon.ico"));
  if (outside.length) throw new Error(`the page loaded more than itself: ${outside.join(", ")}`);
  console.log(`browser: requests ${JSON.stringify(requests)}`);
} finally {
  await browser.close();
}
