//! Backfill overhead: the service's end-to-end backfill (create and start a migration over
//! HTTP, until `completed`) against a raw loop in this binary that only reads a batch, embeds
//! it and writes the vectors in one transaction: no coordinator, no queue, no HTTP.

use std::path::Path;
use std::time::{Duration, Instant};

use reembed::embed::Embedder;
use reembed::embed::builtin::HashEmbedder;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

use super::stats::{Goal, ms, ratio};
use super::{Server, copy_store, registry, source_store};

pub struct Sizes {
    docs: usize,
    words: usize,
    /// (batch_size, max_concurrent) of each service run.
    configs: Vec<(u32, u32)>,
}

impl Sizes {
    pub fn new(smoke: bool) -> Self {
        if smoke {
            Sizes {
                docs: 200,
                words: 20,
                configs: vec![(50, 2)],
            }
        } else {
            Sizes {
                docs: 200_000,
                words: 100,
                configs: vec![(100, 4), (500, 2), (1000, 1), (1000, 2), (1000, 4)],
            }
        }
    }
}

const TARGET: &str = "hash-v2";

pub async fn run(sizes: &Sizes) -> anyhow::Result<String> {
    let template = source_store("backfill", sizes.docs, sizes.words).await?;

    // Each service run is followed by the raw loop at its batch size, so that a neighbour's
    // load on this shared machine falls on both sides of the comparison alike.
    let (mut service, mut raw) = (Vec::new(), Vec::new());
    for &(batch_size, max_concurrent) in &sizes.configs {
        let dir = copy_store(template.path())?;
        let (elapsed, queueing) = service_backfill(dir.path(), batch_size, max_concurrent).await?;
        let rate = sizes.docs as f64 / elapsed.as_secs_f64();
        service.push((batch_size, max_concurrent, rate, queueing));
        let dir = copy_store(template.path())?;
        let elapsed = raw_backfill(dir.path(), batch_size).await?;
        raw.push((batch_size, sizes.docs as f64 / elapsed.as_secs_f64()));
    }
    Ok(report(sizes, &service, &raw))
}

fn report(sizes: &Sizes, service: &[(u32, u32, f64, Duration)], raw: &[(u32, f64)]) -> String {
    let best_raw = raw.iter().map(|r| r.1).fold(0.0, f64::max);
    let best = service.iter().copied().max_by(|a, b| a.2.total_cmp(&b.2));
    let mut out = format!(
        "## Backfill overhead\n\n{} documents of {} words, `hash-v1` → `{TARGET}`. Service: \
         `POST /v1/migrations` with `start: true` until the progress says `completed`. Raw: \
         one loop reading `batch_size` documents, embedding them with `{TARGET}`, and writing \
         the vectors in one `BEGIN IMMEDIATE` transaction (WAL, synchronous FULL, as the \
         store). Each service run is followed by a raw run at its batch_size; ratios are against the best raw run. Goal ≥ 0.8×. \
         `POST` is the part of the service's time spent in `POST /v1/migrations`, which \
         queues every document before the first batch.\n\n\
         | run | batch_size | max_concurrent | docs/s | ratio vs best raw | `POST` |\n\
         |---|---|---|---|---|---|\n",
        sizes.docs, sizes.words,
    );
    for &(b, c, rate, queueing) in service {
        let vs = ratio(rate, best_raw);
        out += &format!(
            "| service | {b} | {c} | {rate:.0} | {vs} | {} |\n",
            ms(queueing)
        );
    }
    for &(b, rate) in raw {
        out += &format!(
            "| raw loop | {b} | – | {rate:.0} | {} | – |\n",
            ratio(rate, best_raw)
        );
    }
    if let Some((b, c, rate, _)) = best {
        out += &format!(
            "\nBest service configuration: batch_size {b}, max_concurrent {c}: {rate:.0} docs/s, \
             {} of the best raw loop; goal {}.\n",
            ratio(rate, best_raw),
            Goal::AtLeast(0.8).verdict(rate / best_raw),
        );
    }
    out
}

/// The time from `POST /v1/migrations` to `completed`, and the time of the `POST` alone.
async fn service_backfill(
    dir: &Path,
    batch_size: u32,
    max_concurrent: u32,
) -> anyhow::Result<(Duration, Duration)> {
    Server::serving(dir, registry("hash-v1"), async |base| {
        drive_migration(base, batch_size, max_concurrent).await
    })
    .await
}

async fn drive_migration(
    base: &str,
    batch_size: u32,
    max_concurrent: u32,
) -> anyhow::Result<(Duration, Duration)> {
    let start = Instant::now();
    super::start_migration(base, "bench", TARGET, (batch_size, max_concurrent)).await?;
    let queueing = start.elapsed();
    super::wait_completed(base, "bench").await?;
    Ok((start.elapsed(), queueing))
}

/// Read → embed → write in one transaction per batch, until every document has a vector.
async fn raw_backfill(dir: &Path, batch_size: u32) -> anyhow::Result<Duration> {
    let options = SqliteConnectOptions::new()
        .filename(dir.join("reembed.db"))
        .foreign_keys(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full);
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await?;
    let embedder = HashEmbedder::hash_v2();
    let start = Instant::now();
    let mut after = String::new();
    loop {
        let rows: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT id, text, version FROM documents WHERE id > ? ORDER BY id LIMIT ?",
        )
        .bind(&after)
        .bind(i64::from(batch_size))
        .fetch_all(&pool)
        .await?;
        let Some(last) = rows.last() else { break };
        after = last.0.clone();
        let texts: Vec<String> = rows.iter().map(|r| r.1.clone()).collect();
        let vectors = embedder.embed(&texts).await?;
        let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
        for ((id, _, version), vector) in rows.iter().zip(vectors) {
            let data: Vec<u8> = vector.iter().flat_map(|v| v.to_le_bytes()).collect();
            sqlx::query(
                "INSERT INTO vectors (model, doc_id, version, dimensions, data) VALUES (?, ?, ?, ?, ?) \
                 ON CONFLICT (model, doc_id) DO UPDATE SET version = excluded.version, \
                 dimensions = excluded.dimensions, data = excluded.data",
            )
            .bind(TARGET)
            .bind(id)
            .bind(version)
            .bind(vector.len() as i64)
            .bind(data)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
    }
    let elapsed = start.elapsed();
    pool.close().await;
    Ok(elapsed)
}
