#!/usr/bin/env bash
# Runs one integration test of tests/ N times, alone, and counts passes and failures (a
# flaky test is a bug: this is how one is caught and a fix is shown). Failing runs' output
# is kept under target/repeat-test/. Usage:
#   scripts/repeat-test.sh request_path broker_shutdown_drains_in_flight_requests_and_refuses_new_ones 60
# Load the cores meanwhile (e.g. `timeout 300 sh -c 'while :; do :; done' &`, once per core)
# to widen races the way a busy CI machine does.
set -euo pipefail
cd "$(dirname "$0")/.."
target=$1 name=$2 n=${3:-30}
cargo build --workspace --quiet
bin=$(cargo test -p tradeplex-tests --test "$target" --no-run --message-format=json 2>/dev/null \
  | python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == sys.argv[1]:
        print(m["executable"])' "$target" | tail -1)
out=target/repeat-test
mkdir -p "$out"
pass=0 fail=0
for i in $(seq "$n"); do
  if (cd tests && "$bin" "$name" --exact --nocapture >"../$out/last.out" 2>&1); then
    pass=$((pass + 1))
  else
    fail=$((fail + 1))
    cp "$out/last.out" "$out/fail-$i.out"
  fi
done
echo "$target::$name: $pass passed, $fail failed of $n"
[ "$fail" -eq 0 ]
