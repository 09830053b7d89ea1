#!/usr/bin/env bash
# Runs every test of the project: formatting, lints, unit and integration tests.
# Installs what the tests need first (idempotent; cached under ~/.cache/server_sent_events).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "== cargo test"
cargo test --workspace
