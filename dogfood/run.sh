#!/usr/bin/env bash
# Aspen builds, tests, caches and deploys itself, on this machine:
#   1. a three-node cluster with the forge, the cache and CI workers (shell, nix, vm);
#   2. this repository's history pushed to the cluster's own forge;
#   3. the push runs .aspen/ci.ncl on the cluster's CI;
#   4. the release binary is kept as a blob recorded with its commit, and (with nix) put in
#      the cluster's cache as a store path;
#   5. the nodes roll onto that binary, one at a time (`aspen cluster upgrade`);
#   6. a summary: the run, its logs, the cache paths and each node's build.
#
#   dogfood/run.sh [--keep] [--repo DIR] [--work DIR] [--base-port N]
#
# Settings are in dogfood/config.sh (each also an environment variable). Step timings go to
# $DOGFOOD_WORK/timings.txt. Without --keep, everything it started stops when it ends.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
keep=0
while [ $# -gt 0 ]; do
  case $1 in
    --keep) keep=1 ;;
    --repo) DOGFOOD_REPO=$2; shift ;;
    --work) DOGFOOD_WORK=$2; shift ;;
    --base-port) DOGFOOD_BASE_PORT=$2; shift ;;
    -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "dogfood: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
# shellcheck source=dogfood/config.sh
. "$here/config.sh"
DOGFOOD_REPO=$(cd "$DOGFOOD_REPO" && pwd)
mkdir -p "$DOGFOOD_WORK"
DOGFOOD_WORK=$(cd "$DOGFOOD_WORK" && pwd)
cluster=$DOGFOOD_WORK/cluster
ticket=$cluster/cluster.ticket
timings=$DOGFOOD_WORK/timings.txt
pids=()
# Each process started, also in $DOGFOOD_WORK/pids for whoever stops a --keep run.
started() { pids+=("$1"); echo "${pids[*]}" >"$DOGFOOD_WORK/pids"; }

say() { printf '\n== %s\n' "$*"; }
note() { printf '   %s\n' "$*"; }
die() { printf 'dogfood: %s\n' "$*" >&2; exit 1; }
now() { date +%s.%N; }
step_start=0
begin() { step_start=$(now); say "$*"; }
took() {
  local secs
  secs=$(awk -v a="$step_start" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }')
  printf '%-28s %8s s\n' "$1" "$secs" >>"$timings"
  note "($1: $secs s)"
}

