#!/usr/bin/env bash
# Schema-driven fuzzing (issue 11): starts the service on a free port with a fresh data
# directory and runs schemathesis against its own /openapi.json with every check on, for a
# bounded time. Fails on any finding: a server error, a response that does not match the
# document (status, content type, schema), or a schema-valid request refused.
# Installs schemathesis from PyPI into target/schemathesis-venv on first use.
set -euo pipefail
cd "$(dirname "$0")/.."

budget=${SCHEMATHESIS_SECONDS:-150}
venv=target/schemathesis-venv
version=4.32.5
if [ ! -x "$venv/bin/st" ] || ! "$venv/bin/st" --version | grep -q "$version"; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$version"
fi
cargo build --locked --quiet --bin reembed

work=$(mktemp -d)
server=""
cleanup() {
    if [ -n "$server" ]; then
        kill "$server" 2>/dev/null || true
        wait "$server" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

target/debug/reembed serve --listen 127.0.0.1:0 --data-dir "$work/data" \
    >"$work/stdout" 2>"$work/stderr" &
server=$!
url=""
for _ in $(seq 100); do
    url=$(sed -n 's/^reembed listening on \(http:\/\/[^ ]*\)$/\1/p' "$work/stdout")
    [ -n "$url" ] && break
    kill -0 "$server" 2>/dev/null || { tail -n 20 "$work/stderr" >&2; exit 1; }
    sleep 0.1
done
[ -n "$url" ] || { echo "schemathesis: the server printed no listening line" >&2; exit 1; }

echo "schemathesis $version: $url/openapi.json, every check, ${budget}s"
if ! "$venv/bin/st" --config-file tests/schemathesis/schemathesis.toml run "$url/openapi.json" \
    --checks all --max-time "$budget" --request-timeout 10 --no-color; then
    echo "schemathesis: server log (last 20 lines):" >&2
    tail -n 20 "$work/stderr" >&2
    exit 1
fi
