#!/usr/bin/env bash
# Installs Debian's chromium for the frontend's headless e2e test (playwright-core
# drives it via executablePath). Idempotent: does nothing when /usr/bin/chromium exists.
set -euo pipefail

CHROMIUM_BIN=/usr/bin/chromium

if [ -x "$CHROMIUM_BIN" ]; then
  echo "install-chromium: $CHROMIUM_BIN already present ($("$CHROMIUM_BIN" --version 2>/dev/null || echo 'version unknown'))"
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    SUDO="sudo"
  else
    echo "install-chromium: not root and no sudo; cannot install chromium" >&2
    exit 1
  fi
fi

echo "install-chromium: installing Debian package 'chromium'"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update
$SUDO apt-get install -y chromium

if [ ! -x "$CHROMIUM_BIN" ]; then
  echo "install-chromium: apt-get finished but $CHROMIUM_BIN is still missing" >&2
  exit 1
fi
echo "install-chromium: installed $("$CHROMIUM_BIN" --version 2>/dev/null || echo chromium)"
