//! `reembed-bench`: the benchmark suite (issue 5), a workspace member of its own so a release
//! build of the service does not build it. Each benchmark measures a figure of the service
//! against a baseline measured in the same run, and prints one Markdown section;
//! `bench/run.sh` wraps the output with the machine and the date into `bench/RESULTS.md`.
//!
//! `--smoke` runs every benchmark at tiny sizes in seconds, so CI keeps the code compiling and
//! running; it asserts no timing. The suite uses only the library's public API. This file
//! holds what the benchmarks share: sizes, statistics, a corpus, a store filled directly (fast
//! set-up, not part of any figure) and a server run in-process on a port-0 listener.

mod ann;
mod backfill;
mod cpu;
mod floor;
mod live;
mod micro;
mod process;
mod query;
mod routing;
mod scaling;
// Shared with the tests, which also use its outages and 429s; the benchmarks do not.
#[allow(dead_code)]
mod serial_provider;
mod stats;
mod writes;
mod wrk;

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use reembed::embed::builtin::HashEmbedder;
use reembed::embed::{ModelInfo, ModelRegistry};
use reembed::index::IndexSet;
use reembed::store::sqlite::SqliteStore;
use reembed::store::{DocumentWrite, Store};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Parses the options and runs the chosen benchmarks; a bad argument exits 2, a failed
/// benchmark 1.
fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let options = match Options::parse(&args) {
        Ok(options) => options,
        Err(message) => {
            eprintln!("{message}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    // The in-process servers log their warnings and errors, so a failed request says why.
    reembed::telemetry::init_with("warn");
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("cannot start the tokio runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(options)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("benchmark failed: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// The command line, printed after a bad argument.
const USAGE: &str =
    "usage: reembed-bench [--smoke] [--only query,ann,routing,backfill,writes,live,scaling,micro]";

/// Every benchmark, in the order they run; `scaling` also reports memory.
const ALL: [&str; 8] = [
    "query", "ann", "routing", "backfill", "writes", "live", "scaling", "micro",
];

/// Which benchmarks to run, and at which sizes.
pub struct Options {
    pub smoke: bool,
    pub only: Vec<String>,
}

impl Options {
    pub fn parse(args: &[String]) -> Result<Options, String> {
        let mut options = Options {
            smoke: false,
            only: ALL.iter().map(|&name| name.to_owned()).collect(),
        };
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--smoke" => options.smoke = true,
                "--only" => {
                    let list = args.next().ok_or("--only needs a list")?;
                    options.only = list.split(',').map(str::to_owned).collect();
                    if let Some(unknown) = options.only.iter().find(|n| !ALL.contains(&n.as_str()))
                    {
                        return Err(format!("unknown benchmark {unknown}"));
                    }
                }
                other => return Err(format!("unknown argument {other}")),
            }
        }
        Ok(options)
    }

    fn wants(&self, name: &str) -> bool {
        self.only.iter().any(|n| n == name)
    }
}

/// Runs the chosen benchmarks and prints their Markdown sections to stdout, in order.
pub async fn run(options: Options) -> anyhow::Result<()> {
    if options.wants("query") {
        let sizes = query::Sizes::new(options.smoke);
        println!("{}", query::run(&sizes).await?);
    }
    if options.wants("ann") {
        println!("{}", ann::run(&ann::Sizes::new(options.smoke)).await?);
    }
    if options.wants("routing") {
        let sizes = routing::Sizes::new(options.smoke);
        println!("{}", routing::run(&sizes).await?);
    }
    if options.wants("backfill") {
        let sizes = backfill::Sizes::new(options.smoke);
        println!("{}", backfill::run(&sizes).await?);
    }
    if options.wants("writes") {
        let sizes = writes::Sizes::new(options.smoke);
        println!("{}", writes::run(&sizes).await?);
    }
    if options.wants("live") {
        println!("{}", live::run(&live::Sizes::new(options.smoke)).await?);
    }
    if options.wants("scaling") {
        let sizes = scaling::Sizes::new(options.smoke);
        println!("{}", scaling::run(&sizes).await?);
    }
    if options.wants("micro") {
        println!("{}", micro::report(options.smoke)?);
    }
    SOURCE_STORES.lock().await.clear();
    Ok(())
}

/// Deterministic texts of about `words` words each, from a vocabulary of made-up words, so
/// the hash models see realistic variety. Ids sort in creation order.
pub fn corpus(n: usize, words: usize) -> impl Iterator<Item = (String, String)> {
    const SYLLABLES: [&str; 16] = [
        "ka", "lo", "mi", "ten", "ra", "shu", "vo", "ne", "pi", "dor", "el", "gu", "sa", "fi",
        "zor", "an",
    ];
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        // xorshift64: cheap and reproducible across runs and machines.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    (0..n).map(move |i| {
        let text: Vec<String> = (0..words)
            .map(|_| {
                let r = next() % 4096;
                let parts = [r % 16, (r / 16) % 16, r / 256];
                parts.iter().map(|&p| SYLLABLES[p as usize]).collect()
            })
            .collect();
        (format!("doc-{i:08}"), text.join(" "))
    })
}

