//! HTTP load: `wrk` for the real figures, or a small in-process client for smoke runs (CI
//! has no `wrk`, and the smoke run asserts no timing). A load either repeats one `GET` or
//! writes a new document with every request.

use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::process::Command;

use super::stats::percentile;

/// Throughput and tail latency of one load run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Load {
    pub requests_per_sec: f64,
    pub p99: Duration,
}

/// What every request of a load sends.
#[derive(Debug, Clone, Copy)]
pub enum Request<'a> {
    /// `GET url`.
    Get(&'a str),
    /// `PUT {base}/v1/documents/{prefix}-{connection}-{n}` with `{"text": text}`: each request
    /// creates a document of its own, so the load measures inserts, not no-op rewrites.
    PutNewDocument {
        base: &'a str,
        prefix: &'a str,
        text: &'a str,
    },
}

impl Request<'_> {
    /// The request's part of a wrk command line.
    fn wrk_arguments(&self) -> String {
        match self {
            Request::Get(url) => url.to_string(),
            Request::PutNewDocument { base, prefix, .. } => {
                format!("-s put-new-document.lua {base} -- {prefix}")
            }
        }
    }

    fn describe(&self) -> String {
        match self {
            Request::Get(url) => format!("GET {url}"),
            Request::PutNewDocument { base, prefix, .. } => {
                format!("PUT {base}/v1/documents/{prefix}-<connection>-<n>")
            }
        }
    }
}

/// How load is generated.
#[derive(Debug, Clone, Copy)]
pub enum Tool {
    /// `wrk -t2 -c{connections} -d{secs}s --latency URL`.
    Wrk,
    /// `connections` reqwest tasks for the duration.
    InProcess,
}

impl Tool {
    /// The command line of a run, for the results.
    pub fn command(self, connections: usize, duration: Duration, request: Request) -> String {
        match self {
            Tool::Wrk => format!(
                "wrk -t2 -c{connections} -d{}s --latency {}",
                duration.as_secs(),
                request.wrk_arguments()
            ),
            Tool::InProcess => format!(
                "in-process reqwest, {connections} connections, {duration:?}, {}",
                request.describe()
            ),
        }
    }

    pub async fn run(
        self,
        connections: usize,
        duration: Duration,
        request: Request<'_>,
    ) -> anyhow::Result<Load> {
        match self {
            Tool::Wrk => wrk(connections, duration, request).await,
            Tool::InProcess => in_process(connections, duration, request).await,
        }
    }
}

/// A wrk script that sends `PUT /v1/documents/{prefix}-{thread}-{n}` with one JSON body; the
/// prefix is the script's first argument.
fn put_new_document_script(text: &str) -> String {
    let body = serde_json::json!({ "text": text }).to_string();
    format!(
        r#"wrk.method = "PUT"
wrk.headers["Content-Type"] = "application/json"
wrk.body = [==[{body}]==]
local threads = 0
function setup(thread)
  thread:set("tid", threads)
  threads = threads + 1
end
function init(args)
  prefix = args[1]
  counter = 0
end
function request()
  counter = counter + 1
  local path = "/v1/documents/" .. prefix .. "-" .. tid .. "-" .. counter
  return wrk.format(nil, path)
end
"#
    )
}

/// Runs wrk as a child process without blocking the runtime that serves the requests.
async fn wrk(connections: usize, duration: Duration, request: Request<'_>) -> anyhow::Result<Load> {
    let mut command = Command::new("wrk");
    command
        .args(["-t2", &format!("-c{connections}")])
        .arg(format!("-d{}s", duration.as_secs()))
        .arg("--latency");
    // Kept alive until wrk has read it.
    let script_dir = super::ScratchDir::new()?;
    match request {
        Request::Get(url) => {
            command.arg(url);
        }
        Request::PutNewDocument { base, prefix, text } => {
            let script = script_dir.path().join("put-new-document.lua");
            std::fs::write(&script, put_new_document_script(text))?;
            command.arg("-s").arg(&script).args([base, "--", prefix]);
        }
    }
    let output = command
        .output()
        .await
        .context("cannot run wrk (bench/run.sh installs it)")?;
    let text = String::from_utf8_lossy(&output.stdout);
    anyhow::ensure!(output.status.success(), "wrk failed: {text}");
    anyhow::ensure!(!text.contains("Non-2xx"), "wrk saw errors: {text}");
    parse_wrk(&text).with_context(|| format!("unexpected wrk output:\n{text}"))
}

