#!/usr/bin/env bash
# install-moto.sh: installs moto_server (the DynamoDB API used by tests/reports_store.rs) into a cached venv.
#
# Idempotent: does nothing when the venv already imports the pinned moto version.
# Location: ${SSE_CACHE_DIR:-$HOME/.cache/server_sent_events}/moto-venv
# The tests find it there, or through SSE_MOTO_PYTHON=<venv>/bin/python.
set -euo pipefail

MOTO_VERSION="5.2.5"
CACHE_DIR="${SSE_CACHE_DIR:-$HOME/.cache/server_sent_events}"
VENV="$CACHE_DIR/moto-venv"
PY="$VENV/bin/python"

if [[ -x "$PY" ]] && "$PY" - "$MOTO_VERSION" <<'PYEOF' 2>/dev/null; then
import sys
import moto, moto.server, werkzeug  # noqa: F401  (server extra present)
sys.exit(0 if moto.__version__ == sys.argv[1] else 1)
PYEOF
    echo "moto $MOTO_VERSION already installed in $VENV"
    exit 0
fi

command -v python3 >/dev/null || { echo "install-moto.sh: python3 is required" >&2; exit 1; }
mkdir -p "$CACHE_DIR"
if [[ ! -x "$PY" ]]; then
    python3 -m venv "$VENV"
fi
"$PY" -m pip install --quiet --disable-pip-version-check "moto[server]==$MOTO_VERSION"
"$PY" -c 'import moto, moto.server, werkzeug; print("moto", moto.__version__, "installed in", __import__("sys").prefix)'
