//! The `reembed` binary: parse the command line, set up logging, and serve until SIGTERM or
//! Ctrl-C. Everything else lives in the library so tests can build the same application.

use anyhow::Context;
use reembed::cli::CommandLine;
use reembed::config::{Command, ServeArgs};
use reembed::embed::ModelRegistry;
use std::io::Write;
use std::process::ExitCode;

/// A failure to start or to serve prints one line naming its causes, not a backtrace, and
/// exits non-zero.
#[tokio::main]
async fn main() -> ExitCode {
    let CommandLine { command, remote } = CommandLine::parse();
    let outcome = match command {
        Command::Serve(args) => serve(args).await,
        Command::Openapi => print_openapi(),
        Command::Client(command) => std::process::exit(reembed::cli::run(&remote, command).await),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("reembed: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn print_openapi() -> anyhow::Result<()> {
    println!("{}", reembed::api::openapi().to_pretty_json()?);
    Ok(())
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    reembed::telemetry::init();
    let config = args.config()?;
    let models = match &args.config_file {
        Some(path) => ModelRegistry::from_file(path)?,
        None => ModelRegistry::builtin(),
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    // Tests and scripts read this line to learn the port when listening on port 0.
    println!("reembed listening on http://{addr}");
    std::io::stdout().flush()?;
    reembed::serve(listener, config, models, shutdown_signal()).await
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = terminate => {}
    }
    tracing::info!(
        "shutdown requested; finishing requests and commits, abandoning batches still embedding"
    );
}
