#!/usr/bin/env bash
# The test command: set-up, formatting, lints, then every unit, property and end-to-end
# test (the end-to-end tests start real broker and worker processes on 127.0.0.1), then
# the Python package's lints and tests against the freshly built binaries.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# The bench's peers (nats-server, vn.py in target/python-venv), so its smoke test measures
# them for real instead of skipping.
scripts/install-peers.sh
export TRADEPLEX_BENCH_REQUIRE_PEERS=1
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace
promtool check rules deploy/prometheus/alerts.yml
promtool test rules deploy/prometheus/alerts_test.yml

# Python: a venv under target/ (Debian's system Python refuses system-wide pip installs).
cargo build --workspace --bins
VENV=target/python-venv
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
# vn.py pinned: the TradeplexGateway tests (and a shipped CTA strategy) run against these;
# vnpy_rpcservice 1.1.0 (the newest, for vnpy >= 4.0) is what the migration test hosts.
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "./python[test,vnpy]" \
  "vnpy==4.5.0" "vnpy_ctastrategy==1.4.1" "vnpy_sqlite==1.1.3" "vnpy_riskmanager==2.0.0" \
  "vnpy_rpcservice==1.1.0"
"$VENV/bin/ruff" check python
"$VENV/bin/ruff" format --check python
"$VENV/bin/mypy" --config-file python/pyproject.toml python/tradeplex
QT_QPA_PLATFORM=offscreen TRADEPLEX_BIN_DIR="$PWD/target/debug" "$VENV/bin/python" -m pytest python/tests -q
