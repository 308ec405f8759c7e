#!/usr/bin/env bash
# The whole test suite: format, lints, every test (unit, property and the integration tests
# that drive the real server over TCP, and the benchmarks' smoke run), then the status page in
# headless Chromium. Needs the
# Rust toolchain and Node/npm; browser-test.sh installs Debian's chromium with apt if missing.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo fmt --all --check
cargo clippy --locked --all-targets -- -D warnings
cargo test --locked
# Each Criterion micro-benchmark once, untimed, so they cannot rot (bench/run.sh times them).
cargo test --locked --benches
./scripts/browser-test.sh
