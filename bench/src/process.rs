//! The real `reembed serve` binary as a child process, for the figures that must be the
//! service's alone: its resident memory is not mixed with the benchmark's own corpus and
//! baselines, as it would be with a server run in-process.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// A running `reembed serve` on a port-0 loopback listener.
pub struct ServerProcess {
    pub base: String,
    child: Child,
}

impl ServerProcess {
    /// Starts the `reembed` binary built beside this one on `data_dir`, with the model
    /// registry file `config` when given, and waits until it is ready.
    pub async fn start_with(
        data_dir: &Path,
        config: Option<&Path>,
    ) -> anyhow::Result<ServerProcess> {
        let mut command = Command::new(reembed_binary()?);
        command
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir);
        if let Some(config) = config {
            command.arg("--config").arg(config);
        }
        let mut child = command
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("cannot start reembed serve")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let base = loop {
            let line = lines
                .next_line()
                .await?
                .context("reembed serve exited before listening")?;
            if let Some(base) = line.strip_prefix("reembed listening on ") {
                break base.to_owned();
            }
        };
        // Anything printed later must not fill the pipe and block the server.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        super::wait_ready(&base).await?;
        Ok(ServerProcess { base, child })
    }

    /// The process's resident memory now (`VmRSS`) and at its peak (`VmHWM`), in bytes.
    pub fn memory(&self) -> anyhow::Result<Memory> {
        let pid = self.child.id().context("the server has exited")?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let field = |name: &str| -> anyhow::Result<u64> {
            let line = status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .with_context(|| format!("no {name} in /proc/{pid}/status"))?;
            let kib: u64 = line.trim().trim_end_matches("kB").trim().parse()?;
            Ok(kib * 1024)
        };
        Ok(Memory {
            resident: field("VmRSS:")?,
            peak: field("VmHWM:")?,
        })
    }

    /// Starts the server on `data_dir`, runs `measure` against it, and stops it whether or not
    /// the measurement succeeded.
    pub async fn serving<T>(
        data_dir: &Path,
        measure: impl AsyncFnOnce(&ServerProcess) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        Self::serving_with(data_dir, None, measure).await
    }

    /// `serving` with the model registry file `config`, when given.
    pub async fn serving_with<T>(
        data_dir: &Path,
        config: Option<&Path>,
        measure: impl AsyncFnOnce(&ServerProcess) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        let server = ServerProcess::start_with(data_dir, config).await?;
        let measured = measure(&server).await;
        super::after_stop(measured, server.stop().await)
    }

    /// Asks the server to shut down (SIGTERM) and waits for it.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(pid) = self.child.id() {
            Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await?;
        }
        let status = self.child.wait().await?;
        anyhow::ensure!(status.success(), "reembed serve exited with {status}");
        Ok(())
    }
}

/// Resident memory of a process, in bytes.
#[derive(Debug, Clone, Copy)]
pub struct Memory {
    pub resident: u64,
    pub peak: u64,
}

/// `reembed` next to the running `reembed-bench` (both land in the same target directory).
fn reembed_binary() -> anyhow::Result<PathBuf> {
    let binary = std::env::current_exe()?.with_file_name("reembed");
    anyhow::ensure!(
        binary.exists(),
        "{} is missing: build it with `cargo build --release --bins` (bench/run.sh does)",
        binary.display()
    );
    Ok(binary)
}
