#!/bin/sh
# The `vm-cluster` job of .aspen/ci.ncl, run by the vm executor inside a fresh microVM, in
# the job's workspace (/workspace, the host's checkout over VirtioFS). Runs a slice of
# aspen-cli's cluster tests against real `aspen node` processes started inside the guest, on
# the guest's loopback (the guest has no other network).
#
#   sh dogfood/ci/vm-slice.sh [TEST-FILTER...]
#
# It needs the file dogfood/ci/vm-bundle.sh makes, the artifact of the `cluster-build` job
# this one needs, which the worker puts into this job's workspace: $ASPEN_VM_BUNDLE, by
# default vm-bundle.tar.gz. The guest image is busybox with no C library, so the test
# executable, the node binary and the libraries they link come in that file. With no filter
# it runs the three tests below (each starts and initializes a three-node cluster); a filter
# is a substring of test names, as libtest takes it. Tests with second-scale timing do not
# belong here: QEMU TCG runs the guest several times slower (basic::lease_expiry_..., whose
# 2 s lease must survive on 400 ms keepalives, fails so).
set -eu

bundle=${ASPEN_VM_BUNDLE:-vm-bundle.tar.gz}
if [ ! -f "$bundle" ]; then
  echo "vm-slice: no $bundle in this workspace ($(pwd)): it is the artifact of the job this" >&2
  echo "vm-slice: one needs, cluster-build (dogfood/ci/vm-bundle.sh), which the worker puts here" >&2
  echo "vm-slice: (workers from before they did so do not)" >&2
  exit 1
fi

start=$(date +%s)
# The nodes talk over loopback. Agents before e704183's successor left it down (they ran
# /bin/ip; busybox installs /sbin/ip), so bring it up in any case.
ip link set lo up
dir=/tmp/vm-bundle
mkdir -p "$dir"
tar -xzf "$bundle" -C "$dir"
# The guest's / is its initramfs, in memory and writable: the libraries and the loader go
# where the executables look for them.
cp -a "$dir/root/." /
echo "vm-slice: bundle of commit $(cat "$dir/COMMIT") unpacked in $(($(date +%s) - start)) s;" \
  "guest $(uname -r), $(nproc) cpus, $(free -m | awk '/^Mem:/ { print $2 }') MiB"

[ $# -gt 0 ] || set -- \
  basic::writes_through_one_node_are_read_linearizably_through_every_node \
  basic::scan_paginates_in_key_order_and_delete_prefix_removes_exactly_the_prefix \
  basic::cas_and_transactions_decide_on_the_committed_state

# The nodes: the bundle's aspen. Loopback, not the testkit's network namespaces (it makes
# them with `ip netns`, which busybox's `ip` lacks). Their data directories go to the guest's
# /tmp, in memory.
# The guest is emulated (TCG), and shares the host with other jobs: the testkit stretches
# its Raft timings, init and waits by ASPEN_TESTKIT_SLOWNESS.
export ASPEN_TESTKIT_SLOWNESS="${ASPEN_TESTKIT_SLOWNESS:-5}"
export ASPEN_BIN="$dir/bin/aspen" ASPEN_TESTKIT_NETNS=0 TMPDIR=/tmp RUST_BACKTRACE=1
"$dir/bin/cluster" --list "$@"
"$dir/bin/cluster" --test-threads 1 "$@"
echo "vm-slice: done in $(($(date +%s) - start)) s"
