// Drives the admin dashboard in headless Chromium against a running balancer:
//
//   cd tests/browser && npm install        # playwright-core only; the browser is Debian's chromium
//   node dashboard_test.mjs http://127.0.0.1:8080 /tmp/dashboard.png KILL_PID KILL_ADDRESS
//
// Opens ${base}/lb/dashboard, waits for the backend rows, clicks Disable on the first backend,
// waits until GET ${base}/lb/backends shows it disabled and the page shows it too, then enables
// it again (through the page). Then the pools and routes: each pool of /lb/pools in its own
// section with its backends, a click on Disable in a named pool's section acting on that pool,
// each route of /lb/routes in the routes table, its request count following requests sent
// through it. Then the history charts: under load from this script (4 loops of
// GET /, bounded in time), it waits until the requests chart shows every backend serving, kills
// the backend at KILL_ADDRESS (process KILL_PID, which the caller started) with SIGKILL, and
// waits until the charts' own data (the uPlot instances') show its dip to 0 requests/s while the
// balancer still served, and its failed tries; it checks the charts drew its line through those
// points (its colour on the canvas where each point sits: above 0 before the kill, at 0 in the
// dip, above 0 on the errors chart), and writes a screenshot of the page.
// With LB_ADMIN_TOKEN set, the token is put where the page keeps it and sent on API calls.
// Exits non-zero on any failure, including an error thrown inside the page.
import { chromium } from "playwright-core";

const [base, screenshotPath, killPid, killAddress] = process.argv.slice(2);
if (!base || !screenshotPath || !/^[0-9]+$/.test(killPid || "") || !killAddress) {
  console.error("usage: node dashboard_test.mjs BASE_URL SCREENSHOT.png KILL_PID KILL_ADDRESS");
  process.exit(2);
}
const apiBase = base.replace(/\/$/, "") + "/lb";
const token = process.env.LB_ADMIN_TOKEN || "";
const TIMEOUT_MS = 15000;

/** `METHOD {apiBase}{path}`'s JSON; throws unless 2xx. */
async function api(path, method = "GET") {
  const response = await fetch(apiBase + path, {
    method,
    headers: token ? { Authorization: "Bearer " + token } : {},
  });
  if (!response.ok) throw new Error(`${method} /lb${path} answered ${response.status}`);
  return response.json();
}

const backends = () => api("/backends");

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

/** Requests in a loop from 4 clients until `stop()` (or 60 s, or 100,000 requests). */
function startLoad() {
  let running = true, sent = 0, failed = 0;
  const deadline = Date.now() + 60000;
  const loop = async () => {
    while (running && Date.now() < deadline && sent < 100000) {
      sent++;
      try {
        const response = await fetch(base.replace(/\/$/, "") + "/");
        await response.arrayBuffer();
        if (!response.ok) failed++;
      } catch (_) {
        failed++;
      }
    }
  };
  const loops = Promise.all([loop(), loop(), loop(), loop()]);
  return { stop: async () => { running = false; await loops; return { sent, failed }; } };
}

/** What the page's charts hold now: for each chart, its series' labels and data (from uPlot). */
function chartData(page) {
  return page.evaluate(() => {
    const charts = (window.lbHistory && window.lbHistory.charts) || {};
    const out = {};
    for (const [name, u] of Object.entries(charts)) {
      out[name] = { labels: u.series.map((s) => s.label), data: u.data.map((column) => Array.from(column)) };
    }
    return out;
  });
}

/**
 * Where chart `chart` drew series `label`: for each of its data points, whether a pixel of the
 * series' colour lies within 2 px of the point's place on the canvas (by the chart's own x and y
 * scales, the ones its axes show), and how many pixels that place is above the chart's 0. Data and
 * canvas are read in one go: the page redraws every 2 s. `last`: whether the series is drawn last
 * (then no other line covers it).
 */
function drawnPoints(page, chart, label) {
  return page.evaluate(([chart, label]) => {
    const u = window.lbHistory.charts[chart];
    const index = u.series.findIndex((s) => s.label === label);
    const s = u.series[index];
    const colour = typeof s.stroke === "function" ? s.stroke(u, index) : s.stroke;
    const want = [1, 3, 5].map((i) => parseInt(colour.slice(i, i + 2), 16));
    const { width, height } = u.ctx.canvas;
    const pixels = u.ctx.getImageData(0, 0, width, height).data;
    // Opaque and of the colour, give or take anti-aliasing.
    const ofColour = (x, y) => {
      if (x < 0 || y < 0 || x >= width || y >= height) return false;
      const p = (y * width + x) * 4;
      return pixels[p + 3] > 200 && want.every((c, k) => Math.abs(pixels[p + k] - c) <= 40);
    };
    const zero = u.valToPos(0, "y", true);
    const points = [];
    u.data[0].forEach((time, i) => {
      const value = u.data[index][i];
      if (value === null || value === undefined) return;
      const x = Math.round(u.valToPos(time, "x", true)), y = Math.round(u.valToPos(value, "y", true));
      let drawn = false;
      for (let dy = -2; dy <= 2; dy++) for (let dx = -2; dx <= 2; dx++) drawn = drawn || ofColour(x + dx, y + dy);
      points.push({ time, value, drawn, above: Math.round(zero - y) });
    });
    return { colour, last: index === u.series.length - 1, points };
  }, [chart, label]);
}

