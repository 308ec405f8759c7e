//! Settings from the command line and the environment, parsed once at start-up.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;

use clap::{Parser, Subcommand};

use crate::domain::cpu_share::{DEFAULT_MIN_PERCENT, DEFAULT_MIN_SHARE};

/// What `reembed::serve` needs beyond its listener and models.
#[derive(Debug, Clone)]
pub struct Config {
    /// Directory holding the SQLite database (`reembed.db`); created if missing. Unused when
    /// `database_url` names a PostgreSQL database.
    pub data_dir: PathBuf,
    /// A PostgreSQL database (with pgvector) shared by every replica, instead of SQLite under
    /// `data_dir`.
    pub database_url: Option<DatabaseUrl>,
    /// How long an embedding provider may stay unreachable before a migration moves to
    /// `failed`; until then the backfill waits it out.
    pub provider_patience: Duration,
    /// The least share of its full speed a backfill keeps while requests keep the process
    /// busy, in (0, 1]; 1 never yields (`domain::cpu_share`).
    pub backfill_min_cpu_share: f64,
    /// Whether the model registry came from a file whose `active_model` must match the
    /// store's: then a store holding documents of another active model is refused at start-up
    /// (the active model changes only through a migration).
    pub registry_names_active_model: bool,
    /// Bearer tokens for `/v1`, `/metrics` and `/`; `None` leaves them open (loopback use).
    pub tokens: Option<Tokens>,
    /// Request size and time limits.
    pub limits: Limits,
    /// This process's name among the replicas sharing a store (progress `replicas`); `None`
    /// names it by host and listening port once it listens.
    pub replica_id: Option<String>,
    /// How long a backfill claim holds without renewal: a replica that dies mid-batch loses
    /// its documents to another after this long. Batches renew every third of it.
    pub backfill_lease: Duration,
}

/// A `postgres://` URL, which may hold a password: never printed whole.
#[derive(Clone, PartialEq)]
pub struct DatabaseUrl(pub String);

impl std::str::FromStr for DatabaseUrl {
    type Err = std::convert::Infallible;

    fn from_str(url: &str) -> Result<Self, Self::Err> {
        Ok(Self(url.to_owned()))
    }
}

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DatabaseUrl(..)")
    }
}

/// The API tokens: `write` may do everything, `read` only GET and HEAD.
#[derive(Clone)]
pub struct Tokens {
    pub write: String,
    pub read: Option<String>,
}

impl std::fmt::Debug for Tokens {
    // Never print a secret, not even in a debug log of the config.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tokens { .. }")
    }
}

/// Limits that keep one request from hogging the service (API.md 413 / 422 / 503).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Largest request body; larger is 413.
    pub max_body_bytes: usize,
    /// Most documents in one bulk request; more is 422 naming the cap.
    pub max_bulk_documents: usize,
    /// Longest document text in bytes; longer is 422 naming the cap.
    pub max_text_bytes: usize,
    /// Longest time to produce a response's head; longer is 503 (streams are not cut).
    pub request_timeout: Duration,
    /// Longest time a request head may take to arrive, counted from the connection's accept
    /// (first request) or from the head's first byte (later requests); then the connection is
    /// closed (`serving`).
    pub header_read_timeout: Duration,
    /// Longest time a kept-alive connection may stay open between requests with no traffic;
    /// then it is closed (`serving`). An open SSE feed is a request in flight, never idle.
    pub idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 16 * 1024 * 1024,
            max_bulk_documents: 1000,
            max_text_bytes: 1024 * 1024,
            request_timeout: Duration::from_secs(30),
            header_read_timeout: Duration::from_secs(DEFAULT_HEADER_READ_TIMEOUT_SECS),
            idle_timeout: Duration::from_secs(DEFAULT_IDLE_TIMEOUT_SECS),
        }
    }
}

/// Default of `--header-read-timeout-secs`: a real client sends its request head (a few hundred
/// bytes) in one packet, so ten seconds leaves room for a slow link and a few TCP
/// retransmissions, while a client trickling a head byte by byte holds a file descriptor for
/// ten seconds at most instead of forever.
pub const DEFAULT_HEADER_READ_TIMEOUT_SECS: u64 = 10;

/// Default of `--idle-timeout-secs`: a minute lets a client that polls progress or writes in
/// bursts reuse its connection, yet frees the descriptors of clients that went away. Behind a
/// proxy that keeps connections to reembed open, set it above the proxy's own idle timeout,
/// so the proxy closes first and never sends on a connection reembed is closing.
pub const DEFAULT_IDLE_TIMEOUT_SECS: u64 = 60;

/// Default of `--backfill-lease-secs`: long enough that a renewal (every third of it) is
/// never late under load, short enough that a replica's death delays its batches by seconds.
pub const DEFAULT_BACKFILL_LEASE_SECS: u64 = 30;

/// Default of `--provider-patience-secs`: five minutes rides out a provider's restart, a
/// deployment or a short network outage without anyone having to resume the migration.
pub const DEFAULT_PROVIDER_PATIENCE_SECS: u64 = 300;

