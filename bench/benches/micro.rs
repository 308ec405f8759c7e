//! Criterion micro-benchmarks of the hot paths, each beside the baseline it is judged against
//! (`bench/run.sh` runs them and `reembed-bench` reports the ratios in `bench/RESULTS.md`):
//!
//! - `routing/snapshot_at` — what a request pays for its routing decision, against
//!   `routing/route_table`, deciding from the migration each time;
//! - `index/search_top10` — an exact top-10 scan of 10,000 × 384 vectors, against
//!   `index/bandwidth_floor`, reading the same bytes once;
//! - `embed/hash_v2` — embedding one 100-word text with the 384-dimension model, against
//!   `embed/hash_v1`, the 256-dimension one.
//!
//! `cargo test --benches` runs each once, so CI keeps them compiling and working.

#[path = "../src/floor.rs"]
mod floor;

use std::hint::black_box;

use chrono::Utc;
use criterion::{Criterion, criterion_group, criterion_main};
use reembed::domain::{BackfillConfig, Event, Migration, RoutingSnapshot, route};
use reembed::embed::builtin::HashEmbedder;
use reembed::index::VectorIndex;

fn routing(c: &mut Criterion) {
    let now = Utc::now();
    let migration = Migration::plan(
        "bench".into(),
        "hash-v1".into(),
        "hash-v2".into(),
        BackfillConfig::default(),
        now,
    )
    .apply(Event::Start, now)
    .expect("a planned migration starts");
    let snapshot = RoutingSnapshot::new("hash-v1", Some(&migration));
    let mut group = c.benchmark_group("routing");
    group.bench_function("snapshot_at", |b| {
        b.iter(|| black_box(snapshot.at(black_box(now))).clone())
    });
    group.bench_function("route_table", |b| {
        b.iter(|| route(black_box("hash-v1"), Some(black_box(&migration)), now))
    });
    group.finish();
}

/// Pseudo-random unit-free vectors: the scan's cost does not depend on their values.
fn vectors(rows: usize, dims: usize) -> Vec<f32> {
    let mut state: u32 = 0x1234_5678;
    (0..rows * dims)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state as f32 / u32::MAX as f32 - 0.5
        })
        .collect()
}

fn index(c: &mut Criterion) {
    const ROWS: usize = 10_000;
    const DIMS: usize = 384;
    let flat = vectors(ROWS + 1, DIMS);
    let (query, rows) = flat.split_at(DIMS);
    let mut index = VectorIndex::new(DIMS);
    for (i, row) in (0..).zip(rows.chunks_exact(DIMS)) {
        index
            .upsert(i, &format!("doc-{i:08}").into(), 1, row)
            .expect("rows have DIMS dimensions");
    }
    let mut group = c.benchmark_group("index");
    group.bench_function("search_top10", |b| {
        b.iter(|| index.search(black_box(query), 10))
    });
    group.bench_function("bandwidth_floor", |b| {
        b.iter(|| floor::sum(black_box(rows)))
    });
    group.finish();
}

fn embed(c: &mut Criterion) {
    let text = ["lorem", "ipsum", "dolor", "sit", "amet"]
        .repeat(20)
        .join(" ");
    let (v1, v2) = (HashEmbedder::hash_v1(), HashEmbedder::hash_v2());
    let mut group = c.benchmark_group("embed");
    group.bench_function("hash_v1", |b| b.iter(|| v1.embed_one(black_box(&text))));
    group.bench_function("hash_v2", |b| b.iter(|| v2.embed_one(black_box(&text))));
    group.finish();
}

criterion_group!(micro, routing, index, embed);
criterion_main!(micro);
