//! HTTP load: `wrk` for the real figures, or a small in-process client for smoke runs (CI
//! has no `wrk`, and the smoke run asserts no timing).

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

/// How load is generated.
#[derive(Debug, Clone, Copy)]
pub enum Tool {
    /// `wrk -t2 -c{connections} -d{secs}s --latency URL`.
    Wrk,
    /// `connections` reqwest tasks for the duration.
    InProcess,
}

impl Tool {
    pub fn command(self, connections: usize, duration: Duration, url: &str) -> String {
        match self {
            Tool::Wrk => format!(
                "wrk -t2 -c{connections} -d{}s --latency {url}",
                duration.as_secs()
            ),
            Tool::InProcess => format!(
                "in-process reqwest, {connections} connections, {:?}, {url}",
                duration
            ),
        }
    }

    pub async fn run(
        self,
        connections: usize,
        duration: Duration,
        url: &str,
    ) -> anyhow::Result<Load> {
        match self {
            Tool::Wrk => wrk(connections, duration, url).await,
            Tool::InProcess => in_process(connections, duration, url).await,
        }
    }
}

/// Runs wrk as a child process without blocking the runtime that serves the requests.
async fn wrk(connections: usize, duration: Duration, url: &str) -> anyhow::Result<Load> {
    let output = Command::new("wrk")
        .args(["-t2", &format!("-c{connections}")])
        .arg(format!("-d{}s", duration.as_secs()))
        .args(["--latency", url])
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

async fn in_process(connections: usize, duration: Duration, url: &str) -> anyhow::Result<Load> {
    let client = reqwest::Client::new();
    let start = Instant::now();
    let tasks: Vec<_> = (0..connections)
        .map(|_| {
            let (client, url) = (client.clone(), url.to_owned());
            tokio::spawn(async move {
                let mut samples = Vec::new();
                while start.elapsed() < duration {
                    let sent = Instant::now();
                    let reply = client.get(&url).send().await?;
                    anyhow::ensure!(reply.status().is_success(), "{url}: {}", reply.status());
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