/** The series of `label` in chart `name` of `charts` (from chartData), or undefined. */
function series(charts, name, label) {
  const chart = charts[name];
  const index = chart ? chart.labels.indexOf(label) : -1;
  return index > 0 ? { time: chart.data[0], values: chart.data[index], index } : undefined;
}

/**
 * Each pool of /lb/pools (at least two) has its section, titled with its name and algorithm,
 * holding exactly its backends; a click in a named pool's section acts on that pool's backend
 * (not on the default pool's of the same id); the routes table lists every route of /lb/routes
 * with its pool, and counts the requests sent through it as /lb/routes does.
 */
async function poolsAndRoutesShown(page) {
  const pools = await api("/pools");
  if (pools.length < 2) throw new Error("the test's config has two pools; /lb/pools: " + JSON.stringify(pools));
  const sectionOf = (name) => page.locator(`#pools section.pool[data-pool=${JSON.stringify(name)}]`);
  const backendsOf = (name) => name === "default" ? backends() : api("/pools/" + encodeURIComponent(name) + "/backends");
  for (const pool of pools) {
    const list = await backendsOf(pool.name);
    const section = sectionOf(pool.name);
    for (const b of list) {
      await section.locator(`tbody tr[data-backend-id=${JSON.stringify(b.id)}]`).waitFor({ timeout: TIMEOUT_MS });
    }
    const rows = await section.locator("tbody tr[data-backend-id]").count();
    const title = await section.locator("h2 [data-title]").textContent();
    if (rows !== list.length || !title.includes(pool.name) || !title.includes(pool.algorithm)) {
      throw new Error(`pool ${pool.name}: ${rows} row(s) under "${title}" for ${list.length} backend(s) (${pool.algorithm})`);
    }
    console.log(`pool ${pool.name} (${pool.algorithm}): its ${list.length} backend(s) in its section`);
  }
  const order = await page.locator("#pools section.pool").evaluateAll((all) => all.map((s) => s.dataset.pool));
  if (JSON.stringify(order) !== JSON.stringify(pools.map((p) => p.name))) throw new Error("sections in the order " + order);

  const named = pools.find((p) => p.name !== "default").name;
  const [first] = await backendsOf(named);
  const row = sectionOf(named).locator(`tr[data-backend-id=${JSON.stringify(first.id)}]`);
  await row.locator('button[data-action="disable"]').click();
  await waitFor(`${named}/${first.id} disabled`, () => backendsOf(named), (list) => list.some((b) => b.id === first.id && b.enabled === false));
  await sectionOf(named).locator(`tr[data-backend-id=${JSON.stringify(first.id)}][data-enabled="false"]`).waitFor({ timeout: TIMEOUT_MS });
  if ((await backends()).some((b) => b.enabled === false)) throw new Error("a click in pool " + named + " disabled a default backend");
  await row.locator('button[data-action="enable"]').click();
  await waitFor(`${named}/${first.id} enabled again`, () => backendsOf(named), (list) => list.some((b) => b.id === first.id && b.enabled === true));
  console.log(`disabled and enabled ${named}/${first.id} from its pool's section; the default pool's untouched`);

  const { routes } = await api("/routes");
  if (routes.length < 1) throw new Error("the test's config has a route; /lb/routes has none");
  for (const route of routes) {
    const cells = page.locator(`#routes-panel:not([hidden]) #routes tr[data-route=${JSON.stringify(route.name)}]`);
    await cells.waitFor({ timeout: TIMEOUT_MS });
    const pool = await cells.locator('[data-cell="pool"]').textContent();
    if (route.action.pool !== undefined && pool !== route.action.pool) throw new Error(`route ${route.name}: pool "${pool}"`);
  }
  // Requests through the first route (a path_prefix route) show in its row as /lb/routes counts them.
  const route = routes.find((r) => r.match.path_prefix);
  for (let i = 0; i < 3; i++) {
    const response = await fetch(base.replace(/\/$/, "") + route.match.path_prefix + "/dashboard-test");
    const body = await response.json();
    if (response.status !== 200 || body.request.path !== route.match.path_prefix + "/dashboard-test") {
      throw new Error(`${route.match.path_prefix}/dashboard-test answered ${response.status}: ${JSON.stringify(body)}`);
    }
  }
  const cell = page.locator(`#routes tr[data-route=${JSON.stringify(route.name)}] [data-cell="requests"]`);
  const shown = await waitFor(`route ${route.name}'s requests on the page`, async () => {
    const counted = (await api("/routes")).routes.find((r) => r.name === route.name).requests;
    return { counted, shown: await cell.textContent() };
  }, ({ counted, shown }) => counted >= 3 && shown === counted.toLocaleString("en-US"));
  console.log(`route ${route.name}: its pool and its ${shown.shown} requests in the routes table`);
}

