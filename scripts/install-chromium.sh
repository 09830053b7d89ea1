#!/usr/bin/env bash
# Installs Debian's chromium for the frontend's headless e2e test (playwright-core
# drives it via executablePath). Idempotent: does nothing when /usr/bin/chromium exists.
set -euo pipefail

CHROMIUM_BIN=/usr/bin/chromium

if [ -x "$CHROMIUM_BIN" ]; then
  echo "install-chromium: $CHROMIUM_BIN already present ($("$CHROMIUM_BIN" --version 2>/dev/null || echo 'version unknown'))"
  exit 0
fi

bash "$(dirname "$0")/apt-install.sh" install-chromium chromium

if [ ! -x "$CHROMIUM_BIN" ]; then
  echo "install-chromium: apt-get finished but $CHROMIUM_BIN is still missing" >&2
  exit 1
fi
echo "install-chromium: installed $("$CHROMIUM_BIN" --version 2>/dev/null || echo chromium)"
