#!/bin/sh
# CURVE at first start (compose's `keys` service runs this before the broker):
#   curve-init.sh KEY_DIR BASE_CONFIG OUT_CONFIG
# Creates, once, key pairs for the broker, the workers and one client in KEY_DIR (a
# persistent volume: later starts reuse them), each public key also alone in NAME.pub,
# then writes OUT_CONFIG = BASE_CONFIG plus a [curve] table allow-listing the client key
# on the client sockets and the worker key on the worker sockets (never the other way).
set -eu
dir=$1 base=$2 out=$3
umask 077
for k in broker worker client; do
  [ -s "$dir/$k.key" ] || tradeplex keygen > "$dir/$k.key"
  sed -n 's/^public_key = "\(.*\)"$/\1/p' "$dir/$k.key" | tr -d '\n' > "$dir/$k.pub"
done
{
  cat "$base"
  printf '\n# Appended by curve-init.sh.\n[curve]\nkey_file = "%s/broker.key"\n' "$dir"
  printf 'allow_clients = ["%s"]\nallow_workers = ["%s"]\n' \
    "$(cat "$dir/client.pub")" "$(cat "$dir/worker.pub")"
} > "$out"
echo "curve-init: keys in $dir, broker config $out (broker public key $(cat "$dir/broker.pub"))"