/// A new scratch store of `docs` corpus documents with `hash-v1` vectors and their saved
/// approximate graph, as a store that a server has been running on holds them: where every
/// migration benchmark starts, before it migrates to `hash-v2`. Without the saved graph, the
/// server would build it in the background for minutes at a million documents, competing
/// with whatever is measured. Built once per size in a run and copied for each call.
pub async fn source_store(label: &str, docs: usize, words: usize) -> anyhow::Result<ScratchDir> {
    let mut templates = SOURCE_STORES.lock().await;
    let key = (docs, words);
    let built = match templates.iter().position(|(k, _)| *k == key) {
        Some(built) => built,
        None => {
            let dir = ScratchDir::new()?;
            let v1 = HashEmbedder::hash_v1();
            fill_store(label, dir.path(), docs, words, "hash-v1", &v1).await?;
            build_graphs(label, dir.path()).await?;
            templates.push((key, dir));
            templates.len() - 1
        }
    };
    copy_store(templates[built].1.path())
}

/// The stores [`source_store`] built in this run, by documents and words; emptied (and the
/// directories removed) when the run ends.
static SOURCE_STORES: tokio::sync::Mutex<Vec<((usize, usize), ScratchDir)>> =
    tokio::sync::Mutex::const_new(Vec::new());

