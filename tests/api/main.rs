//! Black-box tests of reembed's HTTP contract (API.md): every test talks to a real server over
//! TCP, in-process on a port-0 listener or, for crash tests, as a child process.
//!
//! One binary keeps link time down; one module per resource keeps each file about one part of
//! the contract. `helpers` holds `TestApp`, `client` its typed request methods, `wire` the response
//! shapes, `probe` an instrumented hash-v2 embedder, `states` the way to each migration state.
//! Set `TEST_LOG=1` to see the server's logs.

mod client;
mod fake_openai;
mod helpers;
mod probe;
mod process;
// Shared with the benchmarks and `tests/live`, which use more of it than the tests here.
#[allow(dead_code)]
#[path = "../../bench/src/serial_provider.rs"]
mod serial_provider;
mod states;
mod store;
mod wire;

mod active_model;
mod backfill;
mod bad_input;
mod canary;
mod cleanup;
mod cli;
mod cost;
mod crash;
mod documents;
mod dropped;
mod evaluation;
mod fallback;
mod filters;
mod full_disk;
mod gate;
mod history;
mod lifecycle;
mod migrations;
mod operating;
mod operations;
mod outages;
mod progress;
mod provider_config;
mod providers;
mod query;
mod routing;
mod serial_provider_tests;
mod shadow;
mod shutdown;
mod slow_clients;
mod timeouts;
mod truncated;
mod unchanged;
mod walkthrough;
mod yielding;
