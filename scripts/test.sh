#!/usr/bin/env bash
# Runs every test of the project. Installs what the tests need first (idempotent; cached under
# ${SSE_CACHE_DIR:-~/.cache/server_sent_events}, Chromium from Debian's packages):
#   - tansu, a Kafka-compatible broker (built from crates.io, 10-20 minutes the first time);
#   - moto_server, a DynamoDB-API server (PyPI, in a venv);
#   - Chromium and the dashboard's npm packages, for the browser tests;
#   - openssl and curl (Debian's packages), which the auth and HTTP tests call.
# Then: Rust formatting, lints, unit and integration tests (real broker, real DynamoDB API,
# real server), a short load smoke with sse-load, and the dashboard's lint, type check, component tests, build and end-to-end
# test in a real browser.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== installing test services"
bash scripts/install-tansu.sh
bash scripts/install-moto.sh
bash scripts/install-chromium.sh
bash scripts/install-tools.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "== cargo test"
cargo test --workspace
echo "== load smoke: 1,000 streams, 1,000 messages, zero lost (release build)"
bash scripts/bench-smoke.sh

echo "== dashboard: lint, type check, component tests, build"
cd server_sent_events_frontend
npm ci --no-audit --no-fund
npm run lint
npm run typecheck
npm test
npm run build
echo "== dashboard: end-to-end in Chromium"
SSE_SERVER_BIN="${CARGO_TARGET_DIR:-$PWD/../target}/debug/server_sent_events" npm run e2e
