#!/usr/bin/env bash
# Installs Debian packages for the install-*.sh scripts: apt-get as root, or through sudo.
# Usage: bash scripts/apt-install.sh WHO PACKAGE... (WHO names the caller in messages).
set -euo pipefail
who=$1
shift

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    SUDO="sudo"
  else
    echo "$who: not root and no sudo; cannot install $*" >&2
    exit 1
  fi
fi

echo "$who: installing Debian packages: $*"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update
$SUDO apt-get install -y "$@"
