# `nix run .#cluster`: nix/cluster.sh with the package's binaries.
{ pkgs, aspen }:

pkgs.writeShellApplication {
  name = "aspen-cluster";
  runtimeInputs = [ pkgs.coreutils pkgs.gnugrep ];
  text = ''
    export ASPEN_BIN_DIR=${aspen}/bin
    exec ${pkgs.bash}/bin/bash ${./cluster.sh} "$@"
  '';
}
