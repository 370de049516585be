#!/bin/sh
# Packs what the `vm-cluster` job runs in its guest into one file, OUT (default
# vm-bundle.tar.gz), for the `cluster-build` job of .aspen/ci.ncl. Runs on the host, in the
# checkout, with the worker's Rust toolchain.
#
# The guest image is busybox, a kernel and the static guest agent: it has no C library and
# no dynamic loader, and no network. So the bundle carries, besides the two executables
# (stripped of debug info, which is most of their size):
#   bin/cluster   aspen-cli's `cluster` integration tests (tests/cluster/), built as
#                 `cargo test --no-run` builds them;
#   bin/aspen     the node binary those tests start (they find it through $ASPEN_BIN);
#   root/...      every shared library `ldd` names for them, the dynamic loader included,
#                 at the absolute path the executables ask for, so that copying root/ over
#                 the guest's / lets them run unchanged;
#   COMMIT        the commit they were built from.
set -eu

out=${1:-vm-bundle.tar.gz}
case $out in /*) ;; *) out=$(pwd)/$out ;; esac

# The executable cargo reports for the target named $1, from its JSON messages on stdin.
executable() {
  grep '"reason":"compiler-artifact"' | grep "\"name\":\"$1\"" | grep -o '"executable":"[^"]*"' | tail -n 1 |
    cut -d '"' -f 4
}

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT

aspen=$(cargo build -p aspen-cli --bin aspen --message-format=json-render-diagnostics | executable aspen)
tests=$(cargo test -p aspen-cli --test cluster --no-run --message-format=json-render-diagnostics | executable cluster)
[ -x "$aspen" ] || { echo "vm-bundle: cargo named no aspen executable" >&2; exit 1; }
[ -x "$tests" ] || { echo "vm-bundle: cargo named no cluster test executable" >&2; exit 1; }

mkdir -p "$stage/bin" "$stage/root"
for pair in "aspen $aspen" "cluster $tests"; do
  set -- $pair
  if command -v strip >/dev/null; then
    strip --strip-debug -o "$stage/bin/$1" "$2"
  else
    cp "$2" "$stage/bin/$1"
  fi
done

# The libraries and the loader, from ldd's `name => /path (addr)` and `/path (addr)` lines.
for bin in "$stage"/bin/*; do
  ldd "$bin" | awk '{ for (i = 1; i <= NF; i++) if ($i ~ /^\//) print $i }'
done | sort -u | while read -r lib; do
  mkdir -p "$stage/root$(dirname "$lib")"
  cp -L "$lib" "$stage/root$lib"
done

echo "${ASPEN_CI_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}" >"$stage/COMMIT"
tar -czf "$out" -C "$stage" .
echo "vm-bundle: $out ($(wc -c <"$out") bytes):"
tar -tzvf "$out"
