#!/usr/bin/env bash
# Installs the Kafka-compatible broker used by the tests (tansu 0.6.0 from crates.io) into a
# cache folder outside the repository. Idempotent: skips when the binary is already there.
# The build takes 10-20 minutes on 2 cores.
set -euo pipefail
root="${SSE_CACHE_DIR:-$HOME/.cache/server_sent_events}/tansu"
bin="$root/bin/tansu"
if [ -x "$bin" ] && "$bin" --version 2>/dev/null | grep -q '^tansu 0.6.0'; then
  echo "tansu already installed: $bin"
  exit 0
fi
mkdir -p "$root"
echo "building tansu 0.6.0 into $root (10-20 minutes on 2 cores)"
cargo install tansu --version 0.6.0 --locked --features dynostore,libsql --root "$root"
"$bin" --version
