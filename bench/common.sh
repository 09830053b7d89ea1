# Sourced by bench/run.sh and scripts/bench-smoke.sh: a work folder and a server PID that are
# cleaned up on exit (the server stopped by its PID: TERM, then KILL after 5 s).
WORK=$(mktemp -d /tmp/sse-bench.XXXXXX)
PID=""
cleanup() {
    if [ -n "$PID" ] && kill -0 "$PID" 2>/dev/null; then
        kill -TERM "$PID" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM
