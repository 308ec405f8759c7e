//! reembed: change the embedding model of a document corpus with zero downtime.
//!
//! # A tour
//! - **A write** (`PUT /v1/documents/{id}`): `api::documents` asks `documents::Documents` to
//!   upsert; it reads the routing from the `coordinator` (which models to write), embeds with
//!   each (`embed`) — except where the text is unchanged and the stored vector current, which
//!   the write keeps (`store::Kept`) — commits document and vectors in one transaction
//!   (`store`), then applies them to the in-memory indexes (`index`). While a migration
//!   backfills, the same transaction queues the document for the backfill if it lacks a
//!   current target vector.
//! - **A query** (`POST /v1/query`): the routing names the query model (or, for a query whose
//!   `routing_key` is in the sticky canary, the target: `Routing::query_plan`); the text is
//!   embedded with it and searched in that model's index only (vectors of two models never meet).
//!   A share of queries (`shadow_percent`) is then offered, without waiting, to the `shadow`
//!   worker, which runs it on the other model too and records how the two agree.
//! - **A batch** (`backfill`): the supervisor claims up to `batch_size` queued documents,
//!   never with more than `max_concurrent` batches in flight (and, with a `max_cost`, only
//!   while its estimated tokens fit the budget: `domain::cost`); each batch embeds with the
//!   target model and commits with compare-and-set on the document version, dequeuing and
//!   counting each document, and the tokens the provider billed, in the same transaction; the
//!   coordinator follows the counts and completes the migration when the queue is empty.
//! - **The policy** (`domain`) is pure: the state machine, the routing table, progress maths.
//!
//! Start reading at `domain::routing::route`, then `coordinator`, then `backfill`.

pub mod api;
pub mod backfill;
mod cleanup;
pub mod cli;
mod commit_order;
pub mod config;
pub mod coordinator;
pub mod documents;
pub mod domain;
pub mod embed;
pub mod evaluation;
pub mod index;
pub mod load;
mod run_to_end;
mod serving;
pub mod shadow;
mod snapshot;
pub mod store;
mod supervise;
pub mod telemetry;
mod window;

use std::future::Future;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::Config;

use api::AppState;
use backfill::Backfill;
use cleanup::Cleanup;
use coordinator::Coordinator;
use documents::Documents;
use embed::ModelRegistry;
use index::IndexSet;
use load::RequestCount;
use shadow::ShadowInbox;
use store::postgres::{self, PostgresStore};
use store::sqlite::SqliteStore;
use store::{LeaseRequest, ModelIndex, Store};

/// The service's object graph, assembled once by `App::build` for the binary, the tests and
/// the benchmarks alike, so none of them wires the parts its own way.
pub struct App {
    pub config: Config,
    pub models: ModelRegistry,
    pub store: Arc<dyn Store>,
    pub coordinator: Arc<Coordinator>,
    /// The in-memory indexes; `None` when the store searches its own (PostgreSQL).
    pub indexes: Option<Arc<IndexSet>>,
    pub documents: Arc<Documents>,
    /// Counts every request, so the backfill can yield CPU to them.
    pub requests: Arc<RequestCount>,
    /// The shadow worker's end of the queue that `documents` offers shadowed queries to;
    /// `serve` starts the worker on it.
    pub shadow_inbox: ShadowInbox,
}

impl App {
    /// Opens the store under `config.data_dir`, loads the migrations (checking the active
    /// model against `models`) and rebuilds the indexes. Nothing runs yet: `serve` starts the
    /// workers and the HTTP server.
    pub async fn build(config: Config, models: ModelRegistry) -> anyhow::Result<Self> {
        // Install the recorder before anything counts, so no early sample is lost.
        telemetry::metrics();
        let store = open_store(&config).await?;
        let coordinator = Arc::new(Coordinator::load(store.clone(), models.active_model()).await?);
        check_active_model(&coordinator, store.as_ref(), &models, &config).await?;
        let indexes = load_indexes(&config, &models, store.as_ref()).await?;
        let (shadow_queue, shadow_inbox) = shadow::channel();
        let documents = Arc::new(Documents::new(
            coordinator.clone(),
            store.clone(),
            models.clone(),
            indexes.clone(),
            shadow_queue,
        ));
        Ok(Self {
            config,
            models,
            store,
            coordinator,
            indexes,
            documents,
            requests: Arc::new(RequestCount::default()),
            shadow_inbox,
        })
    }

