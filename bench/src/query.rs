//! Query: `POST /v1/query` top-10 with `exact: true` over `docs` hash-v2 vectors (384
//! dimensions), against the raw in-process `VectorIndex::search` over the same vectors, and
//! against the bandwidth floor: summing the same number of bytes already in memory. What the
//! server adds to the exact scan; the approximate path is `ann`'s.

use std::time::{Duration, Instant};

use reembed::embed::builtin::HashEmbedder;
use reembed::index::VectorIndex;

use super::floor::sum;
use super::stats::{Goal, median, ms, percentile, time_each};
use super::{Server, corpus, fill_store, registry};

pub struct Sizes {
    docs: usize,
    words: usize,
    /// Sequential requests to the server.
    requests: usize,
    /// Repetitions of the raw scan and of the bandwidth floor.
    reps: usize,
}

impl Sizes {
    pub fn new(smoke: bool) -> Self {
        if smoke {
            Sizes {
                docs: 200,
                words: 20,
                requests: 5,
                reps: 5,
            }
        } else {
            Sizes {
                docs: 100_000,
                words: 100,
                requests: 300,
                reps: 100,
            }
        }
    }
}

const MODEL: &str = "hash-v2";
pub const TOP_K: usize = 10;
/// Alternations of server, raw scan and floor.
const ROUNDS: usize = 3;

pub async fn run(sizes: &Sizes) -> anyhow::Result<String> {
    let dir = super::ScratchDir::new()?;
    let embedder = HashEmbedder::hash_v2();
    fill_store(
        "query",
        dir.path(),
        sizes.docs,
        sizes.words,
        MODEL,
        &embedder,
    )
    .await?;
    let queries: Vec<String> = corpus(16, 8).map(|(_, text)| text).collect();

    let raw = Raw::build(sizes, &embedder, &queries);
    // Rounds alternate the three measures so that a neighbour's burst of load on this shared
    // machine does not land on one of them only.
    let (mut served, mut scan, mut floor) = (Vec::new(), Vec::new(), Vec::new());
    Server::serving(dir.path(), registry(MODEL), async |base| {
        for _ in 0..ROUNDS {
            scan.extend(time_each(sizes.reps / ROUNDS, || raw.search()));
            floor.extend(time_each(sizes.reps / ROUNDS, || {
                sum(std::hint::black_box(&raw.flat))
            }));
            served.extend(serve_queries(base, &queries, sizes.requests / ROUNDS, true).await?);
        }
        Ok(())
    })
    .await?;
    let index_bytes = raw.index.bytes();

    let (server_p50, scan_p50, floor_p50) = (median(&served), median(&scan), median(&floor));
    let mut out = format!(
        "## Query\n\n`POST /v1/query` top-{TOP_K} with `exact: true` (the exact scan; the graph \
         is measured under \"Approximate query\") over {} × 384 `{MODEL}` vectors \
         ({:.1} MB of vector data), {} sequential requests on one connection; raw scan and \
         floor repeated {} times each; the three alternate in {ROUNDS} rounds.\n\n\
         | measure | p50 | p99 | ratio (p50) | goal |\n|---|---|---|---|---|\n",
        sizes.docs,
        index_bytes as f64 / 1e6,
        served.len(),
        scan.len(),
    );
    let row = |name: &str, s: &[Duration], vs: String, goal: String| {
        format!(
            "| {name} | {} | {} | {vs} | {goal} |\n",
            ms(median(s)),
            ms(percentile(s, 99.0)),
        )
    };
    let server_vs_scan = server_p50.as_secs_f64() / scan_p50.as_secs_f64();
    let scan_vs_floor = scan_p50.as_secs_f64() / floor_p50.as_secs_f64();
    out += &row(
        "server `POST /v1/query`",
        &served,
        format!("{server_vs_scan:.2}× raw scan"),
        Goal::AtMost(1.3).verdict(server_vs_scan),
    );
    out += &row(
        "raw `VectorIndex::search`",
        &scan,
        format!("{scan_vs_floor:.2}× floor"),
        Goal::AtMost(2.0).verdict(scan_vs_floor),
    );
    out += &row(
        "bandwidth floor (sum of the same bytes)",
        &floor,
        "1×".into(),
        String::new(),
    );
    Ok(out)
}

/// The stored corpus's vectors in a `VectorIndex` and flat, with the query vectors.
struct Raw {
    index: VectorIndex,
    flat: Vec<f32>,
    queries: Vec<Vec<f32>>,
    next: std::cell::Cell<usize>,
}

impl Raw {
    fn build(sizes: &Sizes, embedder: &HashEmbedder, queries: &[String]) -> Raw {
        let mut index = VectorIndex::new(384);
        let mut flat = Vec::with_capacity(sizes.docs * 384);
        for (handle, (id, text)) in (0..).zip(corpus(sizes.docs, sizes.words)) {
            let vector = embedder.embed_one(&text);
            flat.extend_from_slice(&vector);
            index
                .upsert(handle, &id.into(), 1, &vector)
                .expect("hash-v2 makes 384 dimensions");
        }
        let queries = queries.iter().map(|q| embedder.embed_one(q)).collect();
        Raw {
            index,
            flat,
            queries,
            next: std::cell::Cell::new(0),
        }
    }

    /// Searches with the next query vector, in turn.
    fn search(&self) -> usize {
        let i = self.next.get();
        self.next.set(i + 1);
        let hits = self
            .index
            .search(&self.queries[i % self.queries.len()], TOP_K);
        hits.map_or(0, |h| h.len())
    }
}

/// Sends `requests` top-10 queries in turn on one connection, after three unmeasured ones
/// that open it, asking for the exact scan when `exact`; returns the latency of each
/// measured one.
pub async fn serve_queries(
    base: &str,
    queries: &[String],
    requests: usize,
    exact: bool,
) -> anyhow::Result<Vec<Duration>> {
    let client = reqwest::Client::new();
    let url = format!("{base}/v1/query");
    let mut samples = Vec::with_capacity(requests);
    // A few unmeasured requests open the connection and warm the caches.
    for i in 0..requests + 3 {
        let body =
            serde_json::json!({"text": queries[i % queries.len()], "top_k": TOP_K, "exact": exact});
        let start = Instant::now();
        let reply = client.post(&url).json(&body).send().await?;
        anyhow::ensure!(
            reply.status().is_success(),
            "query answered {}",
            reply.status()
        );
        let bytes = reply.bytes().await?;
        let elapsed = start.elapsed();
        anyhow::ensure!(bytes.len() > 2, "empty query answer");
        if i >= 3 {
            samples.push(elapsed);
        }
    }
    Ok(samples)
}
