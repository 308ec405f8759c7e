//! Approximate query (issue 12): `POST /v1/query` through each model's HNSW graph, against the
//! exact answer (`exact: true`) of the same server, at 100k and 1M × 384; the graph's search
//! in process against FAISS `IndexHNSWFlat` over the same vectors at matched recall; filtered
//! queries; start-up with a saved graph against streaming the vectors from SQLite; and the
//! server's resident memory against the f32 bytes of its vectors.
//!
//! The corpus has neighbourhood structure: documents are written on topics (see `topical`),
//! so a document's nearest neighbours are the documents that share its topic's words, graded
//! by how many they share. Uniformly random words would give nearly orthogonal vectors, whose
//! "nearest" neighbours are noise that no index ranks meaningfully.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::TryStreamExt;
use reembed::embed::ModelRegistry;
use reembed::embed::builtin::HashEmbedder;
use reembed::index::filter::Filter;
use reembed::index::{GraphSettings, IndexSet};
use reembed::store::sqlite::SqliteStore;
use reembed::store::{DocumentWrite, Store};
use serde_json::{Value, json};

use super::process::ServerProcess;
use super::stats::{Goal, median, met, ms, percentile};
use super::{ScratchDir, registry};

const MODEL: &str = "hash-v2";
const DIMS: usize = 384;
const TOP_K: usize = 10;
/// Documents per topic: each document has about this many that share its vocabulary.
const DOCS_PER_TOPIC: usize = 100;
/// The share of documents a filtered query matches: one bucket of ten, in every topic alike.
const BUCKETS: usize = 10;
/// The efSearch values FAISS is swept over, to find the one matching reembed's recall.
const PEER_EFS: &str = "10,16,24,32,48,64,96,128,192,256,384,512";

pub struct Sizes {
    corpora: Vec<usize>,
    queries: usize,
}

impl Sizes {
    pub fn new(smoke: bool) -> Self {
        if smoke {
            Sizes {
                corpora: vec![3_000],
                queries: 5,
            }
        } else {
            Sizes {
                corpora: vec![100_000, 1_000_000],
                queries: 200,
            }
        }
    }
}

