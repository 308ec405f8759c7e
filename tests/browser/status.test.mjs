// Headless-Chromium test of the status page (GET /), against a running reembed whose newest
// migration is backfilling (scripts/browser-test.sh sets that up).
//
//   node tests/browser/status.test.mjs <base-url>
//
// REEMBED_API_TOKEN, when set, is sent as a bearer header on API calls and given to the page as
// `?access_token=`. The screenshot goes to target/browser/status-page.png (or
// status-page-failure.png when a check fails). Exits non-zero with a message on any failure.

import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const base = (process.argv[2] || "").replace(/\/$/, "");
if (!base) {
  console.error("usage: node status.test.mjs <base-url>");
  process.exit(2);
}
const token = process.env.REEMBED_API_TOKEN || "";
const artifacts = resolve(dirname(fileURLToPath(import.meta.url)), "../../target/browser");
const CHROMIUM_FLAGS = [
  "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync",
];

// Error statuses the page meets on purpose; the browser logs each as a console error.
const EXPECTED_HTTP_ERRORS = [
  { path: /\/comparison$/, status: 404 },   // a server without the shadow comparison (yet)
];

const sleep = (ms) => new Promise((done) => setTimeout(done, ms));
const passed = [];

function check(condition, message) {
  if (!condition) throw new Error(message);
}

async function api(path) {
  const headers = token ? { authorization: `Bearer ${token}` } : {};
  const res = await fetch(base + path, { headers });
  if (!res.ok) throw new Error(`GET ${path}: ${res.status} ${await res.text()}`);
  return res.json();
}

/** Whether a console message is the browser's report of an expected error status. */
function isExpectedHttpError(message) {
  const path = new URL(message.location().url || "about:blank").pathname;
  return EXPECTED_HTTP_ERRORS.some((expected) => expected.path.test(path)
    && message.text().includes(`status of ${expected.status}`));
}

/** Polls `read` until `ok(value)` holds or `ms` pass; returns the last value. */
async function until(read, ok, ms) {
  const deadline = Date.now() + ms;
  let value = await read();
  while (!ok(value) && Date.now() < deadline) {
    await sleep(100);
    value = await read();
  }
  return value;
}

async function run(page) {
  const { migrations } = await api("/v1/migrations");
  check(migrations.length > 0, "the server has no migration; the script should have started one");
  const id = migrations[0].id;
  const { state: initial } = migrations[0];
  check(initial === "in_progress", `migration ${id} is ${initial}, not in_progress` +
    (initial === "completed" ? ": it finished too fast; raise BROWSER_TEST_DOCUMENTS" : ""));

  const pageUrl = `${base}/${token ? `?access_token=${encodeURIComponent(token)}` : ""}`;
  const response = await page.goto(pageUrl);
  check(response && response.ok(), `GET / answered ${response && response.status()}`);
  const type = response.headers()["content-type"] || "";
  check(type.startsWith("text/html") && type.includes("utf-8"), `GET / content-type is ${type}`);
  passed.push("GET / serves the page as text/html; charset=utf-8");

  const text = (selector) => page.locator(selector).textContent();
  const bar = page.locator("#progress-bar");
  const processed = async () => Number(await bar.getAttribute("data-processed"));
  const total = async () => Number(await bar.getAttribute("data-total"));

  check((await until(() => text("#migration-id"), (v) => v === id, 5000)) === id,
    `#migration-id shows "${await text("#migration-id")}", not ${id}`);
  const shownTotal = await until(total, (v) => v > 0, 5000);
  const apiTotal = (await api(`/v1/migrations/${id}/progress`)).total;
  check(shownTotal === apiTotal, `#progress-bar data-total is ${shownTotal}, the API says ${apiTotal}`);
  check((await text("#phase")).trim() === "migrating", `#phase shows "${await text("#phase")}"`);
  check((await text("#query-model")).trim() === "hash-v1", `#query-model shows "${await text("#query-model")}"`);
  const writeModels = await text("#write-models");
  check(writeModels.includes("hash-v1") && writeModels.includes("hash-v2"), `#write-models shows "${writeModels}"`);
  passed.push("routing and the newest migration are shown");

  const first = await processed();
  await sleep(2000);
  const second = await until(processed, (v) => v > first, 4000);
  check(second > first, `the progress bar did not advance: data-processed ${first}, then ${second}`);
  check(second <= shownTotal, `data-processed ${second} exceeds data-total ${shownTotal}`);
  check(/docs\/s/.test(await text("#throughput")), `#throughput shows "${await text("#throughput")}"`);
  const samples = Number(await page.locator("#chart").getAttribute("data-samples"));
  check(samples >= 2, `the throughput chart holds ${samples} samples after 2 s of progress`);
  passed.push(`the progress bar advances live (${first} → ${second} of ${shownTotal})`);

  const enabled = async () => Object.fromEntries(await Promise.all(["pause", "resume", "rollback", "finalize"]
    .map(async (b) => [b, await page.locator(`#${b}`).isEnabled()])));
  const running = await enabled();
  check(running.pause && !running.resume && running.rollback && !running.finalize,
    `buttons while in_progress: ${JSON.stringify(running)}`);
  passed.push("only pause and rollback are enabled while in progress");

  await page.locator("#pause").click();
  const state = (await until(() => api(`/v1/migrations/${id}`), (m) => m.state !== "in_progress", 5000)).state;
  if (state === "completed") {
    throw new Error("the migration completed before the pause: raise BROWSER_TEST_DOCUMENTS");
  }
  check(state === "paused", `after clicking #pause the API says ${state}, not paused`);
  const shownState = await until(() => text("#state"), (v) => v.trim() === "paused", 5000);
  check(shownState.trim() === "paused", `after the pause #state shows "${shownState}"`);
  const paused = await until(enabled, (b) => b.resume, 3000);
  check(!paused.pause && paused.resume && paused.rollback && !paused.finalize,
    `buttons while paused: ${JSON.stringify(paused)}`);
  check((await text("#error")) === "", `#error shows "${await text("#error")}"`);
  passed.push("#pause pauses the migration, and the page follows");

  await page.evaluate(() => window.scrollTo(0, 0));
  await page.screenshot({ path: join(artifacts, "status-page.png"), fullPage: true });
}

mkdirSync(artifacts, { recursive: true });
for (const stale of ["status-page.png", "status-page-failure.png"]) rmSync(join(artifacts, stale), { force: true });
const profile = mkdtempSync(join(tmpdir(), "reembed-chromium-"));
let context;
let failure = null;
try {
  context = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: CHROMIUM_FLAGS,
    viewport: { width: 1100, height: 900 },
  });
  const page = context.pages()[0] || (await context.newPage());
  const pageErrors = [];
  page.on("pageerror", (error) => pageErrors.push(error.message));
  page.on("console", (message) => message.type() === "error" && !isExpectedHttpError(message)
    && pageErrors.push(message.text()));
  try {
    await run(page);
    check(pageErrors.length === 0, `the page logged errors: ${pageErrors.join("; ")}`);
  } catch (error) {
    await page.screenshot({ path: join(artifacts, "status-page-failure.png"), fullPage: true }).catch(() => {});
    throw error;
  }
} catch (error) {
  failure = error;
} finally {
  await context?.close().catch(() => {});
  rmSync(profile, { recursive: true, force: true });
}

for (const name of passed) console.log(`ok: ${name}`);
if (failure) {
  console.error(`FAIL: status page: ${failure.message}`);
  console.error(`(screenshot: ${join(artifacts, "status-page-failure.png")})`);
  process.exit(1);
}
console.log(`status page: all checks passed; screenshot ${join(artifacts, "status-page.png")}`);
