//! Latency tests: live traffic during a backfill against a provider that serves one request at
//! a time (`live/live_traffic.rs`). A binary of its own, because cargo runs test binaries one
//! after another: no other test competes for the CPU while these measure latency.

// The helpers are the `api` binary's; this binary uses only some of them.
#![allow(dead_code, unused_imports)]

#[path = "api/client.rs"]
mod client;
#[path = "api/helpers.rs"]
mod helpers;
#[path = "../bench/src/serial_provider.rs"]
mod serial_provider;
#[path = "api/store.rs"]
mod store;
#[path = "api/wire.rs"]
mod wire;

#[path = "live/live_traffic.rs"]
mod live_traffic;