/// The search settings measured besides the default: fewer candidates, and more.
fn settings() -> [(&'static str, GraphSettings); 3] {
    let default = GraphSettings::default();
    [
        ("default (ef 128, 8 candidates per hit)", default),
        (
            "ef 64, 4 candidates per hit",
            GraphSettings {
                expansion_search: 64,
                candidates_per_hit: 4,
                ..default
            },
        ),
        (
            "ef 256, 8 candidates per hit",
            GraphSettings {
                expansion_search: 256,
                ..default
            },
        ),
    ]
}

pub async fn run(sizes: &Sizes) -> anyhow::Result<String> {
    let empty = ScratchDir::new()?;
    let config = registry_file(empty.path(), GraphSettings::default())?;
    let fixed = ServerProcess::serving_with(empty.path(), Some(&config), async |server| {
        Ok(server.memory()?.resident)
    })
    .await?;
    let graph = GraphSettings::default();
    let mut out = format!(
        "## Approximate query\n\n\
         Top-{TOP_K} `POST /v1/query` on `{MODEL}` ({DIMS} dimensions) through the HNSW graph \
         (usearch, i8, M = {}, efConstruction {}, candidates rescored from the f32 rows), by \
         the `reembed` binary as a child process, one request at a time; recall@{TOP_K} is \
         against the same server's `exact: true` answer to the same query, and in brackets \
         with ties counted (ann-benchmarks' rule: a hit scoring within {TIE} of the \
         {TOP_K}th true hit is a true neighbour), which tells real misses from near-ties; the \
         goals are judged on the strict figure. The default settings are measured on the first \
         start, once the graph built in the background has caught up, and again after a \
         restart on the graph restored from disk; the other settings on restored graphs. The corpus is \
         topical: {DOCS_PER_TOPIC} documents per topic, each of 30 words, 24 drawn from its \
         topic's 20-word vocabulary and 6 from a shared one of 50,000, so neighbours share \
         words and rank by how many; queries are 6 words of a topic's vocabulary and one \
         shared word. Filtered queries match one bucket of {BUCKETS} (metadata `bucket`), which \
         holds a tenth of every topic's documents, so the true filtered neighbours are the \
         matching tenth of the query's topic, graded down to documents that share few words \
         with it. \
         The peer is FAISS `IndexHNSWFlat` (the same M and efConstruction, inner product on the \
         same unit vectors) swept over efSearch, one query at a time on one thread, against \
         reembed's own graph search in process (`IndexSet::search`) on the graph the server \
         saved. Fixed overhead: the server's resident memory on an empty store, {:.0} MB.\n\n",
        graph.connectivity,
        graph.expansion_add,
        fixed as f64 / 1e6
    );
    for &docs in &sizes.corpora {
        out += &measure(docs, sizes.queries, fixed).await?;
    }
    Ok(out)
}

/// Every figure of one corpus size, as a Markdown table.
async fn measure(docs: usize, queries: usize, fixed: u64) -> anyhow::Result<String> {
    let dir = ScratchDir::new()?;
    let peer_dir = dir.path().join("peer");
    std::fs::create_dir_all(&peer_dir)?;
    let filled = fill(dir.path(), &peer_dir, docs).await?;
    evict_files(dir.path())?;
    let streamed = stream_vectors(dir.path()).await?;
    let texts = query_texts(docs, queries);
    let filter = json!({ "bucket": 3 });

    // First start: no saved graph, so it is built from the rows in the background.
    let config = registry_file(dir.path(), GraphSettings::default())?;
    let started = Instant::now();
    let first = ServerProcess::start_with(dir.path(), Some(&config)).await?;
    let built = async {
        let ready = started.elapsed();
        wait_for_graph(&first.base, docs).await?;
        let graph_built = started.elapsed();
        let truth = answers(&first.base, &texts, None, true).await?;
        let default = answers(&first.base, &texts, None, false).await?;
        let filtered_truth = answers(&first.base, &texts, Some(&filter), true).await?;
        let filtered = answers(&first.base, &texts, Some(&filter), false).await?;
        let resident = first.memory()?.resident;
        anyhow::Ok((
            ready,
            graph_built,
            truth,
            default,
            filtered_truth,
            filtered,
            resident,
        ))
    }
    .await;
    let (ready, graph_built, truth, default, filtered_truth, filtered, resident) =
        super::after_stop(built, first.stop().await)?;

    // Restarts: the graph saved at the first stop is restored, read from disk as the stream was.
    evict_files(dir.path())?;
    let started = Instant::now();
    let restarted = ServerProcess::start_with(dir.path(), Some(&config)).await?;
    let restart = started.elapsed();
    let restored = async {
        anyhow::ensure!(
            graph_vectors(&restarted.base).await? >= docs,
            "the graph was not restored"
        );
        answers(&restarted.base, &texts, None, false).await
    }
    .await;
    let restored = super::after_stop(restored, restarted.stop().await)?;
    let mut rows = vec![
        (settings()[0].0, default),
        ("default, on the graph restored at a restart", restored),
    ];
    for (name, graph) in settings().into_iter().skip(1) {
        let config = registry_file(dir.path(), graph)?;
        let served = ServerProcess::serving_with(dir.path(), Some(&config), async |server| {
            wait_for_graph(&server.base, docs).await?;
            answers(&server.base, &texts, None, false).await
        })
        .await?;
        rows.push((name, served));
    }
    let in_process = search_in_process(dir.path(), &peer_dir, &texts, &truth).await?;
    let peer = run_peer(&peer_dir)?;

    let mut out = format!(
        "### {docs} documents\n\n\
         Stored in {:.0} s; streaming the {docs} vectors from SQLite, read from disk, took \
         {:.1} s. First start: serving after {:.1} s (queries exact until the graph caught \
         up), graph built after {:.0} s ({:.0} vectors/s).\n\n\
         | measure | p50 | p99 | recall@{TOP_K} (with ties counted) | ratio | goal |\n|---|---|---|---|---|---|\n",
        filled.as_secs_f64(),
        streamed.as_secs_f64(),
        ready.as_secs_f64(),
        graph_built.as_secs_f64(),
        docs as f64 / (graph_built - ready).as_secs_f64().max(1e-3),
    );
    let exact_p50 = median(&truth.latencies);
    out += &format!(
        "| server `exact: true` (the ground truth) | {} | {} | 1 | | |\n",
        ms(exact_p50),
        ms(percentile(&truth.latencies, 99.0)),
    );
    for (i, (name, answers)) in rows.iter().enumerate() {
        let recall = answers.recall(&truth);
        let p50 = median(&answers.latencies);
        let goal = if i == 0 && docs >= 1_000_000 {
            let ok = p50 <= Duration::from_millis(2) && recall >= 0.95;
            format!("p50 ≤ 2 ms at recall ≥ 0.95: {}", met(ok))
        } else {
            String::new()
        };
        out += &format!(
            "| server {name} | {} | {} | {} | {:.1}× faster than exact | {goal} |\n",
            ms(p50),
            ms(percentile(&answers.latencies, 99.0)),
            recalls(answers, &truth),
            exact_p50.as_secs_f64() / p50.as_secs_f64(),
        );
    }
    let filtered_p50 = median(&filtered.latencies);
    out += &format!(
        "| server filtered (10%), default | {} | {} | {} | {:.1}× faster than exact | p50 ≤ 3 ms: {} |\n",
        ms(filtered_p50),
        ms(percentile(&filtered.latencies, 99.0)),
        recalls(&filtered, &filtered_truth),
        median(&filtered_truth.latencies).as_secs_f64() / filtered_p50.as_secs_f64(),
        met(filtered_p50 <= Duration::from_millis(3)),
    );
    out += &in_process_rows(&in_process, &truth, peer.as_deref());
    let startup = restart.as_secs_f64() / streamed.as_secs_f64();
    out += &format!(
        "| start-up with the saved graph (to ready; files read from disk) | {:.1} s | | | {startup:.2}× streaming the vectors | {} |\n",
        restart.as_secs_f64(),
        Goal::AtMost(2.0).verdict(startup),
    );
    let f32_bytes = (docs * DIMS * 4) as f64;
    let memory = (resident.saturating_sub(fixed)) as f64 / f32_bytes;
    out += &format!(
        "| resident memory less the fixed overhead | {:.0} MB | | | {memory:.2}× the f32 vectors ({:.0} MB) | {} |\n\n",
        resident.saturating_sub(fixed) as f64 / 1e6,
        f32_bytes / 1e6,
        Goal::AtMost(1.5).verdict(memory),
    );
    Ok(out)
}

/// The recall@k of `answers` against `truth`, strict and with ties counted.
fn recalls(answers: &Answers, truth: &Answers) -> String {
    format!(
        "{:.3} ({:.3})",
        answers.recall(truth),
        answers.recall_with_ties(truth)
    )
}

/// The rows comparing reembed's graph search in process with FAISS at matched recall (strict:
/// the peer reports no scores).
fn in_process_rows(ours: &Answers, truth: &Answers, peer: Option<&[PeerPoint]>) -> String {
    let recall = ours.recall(truth);
    let p50 = median(&ours.latencies);
    let mut out = format!(
        "| `IndexSet::search` in process, default | {} | {} | {} | | |\n",
        ms(p50),
        ms(percentile(&ours.latencies, 99.0)),
        recalls(ours, truth),
    );
    let Some(peer) = peer else {
        return out
            + "| FAISS `IndexHNSWFlat` | not run: no peer Python (bench/run.sh installs it) | | | | |\n";
    };
    match peer.iter().find(|point| point.recall >= recall) {
        Some(point) => {
            let ratio = p50.as_secs_f64() * 1e3 / point.p50_ms;
            out += &format!(
                "| FAISS `IndexHNSWFlat` efSearch {} (the least reaching that recall) | {:.3} ms | {:.3} ms | {:.3} | ours {ratio:.2}× FAISS | {} |\n",
                point.ef,
                point.p50_ms,
                point.p99_ms,
                point.recall,
                Goal::AtMost(1.5).verdict(ratio),
            );
        }
        None => {
            let best = peer.last().map_or(0.0, |point| point.recall);
            out += &format!(
                "| FAISS `IndexHNSWFlat` | never reached recall {recall:.3} (best {best:.3} at efSearch 512) | | | | |\n"
            );
        }
    }
    out
}

/// The documents of a corpus of `n`: id, text and metadata bucket.
fn topical(n: usize) -> impl Iterator<Item = (String, String, usize)> {
    let topics = (n / DOCS_PER_TOPIC).max(1);
    let mut random = xorshift(0x5eed_0000_0000_0001);
    (0..n).map(move |i| {
        let topic = i % topics;
        let words: Vec<String> = (0..30)
            .map(|w| {
                let r = random();
                if w < 24 {
                    topic_word(topic, r % 20)
                } else {
                    made_up_word(1 << 40 | (r % 50_000))
                }
            })
            .collect();
        // The bucket is independent of the topic: each topic has documents in every bucket.
        (
            format!("doc-{i:08}"),
            words.join(" "),
            (i / topics) % BUCKETS,
        )
    })
}

/// `count` queries over the topics of a corpus of `n`, spread across them.
fn query_texts(n: usize, count: usize) -> Vec<String> {
    let topics = (n / DOCS_PER_TOPIC).max(1);
    let mut random = xorshift(0x0ddba11);
    (0..count)
        .map(|_| {
            let topic = (random() as usize) % topics;
            let mut words: Vec<String> = (0..6).map(|_| topic_word(topic, random() % 20)).collect();
            words.push(made_up_word(1 << 40 | (random() % 50_000)));
            words.join(" ")
        })
        .collect()
}

/// Word `j` of topic `topic`'s vocabulary.
fn topic_word(topic: usize, j: u64) -> String {
    made_up_word((topic as u64) << 8 | j)
}

/// A word of three or four syllables, the same for the same seed.
fn made_up_word(seed: u64) -> String {
    const SYLLABLES: [&str; 16] = [
        "ka", "lo", "mi", "ten", "ra", "shu", "vo", "ne", "pi", "dor", "el", "gu", "sa", "fi",
        "zor", "an",
    ];
    let mut random = xorshift(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let syllables = 3 + random() % 2;
    (0..syllables)
        .map(|_| SYLLABLES[(random() % 16) as usize])
        .collect()
}

/// xorshift64: cheap and reproducible across runs and machines.
fn xorshift(mut state: u64) -> impl FnMut() -> u64 {
    move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    }
}

/// Stores the corpus of `n` with `hash-v2` vectors, and writes the same vectors to
/// `peer_dir/base.f32` for FAISS.
async fn fill(data_dir: &Path, peer_dir: &Path, n: usize) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let embedder = HashEmbedder::hash_v2();
    let store = SqliteStore::open(data_dir).await?;
    let mut base = BufWriter::new(std::fs::File::create(peer_dir.join("base.f32"))?);
    let mut chunk = Vec::with_capacity(1000);
    for (id, text, bucket) in topical(n) {
        let vector = embedder.embed_one(&text);
        for x in &vector {
            base.write_all(&x.to_le_bytes())?;
        }
        chunk.push(DocumentWrite {
            id,
            text,
            metadata: json!({ "bucket": bucket }),
            vectors: vec![(MODEL.to_owned(), vector)],
            kept: None,
        });
        if chunk.len() == 1000 {
            store.write_documents(&chunk).await?;
            chunk.clear();
        }
    }
    if !chunk.is_empty() {
        store.write_documents(&chunk).await?;
    }
    base.flush()?;
    store.close().await;
    eprintln!("ann: stored {n} documents in {:?}", start.elapsed());
    Ok(start.elapsed())
}

