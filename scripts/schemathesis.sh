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

# shellcheck source=scripts/test-server.sh
. scripts/test-server.sh
# Both built-in models, each with a price: a migration's `max_cost` is only accepted for a
# priced target (422 otherwise, a rule of the registry no schema can express), so with prices
# every schema-valid config patch must be accepted. Both, because the stateful phase completes
# migrations and so also plans some back to hash-v1 (CI found a patch refused that way).
export REEMBED_CONFIG="$work/registry.toml"
cat >"$REEMBED_CONFIG" <<'TOML'
active_model = "hash-v1"

[[models]]
id = "hash-v1"
provider = "builtin"
dimensions = 256
price_per_million_tokens = 0.01

[[models]]
id = "hash-v2"
provider = "builtin"
dimensions = 384
price_per_million_tokens = 0.02
TOML
start_server schemathesis

# Data for the operations on one document or migration: a few documents, and a planned
# migration whose id the config's `migrations` dictionary names, so those operations meet
# real state (and its lifecycle) rather than only 404s.
curl --fail --silent --show-error -o /dev/null -X POST -H 'content-type: application/json' \
    -d '{"documents": [{"id": "fuzz-1", "text": "first"}, {"id": "fuzz-2", "text": "second"}]}' \
    "$url/v1/documents"
curl --fail --silent --show-error -o /dev/null -X POST -H 'content-type: application/json' \
    -d '{"id": "fuzz-planned", "target_model": "hash-v2", "start": false}' "$url/v1/migrations"

echo "schemathesis $version: $url/openapi.json, every check, ${budget}s"
if ! "$venv/bin/st" --config-file tests/schemathesis/schemathesis.toml run "$url/openapi.json" \
    --checks all --max-time "$budget" --request-timeout 10 --no-color; then
    server_log schemathesis
    exit 1
fi
