#!/usr/bin/env bash
# Runs one benchmark scenario against a fresh server (ours or nginx+nchan) and prints the
# sse-load JSON summary on stdout (progress on stderr). Used for BENCHMARKS.md.
#
# Usage: bench/run.sh ours|nchan hold|hold19k|fanout|latency|rate20k [extra sse-load args]
# Env:   SERVER_BIN (default target/release/server_sent_events), LOAD_BIN (sse-load binary),
#        PORT (ours, default 3901), AUTH (ours: none, default, or jwt: the server runs with
#        --auth jwt and a secret made for the run; publishers send a bearer token with the
#        publish scope, each subscriber trades a token for a one-use ticket first),
#        TRANSPORT (ours: plain, default; tls: HTTPS with a certificate made for the run,
#        HTTP/1.1 by ALPN; h2c: cleartext HTTP/2; h2tls: HTTP/2 over TLS; the h2 ones apply to
#        hold and hold19k only, with H2_STREAMS streams per connection, default 100).
set -euo pipefail
cd "$(dirname "$0")/.."
SERVER=$1 SCEN=$2; shift 2
LOAD_BIN=${LOAD_BIN:-target/release/sse-load}
SERVER_BIN=${SERVER_BIN:-target/release/server_sent_events}
PORT=${PORT:-3901}
# shellcheck source=bench/common.sh
. bench/common.sh

case "$SERVER" in
ours)
    AUTH_ARGS=()
    case "${AUTH:-none}" in
    none) ;;
    jwt)
        # A fresh secret per run; tokens for every user (admin: any user's stream) and for
        # publishing. Passed by environment, never on a command line others can read.
        SSE_JWT_SECRET=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
        export SSE_JWT_SECRET
        SSE_LOAD_TICKET_BEARER=$("$SERVER_BIN" token --sub bench-subscriber --scope admin --ttl 1h)
        SSE_LOAD_BEARER=$("$SERVER_BIN" token --sub bench-publisher --scope publish --ttl 1h)
        export SSE_LOAD_TICKET_BEARER SSE_LOAD_BEARER
        AUTH_ARGS=(--auth jwt)
        ;;
    *) echo "unknown AUTH ${AUTH}" >&2; exit 2 ;;
    esac
    SCHEME=http
    TLS_ARGS=()
    case "${TRANSPORT:-plain}" in
    plain | h2c) ;;
    tls | h2tls)
        # A leaf certificate for 127.0.0.1 (CA:FALSE: rustls refuses a CA as a server's own).
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
            -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
            -addext basicConstraints=critical,CA:FALSE \
            -keyout "$WORK/tls.key" -out "$WORK/tls.crt" 2>/dev/null
        TLS_ARGS=(--tls-cert "$WORK/tls.crt" --tls-key "$WORK/tls.key")
        SCHEME=https
        ;;
    *) echo "unknown TRANSPORT ${TRANSPORT}" >&2; exit 2 ;;
    esac
    "$SERVER_BIN" --log warn --database "$WORK/r.sqlite3" --bind "127.0.0.1:$PORT" "${AUTH_ARGS[@]}" "${TLS_ARGS[@]}" >"$WORK/server.log" 2>&1 &
    PID=$!
    HOSTPORT=127.0.0.1:$PORT
    SUB="$SCHEME://$HOSTPORT/v2/sse?username=u{user}"
    PUB="$SCHEME://$HOSTPORT/v2/message?username=u{user}"
    PIDARGS=(--pid "$PID")
    [ "$SCHEME" = https ] && PIDARGS+=(--ca "$WORK/tls.crt")
    ;;
nchan)
    # A private prefix; nchan.conf says `daemon off`, so $! is the master.
    mkdir -p "$WORK/logs" "$WORK/tmp"
    nginx -p "$WORK" -c "$PWD/bench/nchan.conf" >"$WORK/server.log" 2>&1 &
    PID=$!
    HOSTPORT=127.0.0.1:8090
    SUB="http://$HOSTPORT/sub/u{user}"
    PUB="http://$HOSTPORT/pub/u{user}"
    PIDARGS=(--pid "$PID" --with-children)
    ;;
*) echo "unknown server $SERVER" >&2; exit 2 ;;
esac
for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/${HOSTPORT%:*}/${HOSTPORT#*:}") 2>/dev/null && break
    sleep 0.1
done
sleep 0.5
echo "load: $(cut -d' ' -f1-3 /proc/loadavg)" >&2

C=(--sub "$SUB" --pub "$PUB" "${PIDARGS[@]}" --source-addrs 8 --strict)
H=()
case "${TRANSPORT:-plain}" in
h2c | h2tls) H=(--h2-streams-per-conn "${H2_STREAMS:-100}") ;;
esac
case "$SCEN" in
hold)     "$LOAD_BIN" hold "${C[@]}" "${H[@]}" --conns 5000 --hold 2s "$@" ;;
hold19k)  "$LOAD_BIN" hold "${C[@]}" "${H[@]}" --conns 19000 --hold 2s --settle 3s "$@" ;;
fanout)   "$LOAD_BIN" fanout "${C[@]}" --conns 5000 --messages 50 --interval 100ms "$@" ;;
latency)  "$LOAD_BIN" latency "${C[@]}" --conns 10000 --users 10000 --messages 20000 --rate 2000 "$@" ;;
rate20k)  "$LOAD_BIN" latency "${C[@]}" --conns 1000 --users 1000 --messages 100000 --rate 20000 "$@" ;;
*) echo "unknown scenario $SCEN" >&2; exit 2 ;;
esac
