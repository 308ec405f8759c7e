//! `TestApp`: a real reembed served in-process on a port-0 listener with its own data
//! directory, plus polling, corpus and logging helpers shared by every module.

use std::future::Future;
use std::ops::Deref;
use std::sync::Once;
use std::time::{Duration, Instant};

use reembed::embed::ModelRegistry;
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use crate::client::{Api, Reply};

/// How long a test waits for something the server does by itself (a migration completing on
/// a slow, shared, 2-core machine running a debug build). Failing tests still fail: a wrong
/// terminal state ends the wait at once.
pub const PATIENCE: Duration = Duration::from_secs(180);
/// Polling interval for progress and routing.
pub const POLL: Duration = Duration::from_millis(20);

/// Retries `attempt` every `POLL` until it succeeds; after `timeout`, panics with `what` and
/// the last failure.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut attempt: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match attempt().await {
            Ok(value) => return value,
            Err(last) if Instant::now() >= deadline => {
                panic!("timed out after {timeout:?} waiting for {what}; last seen: {last}")
            }
            Err(_) => tokio::time::sleep(POLL).await,
        }
    }
}

/// A deterministic corpus of `n` documents with ids that sort in creation order.
pub fn corpus(prefix: &str, n: usize) -> Vec<(String, String)> {
    const WORDS: [&str; 12] = [
        "river", "mountain", "lantern", "harbor", "orchard", "meadow", "glacier", "canyon",
        "falcon", "willow", "ember", "tide",
    ];
    (0..n)
        .map(|i| {
            let (a, b) = (WORDS[i % 12], WORDS[(i / 12 + 5 * i) % 12]);
            (
                format!("{prefix}-{i:06}"),
                format!("note {i} on the {a} and the {b}"),
            )
        })
        .collect()
}

/// Routes the server's logs to the test output when `TEST_LOG` is set.
pub fn init_logs() {
    static LOGS: Once = Once::new();
    LOGS.call_once(|| {
        if std::env::var_os("TEST_LOG").is_some() {
            let filter = tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info".into());
            let subscriber = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_test_writer();
            let _ = subscriber.try_init();
        }
    });
}

/// reembed served in-process on a port-0 listener, with a data directory of its own.
pub struct TestApp {
    pub api: Api,
    dir: Option<TempDir>,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Deref for TestApp {
    type Target = Api;
    fn deref(&self) -> &Api {
        &self.api
    }
}

impl TestApp {
    /// The built-in models: hash-v1 (active) and hash-v2.
    pub async fn spawn() -> Self {
        Self::with_models(ModelRegistry::builtin()).await
    }

    pub async fn with_models(models: ModelRegistry) -> Self {
        let dir = tempfile::tempdir().expect("a temporary data directory");
        Self::spawn_in(dir, models).await
    }

    /// `models` served on a fresh data directory with the default `Config` changed by
    /// `configure` (for example a shorter `provider_patience`).
    pub async fn with_config(
        models: ModelRegistry,
        configure: impl FnOnce(&mut reembed::Config),
    ) -> Self {
        let dir = tempfile::tempdir().expect("a temporary data directory");
        let mut config = crate::store::config_in(dir.path()).await;
        configure(&mut config);
        Self::serve_in(dir, models, config).await
    }

    /// Serves the data directory `dir` (for example one `stop` returned) with `models`.
    /// On PostgreSQL (`store`), the database that belongs to `dir`.
    pub async fn spawn_in(dir: TempDir, models: ModelRegistry) -> Self {
        let config = crate::store::config_in(dir.path()).await;
        Self::serve_in(dir, models, config).await
    }

    async fn serve_in(dir: TempDir, models: ModelRegistry, config: reembed::Config) -> Self {
        init_logs();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a free port");
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (shutdown, stop) = oneshot::channel::<()>();
        let stopped = async move {
            let _ = stop.await;
        };
        let server = tokio::spawn(reembed::serve(listener, config, models, stopped));
        let mut app = Self {
            api: Api::new(base),
            dir: Some(dir),
            shutdown: Some(shutdown),
            server: Some(server),
        };
        app.wait_until_healthy().await;
        app
    }

    /// Waits for `/healthz`; if `serve` returns first, fails with its error.
    async fn wait_until_healthy(&mut self) {
        let deadline = Instant::now() + PATIENCE;
        while !self.api.is_healthy().await {
            let server = self.server.as_mut().expect("running");
            if server.is_finished() {
                panic!("reembed::serve stopped before serving: {:?}", server.await);
            }
            assert!(
                Instant::now() < deadline,
                "no /healthz 200 within {PATIENCE:?}"
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Shuts the server down gracefully and asserts it stopped without error.
    pub async fn stop(mut self) -> TempDir {
        let _ = self.shutdown.take().expect("running").send(());
        let server = self.server.take().expect("running");
        let stopped = tokio::time::timeout(PATIENCE, server).await;
        let result = stopped
            .expect("graceful shutdown in time")
            .expect("no panic");
        result.expect("serve returned an error");
        self.dir.take().expect("a data directory")
    }

    /// Stops gracefully and serves the same data directory again with `models`.
    pub async fn restart(self, models: ModelRegistry) -> Self {
        let dir = self.stop().await;
        Self::spawn_in(dir, models).await
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}
