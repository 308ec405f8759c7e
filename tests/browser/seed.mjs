// Loads a synthetic corpus into a running reembed and starts a slow migration to hash-v2, so
// that the status page has something to show: with a canary share, and a cutover gate that
// stays blocked (a recall ratio that needs an evaluation, and none is made) until overridden.
// Usage: node seed.mjs <base-url> <documents>
// Prints the migration id. Uses only Node's own fetch.

const [base, countArg = "20000"] = process.argv.slice(2);
if (!base) {
  console.error("usage: node seed.mjs <base-url> [documents]");
  process.exit(2);
}
const count = Number(countArg);
const token = process.env.REEMBED_API_TOKEN;
const BULK = 1000; // the default --max-bulk-documents
const WORDS = ("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike " +
  "november oscar papa quebec romeo sierra tango uniform victor whiskey xray yankee zulu").split(" ");

async function post(path, body) {
  const headers = { "content-type": "application/json" };
  if (token) headers.authorization = `Bearer ${token}`;
  const res = await fetch(base + path, { method: "POST", headers, body: JSON.stringify(body) });
  if (!res.ok) throw new Error(`POST ${path}: ${res.status} ${await res.text()}`);
  return res.json();
}

function text(i) {
  const words = Array.from({ length: 12 }, (_, k) => WORDS[(i * 7 + k * k * 13) % WORDS.length]);
  return `document ${i}: ${words.join(" ")}`;
}

for (let from = 0; from < count; from += BULK) {
  const documents = [];
  for (let i = from; i < Math.min(count, from + BULK); i++) documents.push({ id: `doc-${i}`, text: text(i) });
  await post("/v1/documents", { documents });
}
const migration = await post("/v1/migrations", {
  id: "browser-test",
  target_model: "hash-v2",
  config: { batch_size: 10, max_concurrent: 1, canary_percent: 25, cutover_gate: { min_recall_ratio: 10 } },
});
console.log(migration.id);