/// Drops every file of the data directory `dir` (the database and the saved graphs, not the
/// peer's files) from the page cache, so that what is measured next reads them from disk:
/// this machine's cache does not reliably keep them, even right after they were read, so a
/// measurement "with the files cached" cannot be made to hold here; from disk both the
/// stream and the start-up are measured alike.
fn evict_files(dir: &Path) -> anyhow::Result<()> {
    use std::os::fd::AsRawFd;
    let indexes = dir.join("indexes");
    let dirs = [dir, indexes.as_path()];
    for entry in dirs.iter().filter(|d| d.is_dir()).map(std::fs::read_dir) {
        for file in entry? {
            let path = file?.path();
            if path.is_file() {
                let file = std::fs::File::open(&path)?;
                // Dirty pages are not dropped: write them out first.
                file.sync_all()?;
                // SAFETY: the descriptor is open for the call; the advice reads no memory.
                let failed = unsafe {
                    libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED)
                };
                anyhow::ensure!(failed == 0, "posix_fadvise {}: {failed}", path.display());
            }
        }
    }
    Ok(())
}

/// How long streaming every `hash-v2` vector out of the store takes: the floor of a start-up.
async fn stream_vectors(data_dir: &Path) -> anyhow::Result<Duration> {
    let store = SqliteStore::open(data_dir).await?;
    let start = Instant::now();
    let mut vectors = store.vectors(MODEL);
    let mut count = 0;
    while vectors.try_next().await?.is_some() {
        count += 1;
    }
    let elapsed = start.elapsed();
    drop(vectors);
    store.close().await;
    anyhow::ensure!(count > 0, "no vectors streamed");
    Ok(elapsed)
}

