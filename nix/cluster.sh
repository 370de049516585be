#!/usr/bin/env bash
# `nix run .#cluster`: a local three-node cluster, formed the way a NixOS cluster forms:
# node 1 starts with --init and writes a join ticket; nodes 2 and 3 join with it. Prints the
# cluster's ticket (with its root token) and writes it to ./.aspen/cluster/cluster.ticket, where
# the `aspen` CLI finds it, then stays up until Ctrl-C (or SIGTERM), stopping every node.
#
# Plain shell around the binaries: ASPEN_BIN_DIR names the directory holding `aspen` and
# `aspen-node` (the flake sets it; default: next to this script, else $PATH). Run it again to
# restart the same cluster with its data. Environment:
#   ASPEN_CLUSTER_DIR   where the nodes keep their data (default ./.aspen/cluster)
#   ASPEN_BASE_PORT     UDP port of node 1; nodes 2 and 3 use the next two (default 7700)
set -euo pipefail

bin_dir=${ASPEN_BIN_DIR:-}
if [ -z "$bin_dir" ] && [ -x "$(dirname "$0")/aspen-node" ]; then bin_dir=$(dirname "$0"); fi
node_bin=${bin_dir:+$bin_dir/}aspen-node
cli_bin=${bin_dir:+$bin_dir/}aspen
dir=${ASPEN_CLUSTER_DIR:-$PWD/.aspen/cluster}
base=${ASPEN_BASE_PORT:-7700}
mkdir -p "$dir"
chmod 0700 "$dir"

pids=()
stop() {
  trap - INT TERM EXIT
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  echo "cluster stopped; its data stays in $dir" >&2
  exit 0
}
trap stop INT TERM EXIT

start_node() { # id, extra args...
  local id=$1; shift
  mkdir -p "$dir/n$id"
  "$node_bin" --data-dir "$dir/n$id" --bind "127.0.0.1:$((base + id - 1))" --node-id "$id" "$@" \
    >>"$dir/n$id/node.log" 2>&1 &
  pids+=("$!")
}

wait_for_file() { # path, what
  for _ in $(seq 1 600); do
    [ -s "$1" ] && return 0
    for pid in "${pids[@]}"; do
      kill -0 "$pid" 2>/dev/null || { echo "a node exited early; see $dir/n*/node.log" >&2; exit 1; }
    done
    sleep 0.1
  done
  echo "timed out waiting for $2 ($1)" >&2
  exit 1
}

start_node 1 --init --join-ticket-out "$dir/join.ticket"
wait_for_file "$dir/join.ticket" "node 1's join ticket"
start_node 2 --join-ticket-file "$dir/join.ticket"
start_node 3 --join-ticket-file "$dir/join.ticket"
wait_for_file "$dir/n1/root.token" "the root token"

# The cluster ticket names every node and carries the root token: private, mode 0600.
root_token=$(cat "$dir/n1/root.token")
for _ in $(seq 1 600); do
  if "$cli_bin" --ticket-file "$dir/n1/node.ticket" --token "$root_token" --json cluster status 2>/dev/null |
    grep -o '"voter": *true' | wc -l | grep -qx 3; then
    break
  fi
  sleep 0.2
done
ticket=$("$cli_bin" --ticket-file "$dir/n1/node.ticket" --token "$root_token" cluster ticket --with-token)
umask 077
printf '%s\n' "$ticket" >"$dir/cluster.ticket.tmp"
mv "$dir/cluster.ticket.tmp" "$dir/cluster.ticket"
echo "cluster of 3 nodes is up; its ticket (also in $dir/cluster.ticket):"
echo "$ticket"
echo "stop it with Ctrl-C" >&2
wait "${pids[@]}"
