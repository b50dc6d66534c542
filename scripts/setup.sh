#!/usr/bin/env bash
# Installs what Tradeplex builds against: Debian's libzmq (built with libsodium, so
# CURVE works) and pkg-config, plus Python 3 with venv for the Python package's tests,
# chromium and chromedriver (the console's browser test) and promtool (package
# `prometheus`: the alert rules' unit tests).
# Idempotent; needs root (or sudo) on a fresh machine.
set -euo pipefail
have_python() { command -v python3 >/dev/null 2>&1 && python3 -c 'import ensurepip, venv' 2>/dev/null; }
have_tools() { command -v chromium && command -v chromedriver && command -v promtool; } >/dev/null 2>&1
if dpkg -s libzmq3-dev >/dev/null 2>&1 && command -v pkg-config >/dev/null 2>&1 && have_python && have_tools; then
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
$SUDO apt-get update -qq
PKGS="libzmq3-dev pkg-config chromium chromium-driver prometheus"
if ! have_python; then PKGS="$PKGS python3 python3-venv python3-pip"; fi
# shellcheck disable=SC2086
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $PKGS >/dev/null
