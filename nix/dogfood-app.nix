# `nix run .#dogfood-local`: dogfood/run.sh with the package's binaries and the tools the
# loop and the pipeline's jobs use (a Rust toolchain for the shell jobs, nix for the nix
# job, QEMU for the vm job). Run it in a checkout of Aspen: that is the repository it pushes.
{ pkgs, aspen, vmImage ? null }:

pkgs.writeShellApplication {
  name = "aspen-dogfood-local";
  runtimeInputs = with pkgs; [
    bash coreutils gnugrep gnused gawk findutils util-linux procps
    git jq curl nix binutils gnutar gzip
    cargo rustc clippy rustfmt gcc pkg-config
    qemu_kvm
  ];
  text = ''
    export DOGFOOD_BIN_DIR=${aspen}/bin
    ${pkgs.lib.optionalString (vmImage != null) "export DOGFOOD_VM_IMAGE=\${DOGFOOD_VM_IMAGE:-${vmImage}}"}
    exec bash ${../dogfood}/run.sh "$@"
  '';
}
