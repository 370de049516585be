#!/usr/bin/env bash
# Runs Aspen's whole test suite: formatting, lints, unit, property and multi-process
# cluster tests (fault injection and the linearizability check included).
#
# Installs what the tests need first: iproute2 (ip, tc) for the network namespaces
# the cluster tests partition; nix-bin (nix-instantiate, nix) and systemd (systemd-analyze)
# and python3 for the NixOS checks; git for the forge tests (the real git client); fuse3 (fusermount3) for the AspenFS mount
# tests when not run as root; qemu-system-x86 for the microVM tests (which build their guest
# image from Debian's cloud kernel and busybox-static packages with `apt-get download`); jq
# and curl for dogfood/run.sh. Partition tests need root, and the mount tests /dev/fuse; without
# them they are skipped with a notice, and everything else runs on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/aspen/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "test.sh: need root (or sudo) to run: $*" >&2; return 1; fi
}

need_pkgs=()
command -v ip >/dev/null || need_pkgs+=(iproute2)
command -v tc >/dev/null || need_pkgs+=(iproute2)
command -v nix-instantiate >/dev/null || need_pkgs+=(nix-bin)
command -v systemd-analyze >/dev/null || need_pkgs+=(systemd)
command -v python3 >/dev/null || need_pkgs+=(python3)
command -v git >/dev/null || need_pkgs+=(git)
command -v fusermount3 >/dev/null || need_pkgs+=(fuse3)
command -v qemu-system-x86_64 >/dev/null || need_pkgs+=(qemu-system-x86)
# dogfood/run.sh, which the dogfood test runs, reads the CLI's JSON with jq and asks the
# cache gateway with curl.
command -v jq >/dev/null || need_pkgs+=(jq)
command -v curl >/dev/null || need_pkgs+=(curl)
# The microVM tests build a guest image from Debian's cloud kernel package (apt-get download),
# which needs the package lists.
apt_lists_stale=0
apt-cache show linux-image-cloud-amd64 >/dev/null 2>&1 || apt_lists_stale=1
if [ ${#need_pkgs[@]} -gt 0 ] || [ $apt_lists_stale = 1 ]; then
  echo "test.sh: installing ${need_pkgs[*]}"
  as_root apt-get update -qq
  if [ ${#need_pkgs[@]} -gt 0 ]; then
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}"
  fi
fi
if ! cargo clippy --version >/dev/null 2>&1 || ! cargo fmt --version >/dev/null 2>&1; then
  if command -v rustup >/dev/null; then
    rustup component add clippy rustfmt
  else
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rust-clippy rustfmt
  fi
fi

echo "== cargo fmt --check"
cargo fmt --all --check
echo "== cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --quiet -- -D warnings
echo "== cargo test"
# Cluster tests start several node processes each; two at a time suit a 2-core machine.
cargo test --workspace -- --test-threads "${ASPEN_TEST_THREADS:-2}"