/// Reads `Requests/sec:` and the 99% line of `--latency` output.
pub fn parse_wrk(text: &str) -> Option<Load> {
    let requests_per_sec = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))?
        .trim()
        .parse()
        .ok()?;
    let p99 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("99%"))
        .and_then(|v| parse_wrk_duration(v.trim()))?;
    Some(Load {
        requests_per_sec,
        p99,
    })
}

fn parse_wrk_duration(value: &str) -> Option<Duration> {
    let split = value.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = value.split_at(split);
    let number: f64 = number.parse().ok()?;
    let secs = match unit {
        "us" => number / 1e6,
        "ms" => number / 1e3,
        "s" => number,
        "m" => number * 60.0,
        _ => return None,
    };
    Some(Duration::from_secs_f64(secs))
}

async fn in_process(
    connections: usize,
    duration: Duration,
    request: Request<'_>,
) -> anyhow::Result<Load> {
    let client = reqwest::Client::new();
    let start = Instant::now();
    let tasks: Vec<_> = (0..connections)
        .map(|connection| {
            let client = client.clone();
            let build = request_builder(request, connection);
            tokio::spawn(async move {
                let mut samples = Vec::new();
                let mut n = 0;
                while start.elapsed() < duration {
                    n += 1;
                    let sent = Instant::now();
                    let reply = build(&client, n).send().await?;
                    anyhow::ensure!(reply.status().is_success(), "{}", reply.status());
                    reply.bytes().await?;
                    samples.push(sent.elapsed());
                }
                Ok(samples)
            })
        })
        .collect();
    let mut samples = Vec::new();
    for task in tasks {
        samples.extend(task.await??);
    }
    Ok(Load {
        requests_per_sec: samples.len() as f64 / start.elapsed().as_secs_f64(),
        p99: percentile(&samples, 99.0),
    })
}

/// Builds the `n`-th request of one in-process connection.
fn request_builder(
    request: Request,
    connection: usize,
) -> impl Fn(&reqwest::Client, usize) -> reqwest::RequestBuilder + Send + 'static {
    let (url, body) = match request {
        Request::Get(url) => (url.to_owned(), None),
        Request::PutNewDocument { base, prefix, text } => (
            format!("{base}/v1/documents/{prefix}-{connection}-"),
            Some(serde_json::json!({ "text": text })),
        ),
    };
    move |client, n| match &body {
        None => client.get(&url),
        Some(body) => client.put(format!("{url}{n}")).json(body),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_throughput_and_p99_from_wrk_output() {
        let text = "Running 5s test @ http://127.0.0.1:1/healthz\n  2 threads and 64 connections\n\
            \x20 Latency Distribution\n     50%  635.91us\n     75%  712.34us\n     90%    1.02ms\n\
            \x20    99%    2.34ms\n  61234 requests in 5.00s, 7.2MB read\n\
            Requests/sec:  12246.80\nTransfer/sec:      1.44MB\n";
        let load = parse_wrk(text).unwrap();
        assert_eq!(load.requests_per_sec, 12246.80);
        assert_eq!(load.p99, Duration::from_secs_f64(0.00234));
        assert_eq!(
            parse_wrk_duration("635.91us"),
            Some(Duration::from_secs_f64(635.91e-6))
        );
        assert_eq!(parse_wrk("no numbers"), None);
    }
}
