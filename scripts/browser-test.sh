#!/usr/bin/env bash
# Headless-browser test of the status page (GET /, static/status.html): starts the service on a
# free port with a fresh data directory and an API token, loads a corpus, starts a migration
# slow enough to watch (batches of 10, one at a time) behind a cutover gate, then drives
# Debian's Chromium with playwright-core (tests/browser/status.test.mjs): the progress bar
# advances, #pause pauses, the history and the gate show, and #override overrides the gate.
# Screenshot: target/browser/status-page.png. Needs Node.js and npm; installs chromium if missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# 30,000 documents take ~15 s to backfill on a debug build here: long enough to see the bar move
# and pause it, short enough to load in ~10 s.
documents=${BROWSER_TEST_DOCUMENTS:-30000}

if ! command -v chromium >/dev/null; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo=sudo
    $sudo apt-get update
    $sudo apt-get install -y --no-install-recommends chromium
fi
(cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)
cargo build --locked --quiet --bin reembed

# shellcheck source=scripts/test-server.sh
. scripts/test-server.sh
# A token exercises the page's `?access_token=` path (EventSource cannot send headers).
export REEMBED_API_TOKEN="browser-test-$RANDOM$RANDOM"
start_server "browser test"

echo "browser test: $url, loading $documents documents"
node tests/browser/seed.mjs "$url" "$documents" >/dev/null
if ! node tests/browser/status.test.mjs "$url"; then
    server_log "browser test"
    exit 1
fi
