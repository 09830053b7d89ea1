#!/usr/bin/env bash
# Installs the command-line tools the integration tests call: openssl (the auth and TLS tests
# generate their keys and certificates with it) and curl (HTTP/2 tests). Idempotent: does
# nothing when both are on PATH.
set -euo pipefail

missing=()
for tool in openssl curl; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [ "${#missing[@]}" -eq 0 ]; then
  echo "install-tools: openssl and curl already present"
  exit 0
fi

bash "$(dirname "$0")/apt-install.sh" install-tools "${missing[@]}"
