//! Writes: single `PUT /v1/documents/{id}` requests/s and bulk `POST /v1/documents`
//! documents/s, first with no migration (one embedding per document), then with a paused
//! migration (dual writes: two embeddings, no backfill), then with the migration running (dual
//! writes while the backfill works at full speed in the same process).

use std::time::{Duration, Instant};

use super::stats::ratio;
use super::wrk::{Load, Request, Tool};
use super::{Server, corpus, registry, source_store};

pub struct Sizes {
    tool: Tool,
    connections: usize,
    duration: Duration,
    /// Documents already stored: the running migration's backfill.
    docs: usize,
    words: usize,
    /// Documents per bulk request, and concurrent bulk clients.
    bulk_batch: usize,
    bulk_clients: usize,
}

impl Sizes {
    pub fn new(smoke: bool) -> Self {
        if smoke {
            Sizes {
                tool: Tool::InProcess,
                connections: 2,
                duration: Duration::from_millis(200),
                docs: 300,
                words: 20,
                bulk_batch: 20,
                bulk_clients: 2,
            }
        } else {
            Sizes {
                tool: Tool::Wrk,
                connections: 16,
                duration: Duration::from_secs(5),
                docs: 300_000,
                words: 100,
                bulk_batch: 500,
                bulk_clients: 2,
            }
        }
    }
}

const MIGRATION: &str = "bench-writes";

/// The routing under which writes are measured.
#[derive(Clone, Copy)]
enum Mode {
    NoMigration,
    Paused,
    Backfilling,
}

impl Mode {
    fn label(self) -> &'static str {
        match self {
            Mode::NoMigration => "no migration (`hash-v1` only)",
            Mode::Paused => "migration paused (dual write, no backfill)",
            Mode::Backfilling => "migration running (dual write + backfill)",
        }
    }

    fn prefix(self) -> &'static str {
        match self {
            Mode::NoMigration => "none",
            Mode::Paused => "paused",
            Mode::Backfilling => "running",
        }
    }
}

/// The figures of one mode.
struct Measured {
    mode: Mode,
    put: Load,
    bulk_docs_per_sec: f64,
}

pub async fn run(sizes: &Sizes) -> anyhow::Result<String> {
    let dir = source_store("writes", sizes.docs, sizes.words).await?;
    let (measured, backfill_note) =
        Server::serving(dir.path(), registry("hash-v1"), async |base| {
            measure(sizes, base).await
        })
        .await?;
    Ok(report(sizes, &measured, &backfill_note))
}

async fn measure(sizes: &Sizes, base: &str) -> anyhow::Result<(Vec<Measured>, String)> {
    let texts: Vec<String> = corpus(64, sizes.words).map(|(_, text)| text).collect();
    let mut measured = vec![measure_mode(sizes, base, &texts, Mode::NoMigration).await?];
    super::start_migration(base, MIGRATION, "hash-v2", (1000, 4)).await?;
    super::migration_action(base, MIGRATION, "pause").await?;
    measured.push(measure_mode(sizes, base, &texts, Mode::Paused).await?);
    let before = super::progress(base, MIGRATION).await?;
    super::migration_action(base, MIGRATION, "resume").await?;
    let start = Instant::now();
    measured.push(measure_mode(sizes, base, &texts, Mode::Backfilling).await?);
    let after = super::progress(base, MIGRATION).await?;
    let backfilled =
        after["processed"].as_f64().unwrap_or(0.0) - before["processed"].as_f64().unwrap_or(0.0);
    let note = format!(
        "while the migration ran, the backfill processed {backfilled:.0} documents \
         ({:.0} docs/s, counting the dual-written ones) and was `{}` at the end",
        backfilled / start.elapsed().as_secs_f64(),
        after["state"].as_str().unwrap_or("?"),
    );
    Ok((measured, note))
}

async fn measure_mode(
    sizes: &Sizes,
    base: &str,
    texts: &[String],
    mode: Mode,
) -> anyhow::Result<Measured> {
    let put = Request::PutNewDocument {
        base,
        prefix: mode.prefix(),
        text: &texts[0],
    };
    let put = sizes
        .tool
        .run(sizes.connections, sizes.duration, put)
        .await?;
    let bulk_docs_per_sec = bulk(sizes, base, texts, mode).await?;
    Ok(Measured {
        mode,
        put,
        bulk_docs_per_sec,
    })
}

/// `bulk_clients` clients sending `bulk_batch` new documents per request for `duration`;
/// returns the documents acknowledged per second.
async fn bulk(sizes: &Sizes, base: &str, texts: &[String], mode: Mode) -> anyhow::Result<f64> {
    let client = reqwest::Client::new();
    let start = Instant::now();
    let clients: Vec<_> = (0..sizes.bulk_clients)
        .map(|c| {
            let (client, url) = (client.clone(), format!("{base}/v1/documents"));
            let (texts, batch, duration) = (texts.to_vec(), sizes.bulk_batch, sizes.duration);
            let prefix = format!("bulk-{}-{c}", mode.prefix());
            tokio::spawn(async move {
                let mut written = 0;
                while start.elapsed() < duration {
                    let documents: Vec<_> = (written..written + batch)
                        .map(|n| {
                            serde_json::json!({"id": format!("{prefix}-{n}"), "text": texts[n % texts.len()]})
                        })
                        .collect();
                    let body = serde_json::json!({ "documents": documents });
                    let reply = client.post(&url).json(&body).send().await?;
                    let status = reply.status();
                    let answer = reply.text().await?;
                    anyhow::ensure!(status.is_success(), "bulk: {status}: {answer}");
                    written += batch;
                }
                Ok(written)
            })
        })
        .collect();
    let mut written = 0;
    for client in clients {
        written += client.await??;
    }
    Ok(written as f64 / start.elapsed().as_secs_f64())
}

fn report(sizes: &Sizes, measured: &[Measured], backfill_note: &str) -> String {
    let put_command = sizes.tool.command(
        sizes.connections,
        sizes.duration,
        Request::PutNewDocument {
            base: "http://ADDR",
            prefix: "MODE",
            text: "…",
        },
    );
    let mut out = format!(
        "## Writes\n\nSingle writes: `{put_command}`, every request a new document of {} \
         words. Bulk: {} clients each sending `POST /v1/documents` with {} new documents per \
         request for {:?}. The store holds {} documents; the migration is `hash-v1` → \
         `hash-v2` (batch_size 1000, max_concurrent 4), paused right after its start, then \
         resumed; {backfill_note}. Ratios are against the run with no migration; a dual write \
         embeds every document twice (`hash-v1` 256 and `hash-v2` 384 dimensions).\n\n\
         | routing | `PUT` req/s | `PUT` p99 | ratio | bulk docs/s | ratio |\n\
         |---|---|---|---|---|---|\n",
        sizes.words, sizes.bulk_clients, sizes.bulk_batch, sizes.duration, sizes.docs,
    );
    let (put_base, bulk_base) = match measured.first() {
        Some(m) => (m.put.requests_per_sec, m.bulk_docs_per_sec),
        None => return out,
    };
    for m in measured {
        out += &format!(
            "| {} | {:.0} | {} | {} | {:.0} | {} |\n",
            m.mode.label(),
            m.put.requests_per_sec,
            super::stats::ms(m.put.p99),
            ratio(m.put.requests_per_sec, put_base),
            m.bulk_docs_per_sec,
            ratio(m.bulk_docs_per_sec, bulk_base),
        );
    }
    out
}