/// A registry with `hash-v2` active and its graph built and searched with `graph`.
fn registry_file(dir: &Path, graph: GraphSettings) -> anyhow::Result<PathBuf> {
    let path = dir.join(format!(
        "registry-{}-{}.toml",
        graph.expansion_search, graph.candidates_per_hit
    ));
    let text = format!(
        "active_model = \"{MODEL}\"\n\n\
         [[models]]\nid = \"hash-v1\"\nprovider = \"builtin\"\ndimensions = 256\n\n\
         [[models]]\nid = \"{MODEL}\"\nprovider = \"builtin\"\ndimensions = {DIMS}\n\n\
         [models.index]\nquantization = \"{}\"\nconnectivity = {}\nexpansion_add = {}\n\
         expansion_search = {}\ncandidates_per_hit = {}\n",
        graph.quantization.name(),
        graph.connectivity,
        graph.expansion_add,
        graph.expansion_search,
        graph.candidates_per_hit,
    );
    std::fs::write(&path, text)?;
    Ok(path)
}

/// The answers to a run of queries: each one's latency and hits (id and score).
struct Answers {
    latencies: Vec<Duration>,
    hits: Vec<Vec<(String, f32)>>,
}

/// How far below the last true hit's score a hit may score and still count as a true
/// neighbour, for recall with ties counted: ann-benchmarks' rule (their distance epsilon).
const TIE: f32 = 1e-3;