impl Config {
    /// A config storing its data under `data_dir`, with default limits.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            database_url: None,
            provider_patience: Duration::from_secs(DEFAULT_PROVIDER_PATIENCE_SECS),
            backfill_min_cpu_share: DEFAULT_MIN_SHARE,
            registry_names_active_model: false,
            tokens: None,
            limits: Limits::default(),
            replica_id: None,
            backfill_lease: Duration::from_secs(DEFAULT_BACKFILL_LEASE_SECS),
        }
    }
}

/// The `reembed` command line.
#[derive(Debug, Parser)]
#[command(
    name = "reembed",
    version,
    about = "Change embedding models with zero downtime.",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Flags of the default `serve` when no subcommand is given.
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// Subcommands; `serve` is the default.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP service.
    Serve(ServeArgs),
    /// Print the OpenAPI document (regenerate the checked-in copy with
    /// `cargo run -- openapi > openapi/openapi.json`).
    Openapi,
    /// The client subcommands (import, migrate, status, pause, ...), which talk to a running
    /// service over HTTP.
    #[command(flatten)]
    Client(crate::cli::ClientCommand),
}

/// Flags of `reembed serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, env = "REEMBED_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Directory for the embedded SQLite database.
    #[arg(long, env = "REEMBED_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// Store everything in this PostgreSQL database (with pgvector >= 0.8) instead of SQLite,
    /// shared by any number of replicas: postgres://user:password@host:port/database.
    #[arg(long, env = "REEMBED_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<DatabaseUrl>,
    /// Model registry file (TOML; see reembed.example.toml). Without it: hash-v1 and hash-v2.
    #[arg(long = "config", env = "REEMBED_CONFIG")]
    pub config_file: Option<PathBuf>,
    /// Seconds an embedding provider may stay unreachable before a migration moves to
    /// `failed`; until then the backfill waits it out.
    #[arg(long, env = "REEMBED_PROVIDER_PATIENCE_SECS",
          default_value_t = DEFAULT_PROVIDER_PATIENCE_SECS)]
    pub provider_patience_secs: u64,
    /// While requests keep the server's CPU busy, the backfill slows down to this percentage
    /// of its full speed at least; 100 never slows it.
    #[arg(long, env = "REEMBED_BACKFILL_MIN_CPU_PERCENT",
          default_value_t = DEFAULT_MIN_PERCENT,
          value_parser = clap::value_parser!(u8).range(1..=100))]
    pub backfill_min_cpu_percent: u8,
    /// This replica's name in migration progress, among the replicas sharing a database.
    /// Default: the host name and listening port.
    #[arg(long, env = "REEMBED_REPLICA_ID")]
    pub replica_id: Option<String>,
    /// Seconds a backfill batch holds its documents without renewing its lease (it renews
    /// every third of it): after a replica dies, its batches are redone by others this late.
    #[arg(long, env = "REEMBED_BACKFILL_LEASE_SECS",
          default_value_t = DEFAULT_BACKFILL_LEASE_SECS,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub backfill_lease_secs: u64,
    /// File holding the API token (one line). `REEMBED_API_TOKEN` gives it directly instead.
    #[arg(long, env = "REEMBED_API_TOKEN_FILE")]
    pub api_token_file: Option<PathBuf>,
    /// File holding a read-only token (GET and HEAD only). Or `REEMBED_READ_TOKEN`.
    #[arg(long, env = "REEMBED_READ_TOKEN_FILE")]
    pub read_token_file: Option<PathBuf>,
    /// Listen on a non-loopback address without an API token (anyone who reaches the port can
    /// change or delete documents).
    #[arg(long)]
    pub insecure: bool,
    /// Largest request body in bytes (larger is 413).
    #[arg(long, env = "REEMBED_MAX_BODY_BYTES", default_value_t = Limits::default().max_body_bytes)]
    pub max_body_bytes: usize,
    /// Most documents in one bulk request (more is 422).
    #[arg(long, env = "REEMBED_MAX_BULK_DOCUMENTS", default_value_t = Limits::default().max_bulk_documents)]
    pub max_bulk_documents: usize,
    /// Longest document text in bytes (longer is 422).
    #[arg(long, env = "REEMBED_MAX_TEXT_BYTES", default_value_t = Limits::default().max_text_bytes)]
    pub max_text_bytes: usize,
    /// Seconds a request may take before it is answered 503.
    #[arg(long, env = "REEMBED_REQUEST_TIMEOUT_SECS", default_value_t = Limits::default().request_timeout.as_secs())]
    pub request_timeout_secs: u64,
    /// Seconds a request head may take to arrive (from the connection's start or the head's
    /// first byte) before the connection is closed.
    #[arg(long, env = "REEMBED_HEADER_READ_TIMEOUT_SECS",
          default_value_t = DEFAULT_HEADER_READ_TIMEOUT_SECS,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub header_read_timeout_secs: u64,
    /// Seconds a kept-alive connection may stay open between requests, with no traffic, before
    /// it is closed (an open event feed is a request in flight, never idle).
    #[arg(long, env = "REEMBED_IDLE_TIMEOUT_SECS",
          default_value_t = DEFAULT_IDLE_TIMEOUT_SECS,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub idle_timeout_secs: u64,
}

