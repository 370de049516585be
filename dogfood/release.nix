# The release binary as a store path, for the cluster's cache. The `release-cache` job builds
# this (nix-build dogfood/release.nix) in a workspace where the worker put out/aspen, the
# artifact of the `release` job it needs. The output is a short text naming the commit and
# the binary's store path, so the closure the worker pushes to the cache holds the binary.
# It needs no nixpkgs: the builder is /bin/sh and uses only its builtins.
let
  commit = builtins.getEnv "ASPEN_CI_COMMIT";
  binary = builtins.path { path = ../out/aspen; name = "aspen"; };
in
builtins.derivation {
  name = "aspen-release" + (if commit == "" then "" else "-" + builtins.substring 0 12 commit);
  system = builtins.currentSystem;
  builder = "/bin/sh";
  args = [ "-c" "echo commit=${commit} > $out; echo binary=${binary} >> $out" ];
}