impl Answers {
    fn new() -> Self {
        Answers {
            latencies: Vec::new(),
            hits: Vec::new(),
        }
    }

    /// The mean share of `truth`'s hits each answer also has: the strict recall, which the
    /// goals are judged on.
    fn recall(&self, truth: &Answers) -> f64 {
        self.mean_share(truth, |found, truth| {
            found
                .iter()
                .filter(|(id, _)| truth.iter().any(|(true_id, _)| true_id == id))
                .count()
        })
    }

    /// Recall with ties counted: a hit scoring within [`TIE`] of the last true hit's score is
    /// a true neighbour, since which of several equally near documents the truth lists is
    /// arbitrary.
    fn recall_with_ties(&self, truth: &Answers) -> f64 {
        self.mean_share(truth, |found, truth| {
            let Some(&(_, last)) = truth.last() else {
                return 0;
            };
            found
                .iter()
                .filter(|&&(_, score)| score >= last - TIE)
                .count()
        })
    }

    /// The mean over queries of `true_hits(found, truth)` over the truth's number of hits.
    fn mean_share(
        &self,
        truth: &Answers,
        true_hits: impl Fn(&[(String, f32)], &[(String, f32)]) -> usize,
    ) -> f64 {
        let shares: f64 = self
            .hits
            .iter()
            .zip(&truth.hits)
            .map(|(found, truth)| {
                true_hits(found, truth).min(truth.len()) as f64 / truth.len().max(1) as f64
            })
            .sum();
        shares / self.hits.len().max(1) as f64
    }
}

/// Each of `texts` queried in turn on one connection, after three unmeasured queries that
/// open it.
async fn answers(
    base: &str,
    texts: &[String],
    filter: Option<&Value>,
    exact: bool,
) -> anyhow::Result<Answers> {
    let client = reqwest::Client::new();
    let url = format!("{base}/v1/query");
    let query = async |text: &str| -> anyhow::Result<(Duration, Vec<(String, f32)>)> {
        let body = json!({"text": text, "top_k": TOP_K, "filter": filter, "exact": exact});
        let start = Instant::now();
        let reply: Value = client.post(&url).json(&body).send().await?.json().await?;
        let elapsed = start.elapsed();
        let hits = reply["hits"]
            .as_array()
            .with_context(|| format!("no hits in {reply}"))?;
        let hits = hits
            .iter()
            .filter_map(|hit| {
                Some((
                    hit["id"].as_str()?.to_owned(),
                    hit["score"].as_f64()? as f32,
                ))
            })
            .collect();
        Ok((elapsed, hits))
    };
    for text in texts.iter().take(3) {
        query(text).await?;
    }
    let mut answers = Answers::new();
    for text in texts {
        let (latency, hits) = query(text).await?;
        answers.latencies.push(latency);
        answers.hits.push(hits);
    }
    Ok(answers)
}

