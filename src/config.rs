//! Settings from the command line and the environment, parsed once at start-up.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// What `reembed::serve` needs beyond its listener and models.
#[derive(Debug, Clone)]
pub struct Config {
    /// Directory holding the SQLite database (`reembed.db`); created if missing.
    pub data_dir: PathBuf,
    /// Consecutive failed backfill batches after which a migration moves to `failed`.
    pub max_failed_batches: u32,
    /// Whether the model registry came from a file whose `active_model` must match the
    /// store's: then a store holding documents of another active model is refused at start-up
    /// (the active model changes only through a migration).
    pub registry_names_active_model: bool,
}

/// Default of `--max-failed-batches`: enough to ride out a provider's brief hiccup (each
/// failed batch already retried its requests), few enough to stop a migration against a
/// provider that is down within a minute or so.
pub const DEFAULT_MAX_FAILED_BATCHES: u32 = 5;

impl Config {
    /// A config storing its data under `data_dir`, with default limits.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            max_failed_batches: DEFAULT_MAX_FAILED_BATCHES,
            registry_names_active_model: false,
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
    /// Model registry file (TOML; see reembed.example.toml). Without it: hash-v1 and hash-v2.
    #[arg(long = "config", env = "REEMBED_CONFIG")]
    pub config_file: Option<PathBuf>,
    /// Consecutive failed backfill batches after which a migration moves to `failed`.
    #[arg(long, env = "REEMBED_MAX_FAILED_BATCHES", default_value_t = DEFAULT_MAX_FAILED_BATCHES,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_failed_batches: u32,
}

impl ServeArgs {
    /// The library config these flags describe.
    pub fn config(&self) -> Config {
        Config {
            data_dir: self.data_dir.clone(),
            max_failed_batches: self.max_failed_batches,
            registry_names_active_model: self.config_file.is_some(),
        }
    }
}

impl Cli {
    /// The subcommand to run, `serve` with its defaults when none was given.
    pub fn command(self) -> Command {
        self.command.unwrap_or(Command::Serve(self.serve))
    }
}