/// Builds the approximate graph of every model the store in `data_dir` has vectors of, the
/// way the server does at start-up, and saves it where the server looks for it.
async fn build_graphs(label: &str, data_dir: &Path) -> anyhow::Result<()> {
    let start = Instant::now();
    let models = registry("hash-v1");
    let store = SqliteStore::open(data_dir).await?;
    let indexes = IndexSet::load(&models, &store, Some(data_dir.join("indexes"))).await?;
    store.close().await;
    while models
        .models()
        .iter()
        .any(|model| indexes.unsynced(&model.id) > 0)
    {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    tokio::task::spawn_blocking(move || indexes.close()).await?;
    eprintln!("{label}: built the graphs in {:?}", start.elapsed());
    Ok(())
}

/// A new scratch store holding a copy of every file of the store in `template`.
pub fn copy_store(template: &Path) -> anyhow::Result<ScratchDir> {
    let dir = ScratchDir::new()?;
    copy_files(template, dir.path())?;
    Ok(dir)
}

/// Copies every file of `from`, and of its folders, into `to`.
fn copy_files(from: &Path, to: &Path) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            std::fs::create_dir_all(&target)?;
            copy_files(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

/// Writes the corpus with vectors of `model` straight into a new store in `data_dir`, in
/// chunks of 1,000 documents, and closes it; logs how long that took under `label`.
pub async fn fill_store(
    label: &str,
    data_dir: &Path,
    docs: usize,
    words: usize,
    model: &str,
    embedder: &HashEmbedder,
) -> anyhow::Result<()> {
    let start = Instant::now();
    let store = SqliteStore::open(data_dir).await?;
    let mut chunk = Vec::with_capacity(1000);
    for (id, text) in corpus(docs, words) {
        let vector = embedder.embed_one(&text);
        chunk.push(DocumentWrite {
            id,
            text,
            metadata: serde_json::json!({}),
            vectors: vec![(model.to_owned(), vector)],
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
    store.close().await;
    eprintln!("{label}: stored {docs} documents in {:?}", start.elapsed());
    Ok(())
}

/// Starts migration `id` to `target` on the server at `base` with the given bounds; returns
/// once the service has answered (its backfill queue is built by then).
pub async fn start_migration(
    base: &str,
    id: &str,
    target: &str,
    (batch_size, max_concurrent): (u32, u32),
) -> anyhow::Result<()> {
    let body = serde_json::json!({
        "id": id, "target_model": target, "start": true,
        "config": {"batch_size": batch_size, "max_concurrent": max_concurrent},
    });
    let reply = reqwest::Client::new()
        .post(format!("{base}/v1/migrations"))
        .json(&body)
        .send()
        .await?;
    anyhow::ensure!(
        reply.status().is_success(),
        "create migration: {}",
        reply.text().await?
    );
    Ok(())
}

/// Sends `POST {base}/v1/migrations/{id}/{action}` (pause, resume, cancel, ...).
pub async fn migration_action(base: &str, id: &str, action: &str) -> anyhow::Result<()> {
    let reply = reqwest::Client::new()
        .post(format!("{base}/v1/migrations/{id}/{action}"))
        .send()
        .await?;
    anyhow::ensure!(
        reply.status().is_success(),
        "{action} migration: {}",
        reply.text().await?
    );
    Ok(())
}

/// The progress document of migration `id`.
pub async fn progress(base: &str, id: &str) -> anyhow::Result<serde_json::Value> {
    let url = format!("{base}/v1/migrations/{id}/progress");
    Ok(reqwest::get(url).await?.error_for_status()?.json().await?)
}

/// Polls migration `id` every 10 ms until it is `completed`; fails if it ends otherwise.
pub async fn wait_completed(base: &str, id: &str) -> anyhow::Result<()> {
    loop {
        let progress = progress(base, id).await?;
        match progress["state"].as_str() {
            Some("completed") => return Ok(()),
            Some("in_progress") => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
            other => anyhow::bail!("the migration ended {other:?}: {progress}"),
        }
    }
}

/// Ends migration `id`'s rollback window now, then waits until its source vectors are
/// deleted (progress `source_cleanup.state` is `done`).
pub async fn finalize_and_clean_up(base: &str, id: &str) -> anyhow::Result<()> {
    reqwest::Client::new()
        .post(format!("{base}/v1/migrations/{id}/finalize"))
        .send()
        .await?
        .error_for_status()?;
    loop {
        let progress = progress(base, id).await?;
        match progress["source_cleanup"]["state"].as_str() {
            Some("done") => return Ok(()),
            Some("waiting" | "deleting") => {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await
            }
            other => anyhow::bail!("the cleanup ended {other:?}: {progress}"),
        }
    }
}

/// The gauges `reembed_index_vectors` and `reembed_index_bytes` of every (model, kind) the
/// server's `/metrics` reports: what its in-memory indexes hold (`exact`: the f32 rows,
/// `hnsw`: the approximate graph).
pub async fn index_gauges(base: &str) -> anyhow::Result<Vec<IndexGauge>> {
    let text = reqwest::get(format!("{base}/metrics"))
        .await?
        .error_for_status()?
        .text()
        .await?;
    let mut gauges: Vec<IndexGauge> = Vec::new();
    for line in text.lines() {
        let Some((name, rest)) = line.split_once('{') else {
            continue;
        };
        if name != "reembed_index_vectors" && name != "reembed_index_bytes" {
            continue;
        }
        let (labels, value) = rest.rsplit_once("} ").context("a gauge line")?;
        let label = |key: &str| -> anyhow::Result<String> {
            let start = labels
                .find(&format!("{key}=\""))
                .with_context(|| format!("no {key} in {line}"))?
                + key.len()
                + 2;
            let end = labels[start..].find('"').context("a closed label")? + start;
            Ok(labels[start..end].to_owned())
        };
        let (model, kind) = (label("model")?, label("kind")?);
        let value = value.trim().parse::<f64>()? as u64;
        let position = gauges
            .iter()
            .position(|g| g.model == model && g.kind == kind);
        let gauge = match position {
            Some(at) => &mut gauges[at],
            None => {
                gauges.push(IndexGauge {
                    model,
                    kind,
                    vectors: 0,
                    bytes: 0,
                });
                gauges.last_mut().expect("just pushed")
            }
        };
        if name == "reembed_index_vectors" {
            gauge.vectors = value;
        } else {
            gauge.bytes = value;
        }
    }
    Ok(gauges)
}

/// One in-memory index of the server, as `/metrics` reports it.
#[derive(Debug, Clone, Default)]
pub struct IndexGauge {
    pub model: String,
    /// `exact` (the f32 rows) or `hnsw` (the graph).
    pub kind: String,
    pub vectors: u64,
    pub bytes: u64,
}

/// A registry of the built-in models with `active` as the active model.
pub fn registry(active: &str) -> ModelRegistry {
    let mut models = ModelRegistry::new(active);
    let info = |id: &str, dimensions| ModelInfo {
        id: id.to_owned(),
        provider: "builtin".to_owned(),
        dimensions,
    };
    models.insert(info("hash-v1", 256), Arc::new(HashEmbedder::hash_v1()));
    models.insert(info("hash-v2", 384), Arc::new(HashEmbedder::hash_v2()));
    models
}

/// A reembed served in-process on a port-0 listener; `stop` shuts it down gracefully.
pub struct Server {
    pub base: String,
    stop: oneshot::Sender<()>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Server {
    /// Starts a server with `config`.
    pub async fn start(config: reembed::Config, models: ModelRegistry) -> anyhow::Result<Server> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}", listener.local_addr()?);
        let (stop, stopped) = oneshot::channel::<()>();
        let shutdown = async {
            let _ = stopped.await;
        };
        let task = tokio::spawn(reembed::serve(listener, config, models, shutdown));
        wait_ready(&base).await?;
        Ok(Server { base, stop, task })
    }

    /// Starts a server on `data_dir`, runs `measure` against its base URL, and stops the
    /// server whether or not the measurement succeeded.
    pub async fn serving<T>(
        data_dir: &Path,
        models: ModelRegistry,
        measure: impl AsyncFnOnce(&str) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        Self::serving_with(reembed::Config::new(data_dir), models, measure).await
    }

    /// `serving` with `config` instead of the defaults.
    pub async fn serving_with<T>(
        config: reembed::Config,
        models: ModelRegistry,
        measure: impl AsyncFnOnce(&str) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        let server = Server::start(config, models).await?;
        let measured = measure(&server.base).await;
        after_stop(measured, server.stop().await)
    }

    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        self.task.await.context("the server task panicked")?
    }
}

/// The outcome of a measurement whose server was then stopped: the measurement's error, if
/// any, says more than the stop's.
pub fn after_stop<T>(
    measured: anyhow::Result<T>,
    stopped: anyhow::Result<()>,
) -> anyhow::Result<T> {
    let value = measured?;
    stopped.map(|()| value)
}

/// Polls `GET {base}/readyz` every 50 ms, for up to two minutes (a million vectors load first).
async fn wait_ready(base: &str) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    for _ in 0..2400 {
        let reply = client.get(format!("{base}/readyz")).send().await;
        if reply.is_ok_and(|r| r.status().is_success()) {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    anyhow::bail!("the server at {base} never became ready")
}

/// A directory under the system's temporary directory, removed when dropped (`tempfile` is
/// only a dev-dependency of the crate).
pub struct ScratchDir(std::path::PathBuf);

impl ScratchDir {
    pub fn new() -> anyhow::Result<ScratchDir> {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("reembed-bench-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&path)?;
        Ok(ScratchDir(path))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
