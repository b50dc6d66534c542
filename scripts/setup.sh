#!/usr/bin/env bash
# Installs what Tradeplex builds against: Debian's libzmq (built with libsodium, so
# CURVE works) and pkg-config. Idempotent; needs root (or sudo) on a fresh machine.
set -euo pipefail
if dpkg -s libzmq3-dev >/dev/null 2>&1 && command -v pkg-config >/dev/null 2>&1; then
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq libzmq3-dev pkg-config >/dev/null
