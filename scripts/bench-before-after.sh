#!/usr/bin/env bash
# Runs the KV, lock and queue workloads against etcd, then against two Aspen builds (before
# and after a change), one workload at a time so the three share each moment of the
# machine; then `aspen bench blob` with each build. Prints one line per run.
#
#   scripts/bench-before-after.sh /path/to/aspen-before /path/to/aspen-after
#
# Needs etcd (apt-get install etcd-server) and a release build of kvbench from
# ../shared/anchors/kvbench ($KVBENCH).
set -euo pipefail
before=$(realpath "$1"); after=$(realpath "$2")
here=$(cd "$(dirname "$0")" && pwd)
workloads=(
  "put --clients 1 --seconds 10"
  "put --clients 64 --seconds 10"
  "get --clients 1 --seconds 10"
  "get --clients 64 --seconds 10"
  "lock --clients 16 --seconds 10"
  "queue --prefill 20000 --clients 16 --seconds 10"
)
for w in "${workloads[@]}"; do
  echo "== $w"
  # shellcheck disable=SC2086
  ASPEN=$before bash "$here/bench-vs-etcd.sh" $w | sed 's/^aspen:/before:/'
  # shellcheck disable=SC2086
  ASPEN=$after bash "$here/bench-vs-etcd.sh" $w | grep '^aspen:' | sed 's/^aspen:/after: /'
done
for bin in "$before" "$after"; do
  echo "== blob ($bin)"
  scratch=$(mktemp -d /tmp/aspen-blob-bench-XXXX)
  (cd "$scratch" && "$bin" bench blob --size-mib "${BLOB_MIB:-1024}" --start-cluster 2>&1 | grep -v '^\s*$' | tail -8)
  rm -rf "$scratch"
done