/// The graph's vector count from `/metrics`.
async fn graph_vectors(base: &str) -> anyhow::Result<usize> {
    let gauges = super::index_gauges(base).await?;
    let graph = gauges.iter().find(|g| g.model == MODEL && g.kind == "hnsw");
    Ok(graph.map_or(0, |g| g.vectors as usize))
}

/// Waits until the server's graph holds all `docs` vectors.
async fn wait_for_graph(base: &str, docs: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(3600);
    while graph_vectors(base).await? < docs {
        anyhow::ensure!(Instant::now() < deadline, "the graph never caught up");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(())
}

/// The graph the server saved, restored in this process: each query searched three times
/// through `IndexSet::search` (the ids are the first round's); writes the queries and the
/// truth's rows for the peer.
async fn search_in_process(
    data_dir: &Path,
    peer_dir: &Path,
    texts: &[String],
    truth: &Answers,
) -> anyhow::Result<Answers> {
    let store = SqliteStore::open(data_dir).await?;
    let models: ModelRegistry = registry(MODEL);
    let indexes = IndexSet::load(&models, &store, Some(data_dir.join("indexes"))).await?;
    store.close().await;
    anyhow::ensure!(
        indexes.unsynced(MODEL) == 0,
        "the saved graph was not restored"
    );
    let embedder = HashEmbedder::hash_v2();
    let vectors: Vec<Vec<f32>> = texts.iter().map(|t| embedder.embed_one(t)).collect();
    write_peer_queries(peer_dir, &vectors, truth)?;
    let filter = Filter::default();
    let mut answers = Answers::new();
    for round in 0..3 {
        for vector in &vectors {
            let start = Instant::now();
            let found = indexes.search(MODEL, vector, TOP_K, &filter, false);
            answers.latencies.push(start.elapsed());
            if round == 0 {
                let hits = found.hits.into_iter().map(|hit| (hit.id, hit.score));
                answers.hits.push(hits.collect());
            }
        }
    }
    indexes.close();
    Ok(answers)
}

/// `queries.f32` and `truth.i64` (the true hits' row numbers) for the peer.
fn write_peer_queries(dir: &Path, vectors: &[Vec<f32>], truth: &Answers) -> anyhow::Result<()> {
    let mut queries = BufWriter::new(std::fs::File::create(dir.join("queries.f32"))?);
    for x in vectors.iter().flatten() {
        queries.write_all(&x.to_le_bytes())?;
    }
    queries.flush()?;
    let mut rows = BufWriter::new(std::fs::File::create(dir.join("truth.i64"))?);
    for hits in &truth.hits {
        for k in 0..TOP_K {
            let row: i64 = match hits.get(k) {
                Some((id, _)) => id.trim_start_matches("doc-").parse()?,
                None => -1,
            };
            rows.write_all(&row.to_le_bytes())?;
        }
    }
    rows.flush()?;
    Ok(())
}

/// One efSearch of the FAISS sweep.
struct PeerPoint {
    ef: u64,
    recall: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// Runs the FAISS peer on `dir` with the Python `REEMBED_BENCH_PYTHON` names (bench/run.sh
/// sets it); `None` without one.
fn run_peer(dir: &Path) -> anyhow::Result<Option<Vec<PeerPoint>>> {
    let graph = GraphSettings::default();
    let Some(python) = std::env::var_os("REEMBED_BENCH_PYTHON") else {
        return Ok(None);
    };
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("peer/faiss_hnsw.py");
    let output = std::process::Command::new(python)
        .arg(script)
        .arg(dir)
        .args([
            &DIMS.to_string(),
            &TOP_K.to_string(),
            &graph.connectivity.to_string(),
            &graph.expansion_add.to_string(),
            PEER_EFS,
        ])
        .output()
        .context("cannot run the FAISS peer")?;
    anyhow::ensure!(
        output.status.success(),
        "the FAISS peer failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut points = Vec::new();
    for line in String::from_utf8(output.stdout)?.lines() {
        let point: Value = serde_json::from_str(line)?;
        if let Some(ef) = point["ef"].as_u64() {
            points.push(PeerPoint {
                ef,
                recall: point["recall"].as_f64().unwrap_or(0.0),
                p50_ms: point["p50_ms"].as_f64().unwrap_or(0.0),
                p99_ms: point["p99_ms"].as_f64().unwrap_or(0.0),
            });
        } else {
            eprintln!("ann: FAISS {point}");
        }
    }
    Ok(Some(points))
}
