#!/usr/bin/env bash
# The audit journal's replication in a broker pair under load: a release broker pair (or,
# with NOPAIR=1, the primary alone as the peer to compare with), one SIM worker, and
# `tradeplex call SIM send_order --count 3000` at each window in WINDOWS; samples the
# primary's replication lag every 10 ms and prints its maximum and both journals' lengths.
# Build first: cargo build --release -p tradeplex-broker -p tradeplex-worker -p tradeplex-cli
set -uo pipefail
cd "$(dirname "$0")/.."
B=target/release
D=$(mktemp -d)
pids=()
stop() {
  for ((i=${#pids[@]}-1; i>=0; i--)); do kill -TERM "${pids[i]}" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$D"
}
trap stop EXIT
port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
for r in p b; do for k in fe be xs xp http st; do eval "${r}_$k=$(port)"; done; done
config() { # role own-state-port peer-state-port
  if [ "${NOPAIR:-0}" != 1 ]; then
    printf '[pair]\nrole = "%s"\nbind = "tcp://127.0.0.1:%s"\npeer = "tcp://127.0.0.1:%s"\npeer_timeout_ms = 1500\n' "$1" "$2" "$3"
  fi
  printf '[risk]\njournal = "%s/%s.jsonl"\njournal_fsync = "10ms"\n[[risk.account]]\nname = "sim"\ncontract_order_limit = 100000000\n' "$D" "$1"
}
broker() { # role fe be xs xp http
  $B/tradeplex-broker --config "$D/$1.toml" --frontend "tcp://127.0.0.1:$2" --backend "tcp://127.0.0.1:$3" \
    --xsub "tcp://127.0.0.1:$4" --xpub "tcp://127.0.0.1:$5" --http "127.0.0.1:$6" 2>"$D/$1.log" &
  pids+=($!)
}
config primary "$p_st" "$b_st" >"$D/primary.toml"
config backup "$b_st" "$p_st" >"$D/backup.toml"
broker primary "$p_fe" "$p_be" "$p_xs" "$p_xp" "$p_http"
[ "${NOPAIR:-0}" = 1 ] || broker backup "$b_fe" "$b_be" "$b_xs" "$b_xp" "$b_http"
sleep 2
$B/tradeplex-worker --broker "tcp://127.0.0.1:$p_be" --events "tcp://127.0.0.1:$p_xs" --service SIM 2>"$D/worker.log" &
pids+=($!)
sleep 2
python3 - "$p_http" >"$D/lag.txt" <<'PY' &
import sys, time, urllib.request
lines = seconds = 0.0
while True:
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics", timeout=1).read().decode()
    except Exception:
        break
    for l in text.splitlines():
        if l.startswith("tradeplex_pair_replication_lag_lines "):
            lines = max(lines, float(l.split()[1]))
        if l.startswith("tradeplex_pair_replication_lag_seconds "):
            seconds = max(seconds, float(l.split()[1]))
    print(f"max lag_lines {lines:.0f} max lag_seconds {seconds:.3f}", flush=True)
    time.sleep(0.01)
PY
sampler=$!
ORDER='{"op":"send_order","symbol":"AAPL","direction":"long","order_type":"limit","price":100,"volume":1,"account":"sim"}'
for w in ${WINDOWS:-1 16}; do
  echo "window $w: $($B/tradeplex --broker "tcp://127.0.0.1:$p_fe" call SIM "$ORDER" --count 3000 --window "$w")"
done
sleep 1
kill "$sampler" 2>/dev/null; wait "$sampler" 2>/dev/null
tail -1 "$D/lag.txt"
wc -l "$D"/*.jsonl | sed "s|$D/||"
