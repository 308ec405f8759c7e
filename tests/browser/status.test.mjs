// Headless-Chromium test of the status page (GET /), against a running reembed whose newest
// migration is backfilling behind a blocked cutover gate, with a canary share
// (scripts/browser-test.sh sets that up).
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
  { path: /\/cutover$/, status: 422 },      // the override tried without a reason
];
const OVERRIDE_REASON = "checked by hand <b>in the browser test</b>";   // its markup must stay text

const sleep = (ms) => new Promise((done) => setTimeout(done, ms));
const passed = [];

function check(condition, message) {
  if (!condition) throw new Error(message);
}

async function get(path) {
  const headers = token ? { authorization: `Bearer ${token}` } : {};
  return fetch(base + path, { headers });
}

async function api(path) {
  const res = await get(path);
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

  await checkConfidence(page, id);

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
  check(!(await page.locator("#override").isVisible()), "#override is shown while paused");
  passed.push("#pause pauses the migration, and the page follows");

  await page.locator("#resume").click();
  const resumed = await until(() => api(`/v1/migrations/${id}`), (m) => m.state === "in_progress", 5000);
  check(resumed.state === "in_progress", `after clicking #resume the API says ${resumed.state}`);
  passed.push("#resume resumes it");

  await checkOverride(page, id);
  check((await text("#error")) === "", `#error shows "${await text("#error")}"`);

  await page.evaluate(() => window.scrollTo(0, 0));
  await page.screenshot({ path: join(artifacts, "status-page.png"), fullPage: true });
}

/** The kind and text of each row of the history table, as shown (newest first). */
function historyRows(page) {
  return page.locator("#history tr").evaluateAll((rows) =>
    rows.map((row) => ({ kind: row.dataset.kind, text: row.textContent })));
}

/** The history, the canary share, the blocked gate with its override, the comparison and the
 *  cost, as the migration set up by the script has them. */
async function checkConfidence(page, id) {
  const text = (selector) => page.locator(selector).textContent();
  const kinds = (await until(() => historyRows(page), (rows) => rows.length >= 2, 5000)).map((row) => row.kind);
  check(kinds.includes("created") && kinds.includes("started"), `#history shows the kinds ${JSON.stringify(kinds)}`);
  passed.push("the history table shows the created and started entries");

  check((await text("#canary")).includes("25 %"), `#canary shows "${await text("#canary")}"`);
  passed.push("the canary share is shown");

  const gate = await until(() => text("#gate"), (v) => v === "blocked", 5000);
  check(gate === "blocked", `#gate shows "${gate}", not blocked`);
  const reason = await text("#gate-reason");
  check(/no labelled evaluation yet/i.test(reason), `#gate-reason shows "${reason}"`);
  check(await page.locator("#override").isVisible(), "#override is hidden while the gate blocks");
  passed.push(`the gate shows blocked, "${reason}", with the override`);

  const comparison = await get(`/v1/migrations/${id}/comparison`);
  const shown = comparison.status === 404 ? "#comparison-note" : "#comparison-samples";
  check(comparison.status === 404 || comparison.ok, `GET .../comparison answered ${comparison.status}`);
  check(await page.locator(shown).isVisible(), `${shown} is hidden though the comparison answered ${comparison.status}`);
  const progress = await api(`/v1/migrations/${id}/progress`);
  check(await page.locator("#cost").isVisible() === (progress.cost_so_far != null),
    `#cost visible ${await page.locator("#cost").isVisible()} with cost_so_far ${progress.cost_so_far}`);
  passed.push(`the comparison (${comparison.status}) and the cost (${progress.cost_so_far ?? "none"}) degrade quietly`);
}

/** The override refused without a reason, then accepted with one. */
async function checkOverride(page, id) {
  const text = (selector) => page.locator(selector).textContent();
  const override = page.locator("#override");
  check(await until(() => override.isVisible(), (v) => v, 5000), "#override is hidden after the resume");
  await override.click();
  const refusal = await until(() => text("#override-error"), (v) => v !== "", 5000);
  check(refusal.includes("reason must be 1 to 1000 characters"), `without a reason #override-error shows "${refusal}"`);
  passed.push("an override without a reason shows the server's refusal");

  await page.locator("#override-reason").fill(OVERRIDE_REASON);
  await override.click();
  const { gate } = await until(() => api(`/v1/migrations/${id}/progress`), (p) => p.gate.state !== "blocked", 5000);
  check(gate.state === "overridden", `after the override the API's gate is ${gate.state}`);
  const badge = await until(() => text("#gate"), (v) => v === "overridden", 5000);
  check(badge === "overridden", `after the override #gate shows "${badge}"`);
  check((await text("#gate-reason")).includes(OVERRIDE_REASON), `#gate-reason shows "${await text("#gate-reason")}"`);
  check(!(await override.isVisible()), "#override is still shown after the override");
  check((await text("#override-error")) === "", `#override-error shows "${await text("#override-error")}"`);
  const rows = await until(() => historyRows(page), (all) => all.some((row) => row.kind === "gate_overridden"), 5000);
  const entry = rows.find((row) => row.kind === "gate_overridden");
  check(entry && entry.text.includes(OVERRIDE_REASON), `#history has no gate_overridden row with the reason: ${JSON.stringify(rows)}`);
  passed.push("#override with a reason overrides the gate, and the history says why");
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
