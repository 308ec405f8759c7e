#!/usr/bin/env bash
# The whole test suite: format, lints, every test (unit, property and the integration tests
# that drive the real server over TCP, and the benchmarks' smoke run), then the status page in
# headless Chromium, then schemathesis against the live server's /openapi.json. Needs the
# Rust toolchain, Node/npm and python3 with venv; browser-test.sh installs Debian's chromium
# with apt if missing, schemathesis.sh installs schemathesis from PyPI into a venv.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo fmt --all --check
cargo clippy --locked --workspace --all-targets -- -D warnings
# The service's tests, then the benchmark suite's (its smoke run).
cargo test --locked --workspace
# Each Criterion micro-benchmark once, untimed, so they cannot rot (bench/run.sh times them).
# `--workspace` as above, so features resolve the same and nothing is compiled twice.
cargo test --locked --workspace --bench micro
./scripts/browser-test.sh
# Schema-driven fuzzing of the live server against its own OpenAPI document (a bounded time).
./scripts/schemathesis.sh
