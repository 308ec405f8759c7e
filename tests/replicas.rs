//! Several replicas on one PostgreSQL database (issue 13, "What it must show"): three
//! `reembed serve` processes share a 20,000-document migration, and what the contract says of
//! replicas is observed from outside, never assumed:
//!
//! - `sharing`: every replica takes batches; the batches in flight across all three never
//!   exceed `max_concurrent` (sampled in the lease table, in each replica's progress and at the
//!   provider); nothing is counted twice; after a SIGKILL of one replica mid-run the other two
//!   finish within the lease plus the remaining work, losing nothing.
//! - `operating`: writes through every replica during the migration leave every document with
//!   a current target vector (read back through another replica); a pause sent to one replica
//!   stops claims on all within 2 s; a PATCH of `max_concurrent` sent to one applies on all.
//!
//! The target model is a `SerialProvider`, an embedding server that computes one request at a
//! time, so the backfill lasts long enough to watch and to kill a replica in. A binary of its
//! own, as `tests/live.rs`: cargo runs test binaries one after another, so no other test
//! competes for the two cores while these time a pause or a lease; its tests run one at a
//! time too (`cluster::one_at_a_time`).
//!
//! Needs `REEMBED_TEST_DATABASE_URL`, a PostgreSQL server with pgvector on which each test
//! creates a database of its own (`scripts/test.sh` starts one and sets it); without it the
//! tests fail, saying so. `TEST_LOG=1` shows the replicas' logs.

// The helpers are the `api` binary's; this binary uses only some of them.
#![allow(dead_code, unused_imports)]

#[path = "api/client.rs"]
mod client;
#[path = "api/helpers.rs"]
mod helpers;
#[path = "api/process.rs"]
mod process;
#[path = "../bench/src/serial_provider.rs"]
mod serial_provider;
#[path = "api/store.rs"]
mod store;
#[path = "api/wire.rs"]
mod wire;

#[path = "replicas/cluster.rs"]
mod cluster;
#[path = "replicas/watch.rs"]
mod watch;
#[path = "replicas/writers.rs"]
mod writers;

#[path = "replicas/operating.rs"]
mod operating;
#[path = "replicas/sharing.rs"]
mod sharing;
