#!/usr/bin/env bash
# The main job: a whole local cluster in one go — a broker, two workers and a client —
# on 127.0.0.1 with the default ports. Ctrl-C stops everything cleanly (SIGTERM to each).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --workspace --bins --examples
BIN=target/release
pids=()
stop() {
  trap - INT TERM EXIT
  echo "stopping cluster..." >&2
  for ((i=${#pids[@]}-1; i>=0; i--)); do kill -TERM "${pids[i]}" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap stop INT TERM EXIT

$BIN/tradeplex-broker --config deploy/broker.toml &
pids+=($!)
for _ in 1 2; do
  $BIN/tradeplex-worker --config deploy/worker.toml --service SIM &
  pids+=($!)
done
# Wait until both workers are registered.
for _ in $(seq 1 100); do
  n=$($BIN/tradeplex status --json 2>/dev/null | grep -o '"worker":' | wc -l || true)
  [ "${n:-0}" -ge 2 ] && break
  sleep 0.1
done
$BIN/tradeplex status
echo "console: http://127.0.0.1:9100/ (deploy/broker.toml's http address)" >&2
if [ -x "$BIN/examples/ma_cross" ]; then
  $BIN/examples/ma_cross "$@" &
  pids+=($!)
  wait "${pids[-1]}" || true
else
  $BIN/tradeplex call echo '{"hello":"tradeplex"}'
  $BIN/tradeplex call echo '{}' --count 20000 --window 256
fi
