#!/usr/bin/env bash
# The whole test suite: format, lints, then every test (unit, property and the integration
# tests that drive the real server over TCP). Needs only the Rust toolchain.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo fmt --all --check
cargo clippy --locked --all-targets -- -D warnings
cargo test --locked
