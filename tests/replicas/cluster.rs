//! `Cluster`: three `reembed serve` processes on one PostgreSQL database of their own, with a
//! `SerialProvider` serving the target model, and a connection of the test's own to that
//! database, to read the shared tables (leases, queue, counts, vectors) from outside.

use std::ffi::OsString;
use std::time::Duration;

use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{Connection, PgConnection, Row};
use tempfile::TempDir;

use crate::client::Api;
use crate::process::ServerProcess;
use crate::serial_provider::{SerialProvider, Settings, Speed, text};

/// Replicas in every cluster.
pub const REPLICAS: usize = 3;
/// The registry id of the provider's model, the target of every migration here.
pub const TARGET: &str = "serial";
/// The active model the corpus is loaded with (built in, computed by each replica).
pub const SOURCE: &str = "hash-v1";
const DIMENSIONS: usize = 64;
/// `--backfill-lease-secs`: short, so a killed replica's batches are redone soon.
pub const LEASE: Duration = Duration::from_secs(3);
/// Documents in every corpus, as issue 13 asks.
pub const DOCUMENTS: usize = 20_000;
/// Characters of every text, corpus and writes alike, so every batch costs the same.
pub const TEXT_CHARS: usize = 100;

/// The provider's speed: 5 ms a request and 12 µs a character, so a batch of 50 texts takes
/// 65 ms and 20,000 documents take at least 26 s, however many replicas ask.
pub fn speed() -> Speed {
    Speed {
        per_request: Duration::from_millis(5),
        per_char: Duration::from_micros(12),
    }
}

/// The registry every replica reads (`--config`). The latency budget is wide, so that each
/// replica's controller grows to the migration's bounds: the bound under test is the
/// database's, which only binds if the replicas together ask for more.
fn registry(provider: &SerialProvider) -> String {
    provider.registry_toml(
        TARGET,
        DIMENSIONS,
        64,
        "interactive_latency_budget_ms = 2000",
    )
}

/// The URL of the PostgreSQL server the tests create their databases on.
fn server_url() -> String {
    std::env::var("REEMBED_TEST_DATABASE_URL").unwrap_or_else(|_| {
        panic!(
            "the replica tests need REEMBED_TEST_DATABASE_URL: a PostgreSQL server with \
             pgvector, on which each test creates a database of its own. scripts/test.sh starts \
             one and sets it; by hand: . scripts/postgres.sh; start_postgres dev; \
             export REEMBED_TEST_DATABASE_URL=$database_url"
        )
    })
}

/// Creates a database of its own on the test server; its URL.
async fn create_database() -> String {
    let server = server_url();
    let name = format!("reembed_replicas_{}", uuid::Uuid::new_v4().simple());
    let mut admin = PgConnection::connect(&server)
        .await
        .expect("connect to REEMBED_TEST_DATABASE_URL");
    sqlx::raw_sql(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
        .expect("create a test database");
    let (base, _) = server
        .rsplit_once('/')
        .expect("a URL ending in a database name");
    format!("{base}/{name}")
}

/// The corpus: `doc-00000` … with texts of `TEXT_CHARS` characters.
pub fn corpus() -> Vec<(String, String)> {
    (0..DOCUMENTS)
        .map(|n| (doc_id(n), text("corpus", n, TEXT_CHARS)))
        .collect()
}

/// The id of the corpus's `n`-th document.
pub fn doc_id(n: usize) -> String {
    format!("doc-{n:05}")
}

/// One row of `backfill_leases`: a claim's slot, held by a replica until it expires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub token: String,
    pub replica: String,
    /// Not yet expired by the database's clock: the batch still counts as in flight.
    pub live: bool,
}

/// The migration row's counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub total: i64,
    pub processed: i64,
    pub skipped: i64,
}

/// Three replicas, their provider and their database.
pub struct Cluster {
    /// `None` once killed.
    replicas: Vec<Option<ServerProcess>>,
    /// `--replica-id` of each, as progress `replicas` names them.
    pub ids: Vec<String>,
    pub provider: SerialProvider,
    /// The test's own connections to the replicas' database.
    pub db: PgPool,
    /// The registry file and each replica's `--data-dir`.
    _dir: TempDir,
}

