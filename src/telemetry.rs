//! Logging and metrics. Logs: human-readable lines on stderr, filtered by `RUST_LOG` (default
//! `info`); every line logged while a request is served carries that request's id through its
//! span. Metrics: one Prometheus recorder per process, rendered by `GET /metrics`.

use std::io::IsTerminal;
use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber; call once from `main`.
pub fn init() {
    init_with("info,sqlx=warn");
}

/// `init` with another filter for when `RUST_LOG` is unset: the benchmarks, which serve in
/// their own process, log warnings and errors only.
pub fn init_with(default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

/// Upper bounds of the latency histograms, in seconds: from a cached routing read (~100 µs)
/// to a slow provider call (tens of seconds).
const LATENCY_BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0,
];

static METRICS: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process-wide Prometheus recorder behind `GET /metrics`, installed on first use. If an
/// embedding program installed another global recorder first, ours renders nothing but
/// nothing breaks.
pub fn metrics() -> &'static PrometheusHandle {
    METRICS.get_or_init(|| {
        // set_buckets only fails on an empty list; fall back to summaries rather than panic.
        let builder = PrometheusBuilder::new()
            .set_buckets(&LATENCY_BUCKETS)
            .unwrap_or_else(|_| PrometheusBuilder::new());
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("another metrics recorder is installed; /metrics will be empty");
        }
        handle
    })
}
