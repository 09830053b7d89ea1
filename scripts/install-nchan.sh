#!/usr/bin/env bash
# Installs the benchmark peer nginx + nchan (Debian packages `nginx`, `libnginx-mod-nchan`).
# Idempotent: does nothing when nginx and the nchan module are already present.
# Usage: scripts/install-nchan.sh   (needs root or sudo; Debian/Ubuntu with apt-get)
set -euo pipefail

MODULE=/usr/lib/nginx/modules/ngx_nchan_module.so

if command -v nginx >/dev/null 2>&1 && [ -f "$MODULE" ]; then
    echo "install-nchan: nginx and nchan already installed ($(nginx -v 2>&1))" >&2
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get -o DPkg::Lock::Timeout=600 update
$SUDO apt-get -o DPkg::Lock::Timeout=600 install -y --no-install-recommends nginx libnginx-mod-nchan

# The Debian package starts a system nginx on port 80 where an init system is present; the
# benchmark runs its own nginx from a private prefix, so stop the system one if it is running.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet nginx 2>/dev/null; then
    $SUDO systemctl stop nginx || true
fi

if [ ! -f "$MODULE" ]; then
    echo "install-nchan: $MODULE missing after install" >&2
    exit 1
fi
echo "install-nchan: installed $(nginx -v 2>&1) with nchan module" >&2
