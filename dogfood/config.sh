# Settings of dogfood/run.sh. Each may be set in the environment instead.

# Where the loop keeps its cluster, workers, logs and timings.
: "${DOGFOOD_WORK:=$PWD/.aspen/dogfood}"
# Node 1's port (UDP for the node, TCP for its cache gateway); node i uses BASE+i-1.
: "${DOGFOOD_BASE_PORT:=7811}"
# The repository pushed to the cluster's forge, and its name there.
: "${DOGFOOD_REPO:=$(git rev-parse --show-toplevel 2>/dev/null || pwd)}"
: "${DOGFOOD_REPO_NAME:=aspen}"
# The binary cache the pipeline's nix jobs push to (public: nix substitutes without a token).
: "${DOGFOOD_CACHE:=dogfood}"
# The CI jobs' own cargo target dir, kept warm between runs and apart from the one that
# built the nodes (two checkouts must never share one).
: "${DOGFOOD_TARGET_DIR:=$HOME/.cache/aspen/dogfood-target}"
# Prebuilt `aspen` and `git-remote-aspen` to start from; empty: `cargo build` them.
: "${DOGFOOD_BIN_DIR:=}"
# The microVM guest image of the `vm` worker; empty: built into $DOGFOOD_WORK/vm-image.
: "${DOGFOOD_VM_IMAGE:=}"
# qemu-tcg runs everywhere; `auto` picks Cloud Hypervisor or QEMU with KVM where it works.
: "${DOGFOOD_HYPERVISOR:=qemu-tcg}"
# The pipeline's whole run may take this long.
: "${DOGFOOD_RUN_LIMIT_SECS:=5400}"
# Variables the shell jobs get from the worker's environment (jobs start from a clean one).
: "${DOGFOOD_PASS_ENV:=CARGO_HOME,RUSTUP_HOME,CARGO_TARGET_DIR,ASPEN_NIXPKGS_LIB}"
# The job and path of the release binary the nodes roll onto.
: "${DOGFOOD_RELEASE:=release/out/aspen}"
