//! `ServerProcess`: the `reembed` binary as a child process, for the tests that kill it.

use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::ops::Deref;
use std::path::Path;
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::helpers::{Api, PATIENCE, POLL};

/// A running `reembed serve --listen 127.0.0.1:0 --data-dir DIR` (and `--database-url` of
/// DIR's database when the suite runs on PostgreSQL, `store`).
pub struct ServerProcess {
    pub api: Api,
    child: Child,
    /// Kept open: the server may write to stdout again, and a closed pipe would break it.
    _stdout: BufReader<ChildStdout>,
}

impl Deref for ServerProcess {
    type Target = Api;
    fn deref(&self) -> &Api {
        &self.api
    }
}

impl ServerProcess {
    /// Starts the binary on `data_dir` and waits for its one line
    /// `reembed listening on http://127.0.0.1:PORT`.
    pub async fn start(data_dir: &Path) -> Self {
        Self::start_with(crate::store::store_flags(data_dir).await).await
    }

    /// Starts `reembed serve --listen 127.0.0.1:0` with `flags` (the store's among them) and
    /// waits for its `listening on` line, as `start` does.
    pub async fn start_with(flags: Vec<OsString>) -> Self {
        let logs = std::env::var_os("TEST_LOG").is_some();
        let mut command = Command::new(env!("CARGO_BIN_EXE_reembed"));
        command
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(flags)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(if logs {
                Stdio::inherit()
            } else {
                Stdio::null()
            });
        if logs && std::env::var_os("RUST_LOG").is_none() {
            command.env("RUST_LOG", "info");
        }
        let mut child = command.spawn().expect("the reembed binary starts");
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let first_line = tokio::task::spawn_blocking(move || {
            let mut stdout = stdout;
            let mut line = String::new();
            let read = stdout.read_line(&mut line);
            (stdout, line, read)
        });
        let Ok(joined) = tokio::time::timeout(PATIENCE, first_line).await else {
            let _ = child.kill();
            panic!("reembed printed no 'listening on' line within {PATIENCE:?}");
        };
        let (stdout, line, read) = joined.expect("the reader thread");
        read.expect("reading the server's stdout");
        let Some(url) = line.trim_end().strip_prefix("reembed listening on ") else {
            let status = child.wait();
            panic!("expected 'reembed listening on http://...', got {line:?} (exit: {status:?})");
        };
        assert!(url.starts_with("http://127.0.0.1:"), "{line:?}");
        Self {
            api: Api::new(url.to_owned()),
            child,
            _stdout: stdout,
        }
    }

    /// SIGKILL: no shutdown code runs.
    pub fn kill(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("the killed process is reaped");
    }

    /// SIGTERM, then waits for the exit within `timeout`.
    pub async fn terminate(mut self, timeout: Duration) -> ExitStatus {
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: `pid` is our own child, not yet reaped, so it names no other process.
        let sent = unsafe { libc::kill(pid, libc::SIGTERM) };
        assert_eq!(sent, 0, "SIGTERM could not be sent");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("waiting for the child") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "no exit within {timeout:?} of SIGTERM"
            );
            tokio::time::sleep(POLL).await;
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