    /// Runs the service on `listener` until `shutdown` resolves: resumes a migration that was
    /// in progress, serves HTTP (closing connections that are slow to send a request head or
    /// idle, see `serving`). At `shutdown` it stops accepting, ends the event feeds, abandons
    /// the backfill batches that wait for their provider (their documents stay queued; a batch
    /// already committing finishes), lets the requests in flight finish (dropping those still
    /// open after `serving::SHUTDOWN_GRACE`), saves each approximate index that changed since
    /// its last save, and closes the database: it returns within that grace plus one batch
    /// commit and the saves (seconds at a million vectors).
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Self {
            config,
            models,
            store,
            coordinator,
            indexes,
            documents,
            requests,
            shadow_inbox,
        } = self;
        let workers = TaskTracker::new();
        let stopping = CancellationToken::new();
        let replica = replica_id(&config, listener.local_addr()?);
        coordinator.name_replica(replica.clone());
        let lease = LeaseRequest {
            replica: replica.clone(),
            duration: config.backfill_lease,
        };
        Backfill::new(
            coordinator.clone(),
            store.clone(),
            documents.clone(),
            requests.clone(),
            &config,
            lease,
        )
        .spawn(&workers, stopping.clone());
        window::spawn(coordinator.clone(), &workers, stopping.clone());
        shadow::spawn(
            shadow_inbox,
            documents.clone(),
            coordinator.clone(),
            store.clone(),
            &workers,
            stopping.clone(),
        );
        Cleanup {
            coordinator: coordinator.clone(),
            store: store.clone(),
            indexes: indexes.clone(),
            models: models.clone(),
            replica,
        }
        .spawn(&workers, stopping.clone());
        snapshot::spawn(
            coordinator.clone(),
            store.clone(),
            &workers,
            stopping.clone(),
        );

        let limits = config.limits;
        let state = AppState {
            limits,
            coordinator,
            documents,
            store: store.clone(),
            indexes: indexes.clone(),
            models,
            requests,
            stopping: stopping.clone(),
        };
        tracing::info!(addr = %listener.local_addr()?, "serving");
        // Everything stops together: the accept loop, the event feeds and the workers.
        let shutdown = async move {
            shutdown.await;
            stopping.cancel();
        };
        serving::serve_http(
            listener,
            api::app(state, config.tokens.clone()),
            limits,
            shutdown,
        )
        .await;

        workers.close();
        workers.wait().await;
        // The graphs are saved once no write can reach them any more.
        if let Some(closing) = indexes.clone()
            && tokio::task::spawn_blocking(move || closing.close())
                .await
                .is_err()
        {
            tracing::error!("saving the approximate indexes panicked");
        }
        store.close().await;
        tracing::info!("stopped cleanly");
        Ok(())
    }
}

/// The PostgreSQL database `config.database_url` names, or else SQLite under
/// `config.data_dir`.
async fn open_store(config: &Config) -> anyhow::Result<Arc<dyn Store>> {
    if let Some(url) = &config.database_url {
        let store = PostgresStore::connect(&url.0, postgres::DEFAULT_CONNECTIONS)
            .await
            .context("cannot open the PostgreSQL store (--database-url)")?;
        return Ok(Arc::new(store));
    }
    let store = SqliteStore::open(&config.data_dir)
        .await
        .with_context(|| format!("cannot open the store in {}", config.data_dir.display()))?;
    Ok(Arc::new(store))
}

/// The in-memory indexes of every model, rebuilt from the store, when the store does not
/// search its own; otherwise `None`, after making sure the store's indexes exist.
async fn load_indexes(
    config: &Config,
    models: &ModelRegistry,
    store: &dyn Store,
) -> anyhow::Result<Option<Arc<IndexSet>>> {
    if let Some(search) = store.vector_search() {
        let specs: Vec<ModelIndex> = models
            .models()
            .into_iter()
            .map(|model| ModelIndex {
                model: model.id.clone(),
                dimensions: model.dimensions,
                expansion_search: models.index_settings(&model.id).expansion_search,
            })
            .collect();
        search
            .prepare_indexes(&specs)
            .await
            .context("cannot prepare the vector indexes in the database")?;
        return Ok(None);
    }
    let index_dir = config.data_dir.join("indexes");
    let indexes = IndexSet::load(models, store, Some(index_dir)).await?;
    Ok(Some(Arc::new(indexes)))
}

/// This process's replica id: `config.replica_id`, or the host name and the port it listens on.
fn replica_id(config: &Config, listening: std::net::SocketAddr) -> String {
    if let Some(id) = &config.replica_id {
        return id.clone();
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| listening.ip().to_string());
    format!("{host}:{}", listening.port())
}

/// Builds the `App` and serves it on `listener` until `shutdown` (see `App::serve`).
pub async fn serve(
    listener: TcpListener,
    config: Config,
    models: ModelRegistry,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    App::build(config, models)
        .await?
        .serve(listener, shutdown)
        .await
}

/// Refuses to start when the store's active model is not in the registry, or when a registry
/// file names another active model for a store that already holds documents: the active model
/// changes only through a migration, never by editing a file.
async fn check_active_model(
    coordinator: &Coordinator,
    store: &dyn Store,
    models: &ModelRegistry,
    config: &Config,
) -> anyhow::Result<()> {
    let active = coordinator.active_model(chrono::Utc::now());
    let named = models.active_model();
    if config.registry_names_active_model && named != active {
        let holds_documents = !store.list_documents(None, 1).await?.is_empty();
        if !holds_documents && coordinator.adopt_initial_model(named).await? {
            return Ok(());
        }
        anyhow::bail!(
            "the config file names {named} as the active model, but this store's documents are \
             indexed with {active}; the active model changes only through a migration \
             (POST /v1/migrations with target_model = \"{named}\"), so set active_model = \"{active}\""
        );
    }
    anyhow::ensure!(
        models.info(&active).is_some(),
        "the store's active model {active} is not configured; add it to the model registry"
    );
    Ok(())
}
