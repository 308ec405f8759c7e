//! `reembed import FILE`: streams a JSON Lines file into the service through bulk upserts.
//!
//! The file is read a line at a time and never held whole. Each line is checked on its own
//! (`line::parse`); a malformed one is reported and never sent. Good lines gather into bulk
//! requests of `--batch` documents (fewer when they approach the server's body limit), which
//! the server writes all or nothing: a request it refuses for its content (400, 413, 422)
//! fails every line in it, and the import goes on with the next request. Any other failure
//! (server unreachable, 401, 5xx) stops the import there, since every later request would
//! meet it too. Upserts are by id, so running an import again after fixing the cause is safe.
//!
//! Failures print as they happen (`line N: why`), then a summary: `lines`, `imported`,
//! `failed` and, if the import stopped early, `stopped_at_line`.

use std::path::Path;

use indicatif::ProgressBar;
use reqwest::StatusCode;
use serde_json::{Map, Value, json};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, BufReader};

use super::http::{CliError, Server};
use super::wire::{BulkResult, Field, print, say};
use super::{Exit, ImportArgs, bar, line};

/// Largest sum of line lengths in one request: half the server's default body limit (16 MiB),
/// leaving room for JSON that grows when re-encoded.
const MAX_REQUEST_BYTES: usize = 8 * 1024 * 1024;
/// Read buffer: large enough that reading a big file costs few system calls.
const READ_BUFFER: usize = 256 * 1024;

/// An import's input, read line by line.
type Input = Box<dyn AsyncBufRead + Unpin + Send>;

/// Imports `args.file` and prints its summary; the exit code says whether every line made it.
pub async fn run(server: &Server, args: &ImportArgs) -> Result<Exit, CliError> {
    let (input, size) = open(&args.file).await?;
    let mut import = Import::new(server, args.batch as usize, progress_bar(size));
    let stopped = import.read_all(input, &args.file).await.err();
    import.finish(stopped)
}

/// Opens `path` (stdin for `-`) and learns its size when it has one, for the progress bar.
async fn open(path: &Path) -> Result<(Input, Option<u64>), CliError> {
    if path == Path::new("-") {
        let stdin = BufReader::with_capacity(READ_BUFFER, tokio::io::stdin());
        return Ok((Box::new(stdin), None));
    }
    let file = tokio::fs::File::open(path)
        .await
        .map_err(|source| input_error(path, source))?;
    let size = file.metadata().await.ok().map(|m| m.len());
    Ok((Box::new(BufReader::with_capacity(READ_BUFFER, file)), size))
}

fn input_error(path: &Path, source: std::io::Error) -> CliError {
    CliError::Input {
        path: path.display().to_string(),
        source,
    }
}

/// A bar over the file's bytes, or a spinner for stdin, whose size is unknown.
fn progress_bar(size: Option<u64>) -> ProgressBar {
    let template = match size {
        Some(_) => "{bar:30} {bytes}/{total_bytes} eta {eta}, {wide_msg}",
        None => "{spinner} {bytes} read, {wide_msg}",
    };
    bar::on_terminal(size, template)
}

/// Why an import ended before its input did.
struct Stop {
    /// The first line not imported because of the stop (earlier lines are settled).
    at_line: u64,
    error: CliError,
}

/// An import in progress: the request being gathered and the tallies.
struct Import<'a> {
    server: &'a Server,
    batch_size: usize,
    /// Documents of the next request, and their line numbers.
    batch: Vec<Map<String, Value>>,
    batch_lines: Vec<u64>,
    batch_bytes: usize,
    lines_read: u64,
    imported: u64,
    failed: u64,
    bar: ProgressBar,
}

impl<'a> Import<'a> {
    fn new(server: &'a Server, batch_size: usize, bar: ProgressBar) -> Self {
        Self {
            server,
            batch_size,
            batch: Vec::with_capacity(batch_size),
            batch_lines: Vec::with_capacity(batch_size),
            batch_bytes: 0,
            lines_read: 0,
            imported: 0,
            failed: 0,
            bar,
        }
    }

    /// Reads `input` to its end, sending requests as they fill.
    async fn read_all(&mut self, mut input: Input, path: &Path) -> Result<(), Stop> {
        let mut buf = Vec::new();
        loop {
            buf.clear();
            let read = input.read_until(b'\n', &mut buf).await.map_err(|e| Stop {
                at_line: self.lines_read + 1,
                error: input_error(path, e),
            })?;
            if read == 0 {
                return self.flush().await;
            }
            self.lines_read += 1;
            self.bar.inc(read as u64);
            match line::parse(&buf) {
                Ok(None) => {}
                Ok(Some(document)) => self.add(document, read).await?,
                Err(why) => self.fail(self.lines_read, &why),
            }
        }
    }

