#!/usr/bin/env bash
# Installs the peers `tradeplex bench` measures beside Tradeplex and bare ZeroMQ:
# - Debian's nats-server (the NATS rows; the bench starts its own on a free loopback port,
#   so the system service the package may start on 4222 is not used);
# - a Python venv at target/python-venv (the one scripts/test.sh uses) with vn.py 4.5.0
#   and the tradeplex package (the vn.py RPC rows and the python scenario).
# Idempotent; apt needs root (or sudo) on a fresh machine. Then:
#   cargo build --release --workspace && target/release/tradeplex bench --scenarios rr
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
if ! command -v nats-server >/dev/null 2>&1 && [ ! -x /usr/sbin/nats-server ]; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nats-server >/dev/null
fi
VENV=target/python-venv
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c 'import tradeplex, vnpy.rpc, vnpy; assert vnpy.__version__ == "4.5.0"' 2>/dev/null; then
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "./python[vnpy]" "vnpy==4.5.0"
fi
NATS=$(command -v nats-server || echo /usr/sbin/nats-server)
VNPY=$("$VENV/bin/python" -c 'import vnpy; print(vnpy.__version__)')
echo "peers: $NATS ($("$NATS" --version)), $VENV/bin/python (vn.py $VNPY)"
