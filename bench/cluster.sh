#!/usr/bin/env bash
# The cluster benchmark (issue 12): a tansu broker and 3 instances on this machine, 15,000
# subscribers spread over the instances (1,000 users), messages POSTed to /v3/message (so
# produced to Kafka by the instances) at 2,000/s; end-to-end latency from the POST to the
# receipt, and the instances' CPU per delivery. Prints one sse-load JSON summary per run.
#
# Usage: bench/cluster.sh steady|kill|single [extra sse-load args]
#   steady  3 instances on Kafka, subscribers and publishers spread over all three.
#   kill    the same, with the first instance SIGKILLed 8 s into publishing: its clients
#           reconnect to the others with Last-Event-ID (sse-load --reconnect); publishers use
#           the other two. 3 s later it is started again (same port and database), and 16 s
#           into publishing the clients that left it move back (--rebalance-after): a third of
#           them. Zero lost and zero duplicated is the target; the time from the drop to the new
#           stream is reported under "recover", the moves under "moved".
#   single  one instance without Kafka, the same load (the figure to compare with).
# Env: SERVER_BIN, LOAD_BIN, TANSU_BIN (default: the test cache), MESSAGES (default 40000),
#      RATE (messages per second, default 2000), PUB_CONNS (publisher connections, default 32: each POST waits for the broker),
#      FETCH_WAIT (--kafka-fetch-wait of the instances, default 5ms), BROKER_STORAGE (tansu's
#      --storage-engine, default sqlite://broker.db; memory://tansu/ is lighter), LOGS (a
#      folder the servers' and the broker's logs are copied to at the end).
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=$1; shift
LOAD_BIN=${LOAD_BIN:-target/release/sse-load}
SERVER_BIN=${SERVER_BIN:-target/release/server_sent_events}
TANSU_BIN=${TANSU_BIN:-${SSE_CACHE_DIR:-$HOME/.cache/server_sent_events}/tansu/bin/tansu}
MESSAGES=${MESSAGES:-40000}
# tansu 0.6.0 holds every fetch for the consumer's whole fetch wait, even when records are
# there (real Kafka answers at once), so the default 100 ms would be most of the latency.
FETCH_WAIT=${FETCH_WAIT:-5ms}
BROKER_PORT=29092
PORTS=(3921 3922 3923)

WORK=$(mktemp -d /tmp/sse-cluster.XXXXXX)
PIDS=()
cleanup() {
    if [ -f "$WORK/restarted.pid" ]; then PIDS+=("$(cat "$WORK/restarted.pid")"); fi
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
    done
    if [ -n "${LOGS:-}" ]; then mkdir -p "$LOGS" && cp "$WORK"/*.log "$LOGS"/ 2>/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

wait_ready() { # url
    for _ in $(seq 600); do
        if curl -fsS -o /dev/null "$1" 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "not ready: $1" >&2
    exit 1
}

start_instance() { # index, extra args...
    local i=$1; shift
    "$SERVER_BIN" --log warn --database "$WORK/r$i.sqlite3" --bind "127.0.0.1:${PORTS[$i]}" "$@" \
        >"$WORK/server$i.log" 2>&1 &
    PIDS+=($!)
    INSTANCE_PIDS[$i]=$!
}

declare -a INSTANCE_PIDS
if [ "$MODE" = single ]; then
    start_instance 0
    wait_ready "http://127.0.0.1:${PORTS[0]}/readyz"
    SUBS=(--sub "http://127.0.0.1:${PORTS[0]}/v3/sse?username=u{user}")
    PUBS=(--pub "http://127.0.0.1:${PORTS[0]}/v3/message?username=u{user}")
    MEASURE=(--pid "${INSTANCE_PIDS[0]}")
else
    mkdir -p "$WORK/broker"
    (cd "$WORK/broker" && exec "$TANSU_BIN" broker \
        --listener-url "tcp://127.0.0.1:$BROKER_PORT" \
        --advertised-listener-url "tcp://127.0.0.1:$BROKER_PORT" \
        --storage-engine "${BROKER_STORAGE:-sqlite://broker.db}") >"$WORK/broker.log" 2>&1 &
    PIDS+=($!)
    BROKER_PID=$!
    for _ in $(seq 200); do
        (exec 3<>"/dev/tcp/127.0.0.1/$BROKER_PORT") 2>/dev/null && break
        sleep 0.1
    done
    for topic in v3_messages v4_messages; do
        "$TANSU_BIN" topic create --broker "tcp://127.0.0.1:$BROKER_PORT" "$topic" --partitions 3 >/dev/null
    done
    for i in 0 1 2; do
        start_instance "$i" --kafka-brokers "127.0.0.1:$BROKER_PORT" --kafka-fetch-wait "$FETCH_WAIT"
    done
    for i in 0 1 2; do
        wait_ready "http://127.0.0.1:${PORTS[$i]}/readyz"
    done
    SUBS=()
    for i in 0 1 2; do
        SUBS+=(--sub "http://127.0.0.1:${PORTS[$i]}/v3/sse?username=u{user}")
    done
    PUBS=() MEASURE=()
    FIRST=0
    [ "$MODE" = kill ] && FIRST=1
    for i in $(seq "$FIRST" 2); do
        PUBS+=(--pub "http://127.0.0.1:${PORTS[$i]}/v3/message?username=u{user}")
        MEASURE+=(--pid "${INSTANCE_PIDS[$i]}")
    done
    echo "broker pid $BROKER_PID, instances ${INSTANCE_PIDS[*]}" >&2
fi
echo "load: $(cut -d' ' -f1-3 /proc/loadavg)" >&2

EXTRA=()
if [ "$MODE" = kill ]; then
    EXTRA=(--reconnect --rebalance-after 16s)
    VICTIM=${INSTANCE_PIDS[0]}
    # SIGKILL the first instance 8 s after publishing starts; start it again 3 s later.
    (
        for _ in $(seq 1200); do
            grep -q '^publishing' "$WORK/load.err" 2>/dev/null && break
            sleep 0.1
        done
        sleep 8
        echo "SIGKILL instance 0 (pid $VICTIM)" >&2
        kill -KILL "$VICTIM"
        sleep 3
        "$SERVER_BIN" --log warn --database "$WORK/r0.sqlite3" --bind "127.0.0.1:${PORTS[0]}" \
            --kafka-brokers "127.0.0.1:$BROKER_PORT" --kafka-fetch-wait "$FETCH_WAIT" \
            >"$WORK/server0-again.log" 2>&1 &
        echo $! >"$WORK/restarted.pid"
        echo "instance 0 started again (pid $!)" >&2
    ) &
fi

cpu_ticks() { # pid: user + system clock ticks
    awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0
}
[ -n "${BROKER_PID:-}" ] && BROKER_BEFORE=$(cpu_ticks "$BROKER_PID")
"$LOAD_BIN" latency "${SUBS[@]}" "${PUBS[@]}" "${MEASURE[@]}" --source-addrs 8 --strict \
    --conns 15000 --users 1000 --messages "$MESSAGES" --rate "${RATE:-2000}" --pub-conns "${PUB_CONNS:-32}" \
    --drain 10s "${EXTRA[@]}" "$@" 2> >(tee "$WORK/load.err" >&2)
if [ -n "${BROKER_PID:-}" ]; then
    echo "broker CPU over the run: $(( ($(cpu_ticks "$BROKER_PID") - BROKER_BEFORE) * 1000 / $(getconf CLK_TCK) )) ms" >&2
fi