    /// Adds a document of `bytes` to the request, sending first if it would grow too large.
    async fn add(&mut self, document: Map<String, Value>, bytes: usize) -> Result<(), Stop> {
        if !self.batch.is_empty() && self.batch_bytes + bytes > MAX_REQUEST_BYTES {
            self.flush().await?;
        }
        self.batch.push(document);
        self.batch_lines.push(self.lines_read);
        self.batch_bytes += bytes;
        if self.batch.len() >= self.batch_size {
            self.flush().await?;
        }
        Ok(())
    }

    /// Sends the gathered documents as one bulk request and accounts for its answer.
    async fn flush(&mut self) -> Result<(), Stop> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let documents = std::mem::take(&mut self.batch);
        let lines = std::mem::take(&mut self.batch_lines);
        self.batch_bytes = 0;
        let body = json!({ "documents": documents });
        let answer = self
            .server
            .post::<BulkResult>(&["v1", "documents"], Some(&body));
        match answer.await {
            Ok(written) => self.imported += written.results.len() as u64,
            Err(error) => match refused_content(&error, lines.len()) {
                Some(why) => lines.iter().for_each(|&line| self.fail(line, &why)),
                None => {
                    let at_line = lines[0];
                    return Err(Stop { at_line, error });
                }
            },
        }
        self.bar.set_message(format!(
            "{} imported, {} failed",
            self.imported, self.failed
        ));
        Ok(())
    }

    fn fail(&mut self, line: u64, why: &str) {
        self.failed += 1;
        self.bar.suspend(|| say(format_args!("line {line}: {why}")));
    }

    /// Prints the summary; a stop becomes the command's error, after the summary.
    fn finish(self, stopped: Option<Stop>) -> Result<Exit, CliError> {
        self.bar.finish_and_clear();
        let mut summary: Vec<Field> = vec![
            ("lines", self.lines_read.to_string()),
            ("imported", self.imported.to_string()),
            ("failed", self.failed.to_string()),
        ];
        summary.extend(
            stopped
                .as_ref()
                .map(|s| ("stopped_at_line", s.at_line.to_string())),
        );
        print(&summary);
        match stopped {
            Some(Stop { at_line, error }) => {
                eprintln!(
                    "reembed: import stopped at line {at_line}: {}",
                    stop_effect(&error)
                );
                Err(error)
            }
            None if self.failed > 0 => Ok(Exit::Incomplete),
            None => Ok(Exit::Success),
        }
    }
}

/// What a stop means for the line it happened at and those after it.
fn stop_effect(error: &CliError) -> &'static str {
    match error {
        CliError::NoAnswer { .. } => {
            "its request got no answer, so the documents in it may or may not have been \
             written, and later lines were not sent; importing again is safe (upserts by id)"
        }
        _ => "it and the lines after it were not imported",
    }
}

/// The reason to give each line of a request the server refused for its content, or `None`
/// when the failure is not about the content (unreachable, unauthorized, unavailable).
fn refused_content(error: &CliError, documents: usize) -> Option<String> {
    let CliError::Refused { status, detail, .. } = error else {
        return None;
    };
    let content = [
        StatusCode::BAD_REQUEST,
        StatusCode::PAYLOAD_TOO_LARGE,
        StatusCode::UNPROCESSABLE_ENTITY,
    ];
    let request = match documents {
        1 => "refused".to_owned(),
        n => format!("refused with the {n} documents of its request"),
    };
    content
        .contains(status)
        .then(|| format!("{request}: {status}: {detail}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(status: StatusCode) -> CliError {
        CliError::Refused {
            status,
            slug: Some("invalid-value".to_owned()),
            detail: "id: must be 1 to 512 bytes, got 600".to_owned(),
        }
    }

    #[test]
    fn content_refusals_fail_the_request_and_go_on() {
        let why = refused_content(&refused(StatusCode::UNPROCESSABLE_ENTITY), 3).unwrap();
        assert_eq!(
            why,
            "refused with the 3 documents of its request: 422 Unprocessable Entity: \
             id: must be 1 to 512 bytes, got 600"
        );
        let alone = refused_content(&refused(StatusCode::PAYLOAD_TOO_LARGE), 1).unwrap();
        assert!(
            alone.starts_with("refused: 413 Payload Too Large: "),
            "{alone}"
        );
    }

    #[test]
    fn other_failures_stop_the_import() {
        assert!(refused_content(&refused(StatusCode::UNAUTHORIZED), 3).is_none());
        assert!(refused_content(&refused(StatusCode::SERVICE_UNAVAILABLE), 3).is_none());
        assert!(refused_content(&CliError::NoMigration, 3).is_none());
    }
}
