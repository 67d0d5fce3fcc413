// Drives the admin dashboard in headless Chromium against a running balancer:
//
//   cd tests/browser && npm install        # playwright-core only; the browser is Debian's chromium
//   node dashboard_test.mjs http://127.0.0.1:8080 /tmp/dashboard.png
//
// Opens ${base}/lb/dashboard, waits for the backend rows, clicks Disable on the first backend,
// waits until GET ${base}/lb/backends shows it disabled and the page shows it too, writes a
// screenshot, then enables the backend again (through the page) so the balancer is left as found.
// With LB_ADMIN_TOKEN set, the token is put where the page keeps it and sent on API calls.
// Exits non-zero on any failure, including an error thrown inside the page.
import { chromium } from "playwright-core";

const [base, screenshotPath] = process.argv.slice(2);
if (!base || !screenshotPath) {
  console.error("usage: node dashboard_test.mjs BASE_URL SCREENSHOT.png");
  process.exit(2);
}
const apiBase = base.replace(/\/$/, "") + "/lb";
const token = process.env.LB_ADMIN_TOKEN || "";
const TIMEOUT_MS = 15000;

async function backends() {
  const response = await fetch(apiBase + "/backends", {
    headers: token ? { Authorization: "Bearer " + token } : {},
  });
  if (!response.ok) throw new Error("GET /lb/backends answered " + response.status);
  return response.json();
}

/** Polls `read` until `done(value)` or the timeout. */
async function waitFor(what, read, done) {
  const deadline = Date.now() + TIMEOUT_MS;
  let last;
  while (Date.now() < deadline) {
    last = await read();
    if (done(last)) return last;
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
  throw new Error("timed out waiting for " + what + "; last: " + JSON.stringify(last));
}

const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  headless: true,
  args: [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
  ],
});
let failed = false;
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 720 } });
  const pageErrors = [];
  page.on("pageerror", (error) => pageErrors.push(String(error)));
  page.on("console", (message) => {
    if (message.type() === "error") pageErrors.push("console: " + message.text());
  });
  if (token) {
    await page.addInitScript((value) => sessionStorage.setItem("lb-sync-admin-token", value), token);
  }
  const response = await page.goto(apiBase + "/dashboard");
  if (!response || !response.ok()) throw new Error("GET /lb/dashboard answered " + (response && response.status()));

  const firstRow = page.locator("#backends tr[data-backend-id]").first();
  await firstRow.waitFor({ timeout: TIMEOUT_MS });
  const id = await firstRow.getAttribute("data-backend-id");
  const row = page.locator(`#backends tr[data-backend-id=${JSON.stringify(id)}]`);
  const before = (await backends()).find((b) => b.id === id);
  if (!before || before.enabled !== true) throw new Error(`backend ${id} should start enabled: ${JSON.stringify(before)}`);

  await row.locator('button[data-action="disable"]').click();
  await waitFor(`${id} disabled in /lb/backends`, backends, (list) => list.some((b) => b.id === id && b.enabled === false));
  await page.locator(`#backends tr[data-backend-id=${JSON.stringify(id)}][data-enabled="false"]`).waitFor({ timeout: TIMEOUT_MS });
  // Let the "disabled" notice fade out so the screenshot shows the table alone.
  await page.locator("#notice.shown").waitFor({ state: "detached", timeout: TIMEOUT_MS });
  await page.waitForTimeout(400);
  await page.screenshot({ path: screenshotPath, fullPage: true });
  console.log(`disabled ${id} from the dashboard; screenshot in ${screenshotPath}`);

  await row.locator('button[data-action="enable"]').click();
  await waitFor(`${id} enabled again`, backends, (list) => list.some((b) => b.id === id && b.enabled === true));
  await page.locator(`#backends tr[data-backend-id=${JSON.stringify(id)}][data-enabled="true"]`).waitFor({ timeout: TIMEOUT_MS });

  if (pageErrors.length) throw new Error("errors in the page:\n" + pageErrors.join("\n"));
  console.log("dashboard test passed");
} catch (error) {
  failed = true;
  console.error("dashboard test failed:", error && error.stack ? error.stack : error);
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