/** Under load, kills the backend at killAddress and finds its dip and failures on the charts. */
async function historyShowsAKill(page) {
  const victim = (await backends()).find((b) => b.address === killAddress);
  if (!victim) throw new Error(`no backend at ${killAddress} in /lb/backends`);
  const load = startLoad();
  try {
    // Both backends serving, on the chart, for two seconds at least.
    await waitFor("every backend serving on the requests chart", () => chartData(page), (charts) => {
      const all = series(charts, "requests", "all");
      const ids = Object.values(charts).length ? charts.requests.labels.slice(2) : [];
      return all && ids.length >= 2 && ids.every((id) => series(charts, "requests", id).values.filter((v) => v > 0).length >= 2);
    });
    process.kill(Number(killPid), "SIGKILL");
    const killedAt = Math.floor(Date.now() / 1000);
    console.log(`killed ${victim.id} (${killAddress}, pid ${killPid}) at ${killedAt}`);
    // Its dip: a second after the kill where it got no try while the balancer answered, and
    // its failed tries around the kill; both in the charts' data.
    const charts = await waitFor(`${victim.id}'s dip and failures on the charts`, () => chartData(page), (charts) => {
      const all = series(charts, "requests", "all"), mine = series(charts, "requests", victim.id);
      const errors = series(charts, "errors", victim.id);
      if (!all || !mine || !errors) return false;
      const dip = mine.time.some((t, i) => t > killedAt && mine.values[i] === 0 && all.values[i] > 0);
      const failed = errors.time.some((t, i) => t >= killedAt - 1 && errors.values[i] > 0);
      return dip && failed;
    });
    const mine = series(charts, "requests", victim.id);
    const before = mine.values.filter((v, i) => mine.time[i] < killedAt && v > 0).length;
    if (before < 2) throw new Error(`${victim.id} served in ${before} second(s) before the kill on the chart`);
    // The charts drew what their data say, where they say it. The victim's line at 0 is drawn
    // in its colour in any case, so a count of its pixels proves nothing: each of its points
    // well above 0 (6 px: more than the 2 px looked around) before the kill must have its colour
    // there, where a flat line has none; each second of its dip must have it at 0; and each
    // second of its failures on the errors chart, above 0.
    const requests = await drawnPoints(page, "requests", victim.id);
    const errors = await drawnPoints(page, "errors", victim.id);
    if (!requests.last || !errors.last) throw new Error(`${victim.id} is not the last series drawn: another line may cover it`);
    const checks = [
      ["requests", "served before the kill", requests.points.filter((p) => p.time < killedAt && p.value > 0 && p.above >= 6)],
      ["requests", "was at 0 after it", requests.points.filter((p) => p.time > killedAt && p.value === 0)],
      ["errors", "failed", errors.points.filter((p) => p.value > 0 && p.above >= 6)],
    ];
    for (const [chart, what, points] of checks) {
      const missed = points.filter((p) => !p.drawn);
      if (points.length === 0 || missed.length > 0) {
        throw new Error(`the ${chart} chart: ${missed.length} of ${points.length} point(s) where ${victim.id} ${what} ` +
          `not drawn in its colour ${requests.colour}: ${JSON.stringify(missed)}`);
      }
      console.log(`the ${chart} chart drew all ${points.length} point(s) where ${victim.id} ${what}`);
    }
    const { sent, failed } = await load.stop();
    console.log(`the charts show ${victim.id}'s dip and failures (${sent} requests sent, ${failed} failed)`);
  } finally {
    await load.stop();
  }
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
  console.log(`disabled ${id} from the dashboard`);

  await row.locator('button[data-action="enable"]').click();
  await waitFor(`${id} enabled again`, backends, (list) => list.some((b) => b.id === id && b.enabled === true));
  await page.locator(`#backends tr[data-backend-id=${JSON.stringify(id)}][data-enabled="true"]`).waitFor({ timeout: TIMEOUT_MS });

  await poolsAndRoutesShown(page);
  await historyShowsAKill(page);
  // Let any notice fade out so the screenshot shows the page alone.
  await page.locator("#notice.shown").waitFor({ state: "detached", timeout: TIMEOUT_MS });
  // Nor a button under the mouse in its hover colour.
  await page.mouse.move(0, 0);
  await page.waitForTimeout(400);
  await page.screenshot({ path: screenshotPath, fullPage: true });
  console.log(`screenshot in ${screenshotPath}`);

  if (pageErrors.length) throw new Error("errors in the page:\n" + pageErrors.join("\n"));
  console.log("dashboard test passed");
} catch (error) {
  failed = true;
  console.error("dashboard test failed:", error && error.stack ? error.stack : error);
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
