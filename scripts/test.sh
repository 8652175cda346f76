#!/usr/bin/env bash
# The whole test suite, as CI runs it on a fresh Debian 12 machine:
# installs what the tests need, then format, lint and every test.
set -euo pipefail
cd "$(dirname "$0")/.."

# System packages. The spine needs only a C compiler (bundled SQLite) and
# openssl for the README's curl example; the email tests need Dovecot and
# Postfix (started by the tests themselves on loopback ports in a temp
# folder, see scripts/mailservers.sh; nothing system-wide is configured).
need=()
command -v cc >/dev/null || need+=(gcc)
command -v openssl >/dev/null || need+=(openssl)
command -v curl >/dev/null || need+=(curl)
[ -x /usr/sbin/dovecot ] || need+=(dovecot-imapd)
[ -x /usr/lib/dovecot/lmtp ] || need+=(dovecot-lmtpd)
[ -x /usr/sbin/postfix ] || need+=(postfix)
# PostgreSQL for the second pass and the scale-out tests (started by
# scripts/postgres.sh in a temp folder on a loopback port).
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
command -v psql >/dev/null || need+=(postgresql-client)
if ((${#need[@]})); then
    if [ "$(id -u)" = 0 ]; then
        # "No configuration": Postfix installs without a system-wide setup.
        echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
    else
        echo "missing packages: ${need[*]} (install them or run as root)" >&2
        exit 1
    fi
fi

cargo fmt --all -- --check
cargo clippy --locked --all-targets -- -D warnings

# Pass 1: the embedded default, SQLite (and the scale-out tests, which
# start their own PostgreSQL).
cargo test --locked

# Pass 2: every integration test again, each daemon on a fresh database of
# one real PostgreSQL server.
pgdir=$(mktemp -d)
chmod 755 "$pgdir"
trap 'bash scripts/postgres.sh stop "$pgdir/pg"; rm -rf "$pgdir"' EXIT
pgport=$((20000 + RANDOM % 20000))
SWITCHBOARD_TEST_POSTGRES=$(bash scripts/postgres.sh start "$pgdir/pg" "$pgport")
export SWITCHBOARD_TEST_POSTGRES
cargo test --locked --test '*'
unset SWITCHBOARD_TEST_POSTGRES

bash scripts/smoke.sh
