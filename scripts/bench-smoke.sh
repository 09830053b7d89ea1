#!/usr/bin/env bash
# Smoke benchmark for CI: builds the release server and the load tool, starts the server on a
# free port, runs a short latency run (1,000 subscribers over 1,000 users, 1,000 messages at
# 1,000/s) and a small fan-out (500 connections of one user, 20 messages), and fails on any lost,
# duplicated or failed delivery (`--strict`). Bounded: every wait has a limit, and the server is
# stopped by its PID on any exit. Takes well under a minute once the release build is cached.
# Usage: scripts/bench-smoke.sh   (env: CARGO_TARGET_DIR as usual)
set -euo pipefail
cd "$(dirname "$0")/.."

TARGET=${CARGO_TARGET_DIR:-target}
echo "== bench-smoke: building release" >&2
cargo build --release --quiet --bin server_sent_events -p server_sent_events
cargo build --release --quiet -p sse-load
SERVER_BIN=$TARGET/release/server_sent_events
LOAD_BIN=$TARGET/release/sse-load

# shellcheck source=bench/common.sh
. bench/common.sh

# A free port: bind to 0 and let the server report the address it got.
"$SERVER_BIN" --log info --database "$WORK/r.sqlite3" --bind 127.0.0.1:0 >"$WORK/server.log" 2>&1 &
PID=$!
ADDR=""
for _ in $(seq 100); do
    ADDR=$(sed -n 's/.*address=\([0-9.:]*\).*/\1/p' "$WORK/server.log" | head -n1)
    [ -n "$ADDR" ] && break
    kill -0 "$PID" 2>/dev/null || { cat "$WORK/server.log" >&2; echo "server exited" >&2; exit 1; }
    sleep 0.1
done
[ -n "$ADDR" ] || { echo "server did not report its address" >&2; exit 1; }
echo "== bench-smoke: server $PID on $ADDR" >&2

SUB="http://$ADDR/v2/sse?username=u{user}"
PUB="http://$ADDR/v2/message?username=u{user}"
COMMON=(--sub "$SUB" --pub "$PUB" --pid "$PID" --source-addrs 4 --timeout 20s --strict)

echo "== bench-smoke: latency" >&2
timeout 60 "$LOAD_BIN" latency "${COMMON[@]}" --conns 1000 --users 1000 --messages 1000 --rate 1000 \
    --drain 5s >"$WORK/latency.json"
echo "== bench-smoke: fanout" >&2
timeout 60 "$LOAD_BIN" fanout "${COMMON[@]}" --conns 500 --messages 20 --interval 20ms \
    --settle 500ms --drain 5s >"$WORK/fanout.json"

for run in latency fanout; do
    lost=$(sed -n 's/.*"lost":\([0-9]*\).*/\1/p' "$WORK/$run.json")
    echo "bench-smoke: $run lost=${lost:-?} $(grep -o '"p99_ms":[0-9.]*' "$WORK/$run.json" | head -n1)" >&2
    [ "${lost:-1}" = 0 ] || { echo "bench-smoke: $run lost messages" >&2; exit 1; }
done
echo "bench-smoke: ok" >&2
