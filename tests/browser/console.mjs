// Opens the web console in Debian's chromium (headless, driven by playwright-core) and checks
// what an operator would: the hosts and the running instances are listed, the event stream
// shows the deploy, and an instance's console shows a heartbeat arriving live. Prints what it
// saw as JSON for tests/tests/dev.rs and leaves a screenshot.
//
//   node tests/browser/console.mjs URL APP EXPECTED_INSTANCES SCREENSHOT
import { chromium } from "playwright-core";

const [url, app, expected, screenshot] = process.argv.slice(2);
if (!screenshot) {
  console.error("usage: console.mjs URL APP EXPECTED_INSTANCES SCREENSHOT");
  process.exit(2);
}
const TIMEOUT = 60_000;

const browser = await chromium.launch({
  executablePath: process.env.MIRARI_CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
  ],
});
try {
  const page = await browser.newPage({ viewport: { width: 1400, height: 1100 } });
  const problems = [];
  page.on("pageerror", (error) => problems.push(`page error: ${error.message}`));
  page.on("console", (message) => { if (message.type() === "error") problems.push(`console: ${message.text()}`); });
  await page.goto(url);

  // Every instance of the app, running.
  const running = page.locator("#instances tbody tr").filter({ hasText: app }).filter({ hasText: "running" });
  await running.nth(Number(expected) - 1).waitFor({ timeout: TIMEOUT });
  const instances = await running.evaluateAll((rows) => rows.map((row) => row.dataset.instance));
  const hosts = await page.locator("#hosts tbody tr").evaluateAll((rows) => rows.map((row) => row.dataset.host));
  const raft = await page.locator("#raft").textContent();
  const members = await page.locator("#members tbody tr").evaluateAll((rows) => rows.map((row) => row.textContent));
  await page.locator("#events li[data-kind='instance.placed']").first().waitFor({ timeout: TIMEOUT });
  const events = await page.locator("#events li").evaluateAll((items) => items.map((item) => item.dataset.kind));

  // Its console: a heartbeat arrives while we watch.
  await running.first().getByRole("button", { name: "console" }).click();
  const consoleText = () => page.locator("#console").textContent();
  const beats = (text) => [...text.matchAll(/heartbeat (\d+)/g)].map((m) => Number(m[1]));
  await page.waitForFunction(() => /heartbeat \d+/.test(document.getElementById("console").textContent), null, { timeout: TIMEOUT });
  const first = Math.max(...beats(await consoleText()));
  await page.waitForFunction(
    (seen) => [...document.getElementById("console").textContent.matchAll(/heartbeat (\d+)/g)].some((m) => Number(m[1]) > seen),
    first,
    { timeout: TIMEOUT },
  );
  const later = Math.max(...beats(await consoleText()));
  await page.screenshot({ path: screenshot, fullPage: true });
  console.log(JSON.stringify({ raft, members, hosts, instances, events, console_instance: await page.locator("#console-id").textContent(), first, later, problems }));
} finally {
  await browser.close();
}
