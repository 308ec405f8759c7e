//! Settings from the command line and the environment, parsed once at start-up.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// What `reembed::serve` needs beyond its listener and models.
#[derive(Debug, Clone)]
pub struct Config {
    /// Directory holding the SQLite database (`reembed.db`); created if missing.
    pub data_dir: PathBuf,
}

impl Config {
    /// A config storing its data under `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
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
}

impl Cli {
    /// The subcommand to run, `serve` with its defaults when none was given.
    pub fn command(self) -> Command {
        self.command.unwrap_or(Command::Serve(self.serve))
    }
}
