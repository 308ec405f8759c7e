# Sourced by the test scripts that drive a live server (browser-test.sh, schemathesis.sh):
# `start_server NAME` starts target/debug/reembed on a free port with a fresh data directory
# under $work, sets $url and $server, and the server stops and $work goes when the script exits.
# `server_log NAME` prints the end of its log.

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

start_server() {
    local name=$1
    target/debug/reembed serve --listen 127.0.0.1:0 --data-dir "$work/data" \
        >"$work/stdout" 2>"$work/stderr" &
    server=$!
    url=""
    for _ in $(seq 100); do
        url=$(sed -n 's/^reembed listening on \(http:\/\/[^ ]*\)$/\1/p' "$work/stdout")
        [ -n "$url" ] && return 0
        if ! kill -0 "$server" 2>/dev/null; then
            echo "$name: the server exited before listening:" >&2
            tail -n 20 "$work/stderr" >&2
            exit 1
        fi
        sleep 0.1
    done
    echo "$name: the server printed no 'reembed listening on' line within 10 s" >&2
    exit 1
}

server_log() {
    echo "$1: server log (last 20 lines):" >&2
    tail -n 20 "$work/stderr" >&2
}