impl Cluster {
    /// A provider, a new database, and three replicas started at once on it (their schema
    /// migrations race, as replicas' do), each with a short lease.
    pub async fn start() -> Self {
        crate::helpers::init_logs();
        let url = create_database().await;
        let provider = SerialProvider::start(Settings {
            dimensions: DIMENSIONS,
            speed: speed(),
        })
        .await
        .expect("the provider starts");
        let dir = tempfile::tempdir().expect("a temporary directory");
        let registry_file = dir.path().join("models.toml");
        std::fs::write(&registry_file, registry(&provider)).expect("write the registry");
        let ids: Vec<String> = (0..REPLICAS).map(|i| format!("replica-{i}")).collect();
        let starting = ids.iter().map(|id| {
            let data_dir = dir.path().join(id);
            std::fs::create_dir(&data_dir).expect("a data directory");
            let flags: Vec<OsString> = vec![
                "--data-dir".into(),
                data_dir.into(),
                "--database-url".into(),
                url.clone().into(),
                "--replica-id".into(),
                id.into(),
                "--backfill-lease-secs".into(),
                LEASE.as_secs().to_string().into(),
                "--config".into(),
                registry_file.clone().into(),
            ];
            ServerProcess::start_with(flags)
        });
        let replicas = futures_util::future::join_all(starting).await;
        let db = PgPoolOptions::new()
            .max_connections(4)
            .connect(&url)
            .await
            .expect("the test connects to the replicas' database");
        Self {
            replicas: replicas.into_iter().map(Some).collect(),
            ids,
            provider,
            db,
            _dir: dir,
        }
    }

    /// The client of replica `i`, which must be alive.
    pub fn api(&self, i: usize) -> &Api {
        let replica = self.replicas[i].as_ref();
        &replica
            .unwrap_or_else(|| panic!("replica {i} was killed"))
            .api
    }

    /// SIGKILLs replica `i`: no shutdown code runs, its leases stay until they expire.
    pub fn kill(&mut self, i: usize) {
        let replica = self.replicas[i].take().expect("a replica killed once");
        replica.kill();
    }

    /// Loads `corpus`, a third through each replica at once, 1,000 documents a request.
    pub async fn load(&self, corpus: &[(String, String)]) {
        let third = corpus.len().div_ceil(REPLICAS);
        let loads = corpus
            .chunks(third)
            .enumerate()
            .map(|(i, part)| self.api(i).load(part, 1_000));
        futures_util::future::join_all(loads).await;
    }

    /// Every row of `backfill_leases` for `migration`.
    pub async fn leases(&self, migration: &str) -> Vec<Lease> {
        let rows = sqlx::query(
            "SELECT token, replica_id, expires_at > now() AS live FROM backfill_leases
             WHERE migration_id = $1 ORDER BY slot",
        )
        .bind(migration)
        .fetch_all(&self.db)
        .await
        .expect("read backfill_leases");
        rows.iter()
            .map(|row| Lease {
                token: row.get("token"),
                replica: row.get("replica_id"),
                live: row.get("live"),
            })
            .collect()
    }

    /// The leases of `migration` that have not expired: its batches in flight.
    pub async fn live_leases(&self, migration: &str) -> Vec<Lease> {
        let mut leases = self.leases(migration).await;
        leases.retain(|lease| lease.live);
        leases
    }

    /// The documents still queued under the claims `tokens`.
    pub async fn queued_under(&self, tokens: &[String]) -> Vec<String> {
        sqlx::query_scalar(
            "SELECT doc_id FROM backfill_queue WHERE claimed_by = ANY($1) ORDER BY doc_id",
        )
        .bind(tokens)
        .fetch_all(&self.db)
        .await
        .expect("read backfill_queue")
    }

    /// The migration row's counts.
    pub async fn counts(&self, migration: &str) -> Counts {
        let row = sqlx::query("SELECT total, processed, skipped FROM migrations WHERE id = $1")
            .bind(migration)
            .fetch_one(&self.db)
            .await
            .expect("read the migration row");
        Counts {
            total: row.get("total"),
            processed: row.get("processed"),
            skipped: row.get("skipped"),
        }
    }

    /// Each replica's `processed` in `backfill_replicas`, by replica id.
    pub async fn processed_by_replica(&self, migration: &str) -> Vec<(String, i64)> {
        let rows = sqlx::query(
            "SELECT replica_id, processed FROM backfill_replicas WHERE migration_id = $1
             ORDER BY replica_id",
        )
        .bind(migration)
        .fetch_all(&self.db)
        .await
        .expect("read backfill_replicas");
        rows.iter()
            .map(|row| (row.get("replica_id"), row.get("processed")))
            .collect()
    }

    /// How many documents lack a `model` vector of their current version, and how many
    /// documents there are; straight from the tables, whatever any replica believes.
    pub async fn stale_vectors(&self, model: &str) -> (i64, i64) {
        let row = sqlx::query(
            "SELECT count(*) FILTER (WHERE v.version IS DISTINCT FROM d.version) AS stale,
                    count(*) AS documents
             FROM documents d LEFT JOIN vectors v ON v.model = $1 AND v.doc_id = d.id",
        )
        .bind(model)
        .fetch_one(&self.db)
        .await
        .expect("read documents and vectors");
        (row.get("stale"), row.get("documents"))
    }
}

/// Makes the tests of this binary run one at a time: each times pauses and leases against
/// the wall clock, which three more processes on the same two cores would stretch.
pub async fn one_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    ONE_AT_A_TIME.lock().await
}