impl ServeArgs {
    /// The library config these flags and the environment describe. Fails when a token file
    /// cannot be read, or when listening beyond loopback without a token and `--insecure`.
    pub fn config(&self) -> anyhow::Result<Config> {
        let tokens = self.tokens()?;
        if tokens.is_none() && !self.listen.ip().is_loopback() && !self.insecure {
            anyhow::bail!(
                "refusing to listen on {} without an API token: anyone who can reach it could \
                 change or delete your documents. Set REEMBED_API_TOKEN (or --api-token-file), \
                 or pass --insecure if a proxy in front of reembed authenticates",
                self.listen
            );
        }
        Ok(Config {
            data_dir: self.data_dir.clone(),
            database_url: self.database_url.clone(),
            provider_patience: Duration::from_secs(self.provider_patience_secs),
            backfill_min_cpu_share: f64::from(self.backfill_min_cpu_percent) / 100.0,
            registry_names_active_model: self.config_file.is_some(),
            tokens,
            limits: Limits {
                max_body_bytes: self.max_body_bytes,
                max_bulk_documents: self.max_bulk_documents,
                max_text_bytes: self.max_text_bytes,
                request_timeout: Duration::from_secs(self.request_timeout_secs),
                header_read_timeout: Duration::from_secs(self.header_read_timeout_secs),
                idle_timeout: Duration::from_secs(self.idle_timeout_secs),
            },
            replica_id: self.replica_id.clone(),
            backfill_lease: Duration::from_secs(self.backfill_lease_secs),
        })
    }

    fn tokens(&self) -> anyhow::Result<Option<Tokens>> {
        let write = secret("REEMBED_API_TOKEN", self.api_token_file.as_deref())?;
        let read = secret("REEMBED_READ_TOKEN", self.read_token_file.as_deref())?;
        match (write, read) {
            (Some(write), read) => Ok(Some(Tokens { write, read })),
            (None, Some(_)) => {
                anyhow::bail!("a read-only token needs an API token too (REEMBED_API_TOKEN)")
            }
            (None, None) => Ok(None),
        }
    }
}

/// A secret from `file` (first line, trimmed) or else the environment variable `var`; an empty
/// value counts as absent.
fn secret(var: &str, file: Option<&Path>) -> anyhow::Result<Option<String>> {
    let value = match file {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the token file {}", path.display()))?,
        None => std::env::var(var).unwrap_or_default(),
    };
    let value = value.lines().next().unwrap_or_default().trim().to_owned();
    Ok(Some(value).filter(|v| !v.is_empty()))
}

impl Cli {
    /// The subcommand to run, `serve` with its defaults when none was given.
    pub fn command(self) -> Command {
        self.command.unwrap_or(Command::Serve(self.serve))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serve_args(args: &[&str]) -> Result<ServeArgs, clap::Error> {
        let cli = Cli::try_parse_from(std::iter::once("reembed").chain(args.iter().copied()))?;
        Ok(cli.serve)
    }

    #[test]
    fn the_backfill_yields_down_to_a_fifth_unless_told_otherwise() {
        let default = serve_args(&[]).unwrap().config().unwrap();
        assert_eq!(default.backfill_min_cpu_share, 0.2);
        let never = serve_args(&["--backfill-min-cpu-percent", "100"]).unwrap();
        assert_eq!(never.config().unwrap().backfill_min_cpu_share, 1.0);
    }

    #[test]
    fn slow_and_idle_connections_close_after_10_and_60_seconds_unless_told_otherwise() {
        let default = serve_args(&[]).unwrap().config().unwrap().limits;
        assert_eq!(default.header_read_timeout, Duration::from_secs(10));
        assert_eq!(default.idle_timeout, Duration::from_secs(60));
        let args = [
            "--header-read-timeout-secs",
            "3",
            "--idle-timeout-secs",
            "5",
        ];
        let set = serve_args(&args).unwrap().config().unwrap().limits;
        assert_eq!(set.header_read_timeout, Duration::from_secs(3));
        assert_eq!(set.idle_timeout, Duration::from_secs(5));
        for flag in ["--header-read-timeout-secs", "--idle-timeout-secs"] {
            assert!(
                serve_args(&[flag, "0"]).is_err(),
                "{flag} 0 would close every connection"
            );
        }
    }

    #[test]
    fn a_least_cpu_share_outside_1_to_100_percent_is_refused() {
        for bad in ["0", "101", "-5", "half"] {
            assert!(
                serve_args(&["--backfill-min-cpu-percent", bad]).is_err(),
                "{bad}"
            );
        }
    }
}