cleanup() {
  local code=$?
  if [ "$keep" = 1 ] && [ $code = 0 ]; then
    note "left running (--keep): pids ${pids[*]}; stop them with: kill ${pids[*]}"
    return
  fi
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do
    for _ in $(seq 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  exit $code
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- 0. the binaries the cluster starts on ----------------------------------------------
: >"$timings"
rm -f "$DOGFOOD_WORK/pids"
begin "0. binaries"
if [ -z "$DOGFOOD_BIN_DIR" ]; then
  target=${CARGO_TARGET_DIR:-$DOGFOOD_REPO/target}
  note "building aspen and git-remote-aspen (cargo build -p aspen-cli --bins, into $target)"
  (cd "$DOGFOOD_REPO" && cargo build --quiet -p aspen-cli --bins)
  DOGFOOD_BIN_DIR=$target/debug
fi
aspen_bin=$DOGFOOD_BIN_DIR/aspen
[ -x "$aspen_bin" ] || die "no aspen binary at $aspen_bin"
[ -x "$DOGFOOD_BIN_DIR/git-remote-aspen" ] || die "no git-remote-aspen at $DOGFOOD_BIN_DIR"
export PATH=$DOGFOOD_BIN_DIR:$PATH
note "nodes start on $aspen_bin"
took "binaries"

a() { ASPEN_TICKET_FILE=$ticket "$aspen_bin" "$@"; }

# ---- 1. the cluster, its cache and its workers ------------------------------------------
begin "1. a three-node cluster with the forge, the cache and CI workers"
rm -f "$ticket"
setsid "$aspen_bin" cluster up --nodes 3 --data-dir "$cluster" --base-port "$DOGFOOD_BASE_PORT" \
  >"$DOGFOOD_WORK/cluster-up.log" 2>&1 &
started $!
for _ in $(seq 600); do
  [ -f "$ticket" ] && break
  kill -0 "${pids[0]}" 2>/dev/null || { cat "$DOGFOOD_WORK/cluster-up.log" >&2; die "cluster up exited"; }
  sleep 0.1
done
[ -f "$ticket" ] || die "the cluster wrote no ticket within 60 s; see $DOGFOOD_WORK/cluster-up.log"
note "cluster in $cluster (ticket $ticket; node logs $cluster/n*/node.log)"
a cache show "$DOGFOOD_CACHE" >/dev/null 2>&1 || a cache create "$DOGFOOD_CACHE" --public >/dev/null
gateway=http://127.0.0.1:$DOGFOOD_BASE_PORT/$DOGFOOD_CACHE
note "cache $DOGFOOD_CACHE: nix substitutes from $gateway"
a forge repo show "$DOGFOOD_REPO_NAME" >/dev/null 2>&1 || a forge repo create "$DOGFOOD_REPO_NAME" >/dev/null
a ci enable "$DOGFOOD_REPO_NAME" >/dev/null
note "forge repository $DOGFOOD_REPO_NAME, CI enabled"

executors=shell
worker_env=(env "CARGO_TARGET_DIR=$DOGFOOD_TARGET_DIR")
if command -v nix-build >/dev/null; then
  executors=shell,nix
  # The release job's store path is built with the host's /bin/sh and no outside cache.
  worker_env+=("NIX_CONFIG=experimental-features = nix-command
substituters =
sandbox = false")
fi
mkdir -p "$DOGFOOD_TARGET_DIR"
# Jobs state what they need (the `cluster` job: 16 GiB); the worker offers this machine's.
memory_mib=$(awk '/^MemTotal:/ { print int($2 / 1024) }' /proc/meminfo)
ASPEN_TICKET_FILE=$ticket "${worker_env[@]}" "$aspen_bin" ci worker --id "shell-$$" --executors "$executors" \
  --capacity 1 --max-memory-mib "$memory_mib" --work-dir "$DOGFOOD_WORK/worker-shell" --cache "$DOGFOOD_CACHE" \
  --pass-env "$DOGFOOD_PASS_ENV" >"$DOGFOOD_WORK/worker-shell.log" 2>&1 &
started $!
note "worker shell-$$ ($executors), jobs build into $DOGFOOD_TARGET_DIR; log $DOGFOOD_WORK/worker-shell.log"
if command -v qemu-system-x86_64 >/dev/null; then
  image=$DOGFOOD_VM_IMAGE
  if [ -z "$image" ]; then
    image=$DOGFOOD_WORK/vm-image
    if [ ! -f "$image/initramfs.cpio" ]; then
      note "building the guest image into $image (static agent, kernel from apt)"
      (cd "$here/.." && RUSTFLAGS="-C target-feature=+crt-static" cargo build --quiet --release \
        -p aspen-vm-agent --target x86_64-unknown-linux-gnu)
      agent=${CARGO_TARGET_DIR:-$here/../target}/x86_64-unknown-linux-gnu/release/aspen-vm-agent
      "$aspen_bin" vm image build --out "$image" --agent "$agent" >/dev/null
    fi
  fi
  ASPEN_TICKET_FILE=$ticket "$aspen_bin" ci worker --id "vm-$$" --executors vm --capacity 1 \
    --work-dir "$DOGFOOD_WORK/worker-vm" --vm-image "$image" --hypervisor "$DOGFOOD_HYPERVISOR" \
    >"$DOGFOOD_WORK/worker-vm.log" 2>&1 &
  started $!
  note "worker vm-$$ (vm, $DOGFOOD_HYPERVISOR, image $image); log $DOGFOOD_WORK/worker-vm.log"
else
  note "no qemu-system-x86_64: no vm worker, so vm jobs wait (apt-get install qemu-system-x86)"
fi
# A worker that cannot register (its id taken, no cluster) exits at once: say so now, not
# after the pipeline's time limit.
sleep 2
for log in "$DOGFOOD_WORK"/worker-*.log; do
  if grep -q '^error' "$log"; then
    cat "$log" >&2
    die "a worker exited; see $log"
  fi
done
took "cluster and workers"

# ---- 2. push ----------------------------------------------------------------------------
begin "2. push $DOGFOOD_REPO to the forge"
# An earlier loop's unfinished runs would hold the workers: this push supersedes them.
for old in $(a --json ci runs --repo "$DOGFOOD_REPO_NAME" --limit 50 \
  | jq -r '.[] | select(.state == "pending" or .state == "queued" or .state == "running") | .run'); do
  a ci cancel "$old" >/dev/null && note "cancelled run $old of an earlier loop"
done
before=$(a --json ci runs --repo "$DOGFOOD_REPO_NAME" --limit 1 | jq '[.[].run] | max // 0')
commit=$(git -C "$DOGFOOD_REPO" rev-parse HEAD)
ASPEN_TICKET_FILE=$ticket git -C "$DOGFOOD_REPO" push --quiet --force \
  "aspen://default/$DOGFOOD_REPO_NAME" HEAD:refs/heads/main
note "pushed $commit to aspen://default/$DOGFOOD_REPO_NAME (main)"
took "push"

# ---- 3. the pipeline --------------------------------------------------------------------
begin "3. the push runs .aspen/ci.ncl"
run=
for _ in $(seq 600); do
  run=$(a --json ci runs --repo "$DOGFOOD_REPO_NAME" --limit 1 | jq --argjson b "$before" '[.[].run | select(. > $b)] | max // empty')
  [ -n "$run" ] && break
  sleep 0.1
done
[ -n "$run" ] || die "the push started no run within 60 s; see $cluster/n*/node.log"
note "run $run; follow it with: aspen ci show $run   or   aspen ci logs -f $run JOB"
status=0
a ci wait "$run" --within-secs "$DOGFOOD_RUN_LIMIT_SECS" >/dev/null || status=$?
a ci show "$run" | sed 's/^/   /'
a --json ci show "$run" | jq -r '.jobs[] | select(.started_ms and .finished_ms)
  | "job \(.name) \((.finished_ms - .started_ms) / 1000) s"' | while read -r _ name secs _; do
  printf '%-28s %8s s\n' "  job $name" "$secs" >>"$timings"
done
took "pipeline"
[ "$status" = 0 ] || die "run $run did not succeed (aspen ci show $run; aspen ci logs $run JOB); nothing is deployed"

# ---- 4. the release ---------------------------------------------------------------------
begin "4. the release: a blob recorded with its commit, and the cache"
run_json=$(a --json ci show "$run")
release_job=${DOGFOOD_RELEASE%%/*}
release_path=${DOGFOOD_RELEASE#*/}
blob=$(jq -r --arg j "$release_job" --arg p "$release_path" \
  '.jobs[] | select(.name == $j) | .artifacts[] | select(.path == $p) | .blob' <<<"$run_json")
[ -n "$blob" ] || die "job $release_job of run $run kept no $release_path"
note "blob $blob: $release_path of job $release_job, run $run, commit $(jq -r .commit <<<"$run_json")"
# The release-cache job's log names its output path; the cache's gateway must serve it.
cached=()
for path in $(a ci logs "$run" release-cache 2>/dev/null | grep -o '/nix/store/[a-z0-9]\{32\}-[^ "'"'"']*' \
  | grep -v '\.drv$' | sort -u); do
  hash=$(basename "$path" | cut -c1-32)
  if curl -fsS "$gateway/$hash.narinfo" >/dev/null 2>&1; then
    cached+=("$path")
    note "in the cache: $path ($gateway/$hash.narinfo)"
  fi
done
[ ${#cached[@]} -gt 0 ] || note "no store path in the cache (no nix here, or the pipeline has no release-cache job)"
took "release"

# ---- 5. deploy --------------------------------------------------------------------------
begin "5. the nodes roll onto the new binary"
a cluster upgrade --data-dir "$cluster" --artifact "ci:$run/$DOGFOOD_RELEASE" | sed 's/^/   /'
took "rolling upgrade"

# ---- 6. summary -------------------------------------------------------------------------
say "6. summary"
note "run $run: $(jq -r .state <<<"$run_json") ($(jq -r .commit <<<"$run_json"))"
note "logs: aspen ci logs $run JOB   (jobs: $(jq -r '[.jobs[].name] | join(", ")' <<<"$run_json"))"
for path in "${cached[@]}"; do note "cache: $path  (nix copy --from $gateway $path)"; done
a cluster builds | sed 's/^/   /'
note "timings in $timings:"
sed 's/^/     /' "$timings"
note "with ASPEN_TICKET_FILE=$ticket the aspen CLI reaches this cluster"
