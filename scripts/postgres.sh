#!/usr/bin/env bash
# A real PostgreSQL for the tests and benchmarks: one cluster in a folder,
# listening on 127.0.0.1 only, trust authentication for the local user
# `switchboard`, nothing system-wide. The server offers TLS with the test
# certificate in tests/fixtures/pg-tls (127.0.0.1 and localhost, signed by
# its ca.crt), so URLs without `sslmode` (prefer) are encrypted too.
#
#   scripts/postgres.sh start DIR PORT   # prints the admin URL on stdout
#   scripts/postgres.sh stop DIR
#   scripts/postgres.sh restart DIR      # stop (fast) and start again, same port
#
# Needs the Debian package `postgresql` (scripts/test.sh installs it). The
# server refuses to run as root, so as root it runs as the `postgres` user.
set -euo pipefail

die() { echo "postgres.sh: $*" >&2; exit 1; }

cmd=${1:-}
dir=${2:-}
[ -n "$cmd" ] && [ -n "$dir" ] || die "usage: $0 start DIR PORT | stop DIR | restart DIR"

bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
[ -n "$bin" ] || die "PostgreSQL is not installed (apt-get install postgresql)"

as_owner() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

start() {
    local port
    port=$(cat "$dir/port")
    as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 30 \
        -o "-p $port -k $dir -c listen_addresses=127.0.0.1" start >/dev/null \
        || { cat "$dir/server.log" >&2; die "server did not start"; }
}

stop() {
    [ -d "$dir/data" ] || return 0
    as_owner "$bin/pg_ctl" -D "$dir/data" -m fast -w -t 30 stop >/dev/null 2>&1 || true
}

case $cmd in
start)
    port=${3:-}
    [ -n "$port" ] || die "usage: $0 start DIR PORT"
    mkdir -p "$dir"
    echo "$port" >"$dir/port"
    if [ "$(id -u)" = 0 ]; then chown postgres "$dir"; fi
    as_owner "$bin/initdb" -D "$dir/data" -U switchboard -A trust -E UTF8 --no-locale >"$dir/initdb.log" 2>&1 \
        || { cat "$dir/initdb.log" >&2; die "initdb failed"; }
    # The server refuses a key others can read.
    fixtures=$(cd "$(dirname "$0")/../tests/fixtures/pg-tls" && pwd)
    install -m 644 "$fixtures/server.crt" "$dir/data/server.crt"
    install -m 600 "$fixtures/server.key" "$dir/data/server.key"
    if [ "$(id -u)" = 0 ]; then chown postgres "$dir/data/server.crt" "$dir/data/server.key"; fi
    # Durable commits as in production; more connections for several instances.
    cat >>"$dir/data/postgresql.conf" <<CONF
fsync = on
synchronous_commit = on
max_connections = 200
shared_buffers = 128MB
ssl = on
ssl_cert_file = 'server.crt'
ssl_key_file = 'server.key'
CONF
    start
    echo "postgres://switchboard@127.0.0.1:$port/postgres"
    ;;
stop) stop ;;
restart)
    stop
    start
    ;;
*) die "unknown command $cmd" ;;
esac
