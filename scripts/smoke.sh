#!/usr/bin/env bash
# Smoke test of the README's walkthrough: the shipped example config, a
# signed curl to the generic webhook, the inquiry and its acknowledgement
# visible through the API. Uses the debug binary built by `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."

bin=${SWITCHBOARD_BIN:-target/debug/switchboard}
port=${SMOKE_PORT:-18080}
reply_port=${SMOKE_REPLY_PORT:-18081}
work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

passed=0
failed=0
check() {
    if eval "$2"; then
        passed=$((passed + 1)); echo "smoke ok: $1"
    else
        failed=$((failed + 1)); echo "smoke FAILED: $1" >&2
    fi
}

cp -r config "$work/config"
"$bin" check --config "$work/config/switchboard.toml"
# The example rules against their fixtures (config/rules.tests/).
"$bin" test-rules --config "$work/config/switchboard.toml"

# The reply endpoint: records each acknowledgement it receives.
python3 scripts/reply_sink.py "$reply_port" "$work/replies.log" &
pids+=($!)
for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$reply_port") 2>/dev/null && break
    sleep 0.1
done

SWITCHBOARD__SERVER__LISTEN="127.0.0.1:$port" \
SWITCHBOARD__STORE__URL="sqlite://$work/data/switchboard.sqlite" \
SWITCHBOARD__CHANNELS__GENERIC__WEBSITE__REPLY_URL="http://127.0.0.1:$reply_port/replies" \
RUST_LOG=${SMOKE_LOG:-warn} "$bin" run --config "$work/config/switchboard.toml" &
pids+=($!)

for _ in $(seq 100); do
    curl -fs "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
    sleep 0.1
done

# As in the README.
body='{"id":"web-1001","from":{"name":"Ada","email":"ada@example.org"},"subject":"Card blocked","text":"My card was blocked today."}'
sig=$(printf '%s' "$body" | openssl dgst -sha256 -hmac 'demo-webhook-secret' | sed 's/^.* //')
answer=$(curl -s -w ' %{http_code}' -X POST "http://127.0.0.1:$port/webhooks/generic/website" \
    -H 'Content-Type: application/json' -H "X-Switchboard-Signature: sha256=$sig" -d "$body")
check "signed webhook answers 202" '[[ "$answer" == *" 202" ]]'
ref=$(printf '%s' "$answer" | sed -n 's/.*"inquiry":"\(INQ-[0-9A-Z]*\)".*/\1/p')
check "answer names an inquiry reference" '[[ -n "$ref" ]]'

acknowledged=no
for _ in $(seq 100); do
    if curl -fs -H 'Authorization: Bearer demo-ops-token' \
        "http://127.0.0.1:$port/api/v1/inquiries/$ref" | grep -q '"kind":"acknowledged"'; then
        acknowledged=yes; break
    fi
    sleep 0.1
done
check "inquiry shows an acknowledged event" '[[ $acknowledged == yes ]] && grep -q "$ref" "$work/replies.log"'

echo "smoke: $passed passed, $failed failed"
[ "$failed" = 0 ]
