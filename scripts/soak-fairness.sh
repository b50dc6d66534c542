#!/usr/bin/env bash
# Fairness soak (issue 10, item 4): a broker and two SIM workers on loopback; one client
# floods `echo` (--count 20000 --window 64, in a loop) while another sends a market order
# every 200 ms with a 5 s timeout. Prints how the orders ended and the echo throughput.
#
#   scripts/soak-fairness.sh [BIN_DIR] [SECONDS]      (defaults: target/release 600)
set -euo pipefail
BIN=${1:-target/release}
SECS=${2:-600}
WORK=$(mktemp -d)
pids=()
stop() {
  for ((i=${#pids[@]}-1; i>=0; i--)); do kill -TERM "${pids[i]}" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap stop EXIT

"$BIN/tradeplex-broker" --frontend "tcp://127.0.0.1:*" --backend "tcp://127.0.0.1:*" \
  --xsub "tcp://127.0.0.1:*" --xpub "tcp://127.0.0.1:*" --http off >"$WORK/broker.out" 2>/dev/null &
pids+=($!)
for _ in $(seq 1 100); do [ -s "$WORK/broker.out" ] && break; sleep 0.1; done
field() { tr ' ' '\n' <"$WORK/broker.out" | sed -n "s/^$1=//p"; }
FRONT=$(field frontend); BACK=$(field backend); XSUB=$(field xsub); XPUB=$(field xpub)
for _ in 1 2; do
  "$BIN/tradeplex-worker" --broker "$BACK" --events "$XSUB" --service SIM >/dev/null 2>&1 &
  pids+=($!)
done
export TRADEPLEX_BROKER=$FRONT TRADEPLEX_EVENTS=$XPUB TRADEPLEX_LOG=error
for _ in $(seq 1 100); do
  [ "$("$BIN/tradeplex" status --json 2>/dev/null | grep -o '"worker":' | wc -l)" -ge 2 ] && break
  sleep 0.1
done

end=$(( $(date +%s) + SECS ))
( while [ "$(date +%s)" -lt "$end" ]; do
    "$BIN/tradeplex" call echo '{"flood":1}' --count 20000 --window 64 2>/dev/null || true
  done >"$WORK/echo.txt" ) &
flood=$!
: >"$WORK/orders.txt"
orders=()
while [ "$(date +%s)" -lt "$end" ]; do
  ( err="$WORK/err.$BASHPID"
    if "$BIN/tradeplex" order IF2412 buy 1 --type market --timeout-ms 5000 \
        >/dev/null 2>"$err"; then echo ok
    else head -c 200 "$err" | tr -d '\n'; echo; fi
    rm -f "$err" ) >>"$WORK/orders.txt" &
  orders+=($!)
  sleep 0.2
done
wait "$flood" "${orders[@]}" 2>/dev/null || true
echo "orders: $(wc -l <"$WORK/orders.txt")"
sed -E 's/^([a-z_]+).*/\1/' "$WORK/orders.txt" | sort | uniq -c | sed 's/^/  /'
awk '{for (i = 1; i < NF; i++) if ($i == "calls/s:") { s += $(i + 1); n++ } }
     END { if (n) printf "echo rounds: %d, mean calls/s: %.0f\n", n, s / n }' "$WORK/echo.txt"
