#!/usr/bin/env bash
# Runs one kvbench workload against a fresh 3-member etcd and the same workload against a
# fresh 3-node Aspen cluster, in this sitting, and prints both result lines.
#
#   scripts/bench-vs-etcd.sh queue --prefill 20000 --clients 16 --seconds 10
#   scripts/bench-vs-etcd.sh lock --clients 16 --seconds 10
#
# Needs etcd (apt-get install etcd-server), a release build of kvbench from
# ../shared/anchors/kvbench ($KVBENCH) and of aspen ($ASPEN).
set -euo pipefail
op=$1; shift
KVBENCH=${KVBENCH:-$HOME/.cache/kvbench-target/release/kvbench}
ASPEN=${ASPEN:-${CARGO_TARGET_DIR:-$HOME/.cache/aspen/target}/release/aspen}
anchor=$(cd "$(dirname "$0")/../.." && pwd)/shared/anchors/kvbench
scratch=$(mktemp -d /tmp/aspen-vs-etcd-XXXX)
up=
cleanup() {
  [ -f "$scratch/etcd/pids" ] && kill $(cat "$scratch/etcd/pids") 2>/dev/null || true
  [ -n "$up" ] && kill -INT "$up" 2>/dev/null && wait "$up" 2>/dev/null || true
  rm -rf "$scratch"
}
trap cleanup EXIT

bash "$anchor/run-etcd.sh" "$scratch/etcd" >/dev/null 2>&1
echo "etcd:  $("$KVBENCH" --op "$op" "$@" 2>&1 | grep '^op=')"
kill $(cat "$scratch/etcd/pids"); rm -f "$scratch/etcd/pids"

cd "$scratch"
"$ASPEN" cluster up --base-port 7811 >up.log 2>&1 &
up=$!
for _ in $(seq 1 100); do
  "$ASPEN" cluster status >/dev/null 2>&1 && break
  sleep 0.3
done
echo "aspen: $("$ASPEN" bench kv --op "$op" "$@" 2>&1 | grep '^op=')"
