# Aspen built with crane from Cargo.lock: the package (the `aspen` CLI and the `aspen-node`
# binary), and the workspace's tests and clippy as checks.
{ pkgs, crane, src }:

let
  inherit (pkgs) lib;
  craneLib = crane.mkLib pkgs;

  # Rust sources, plus what the tests read: golden fixtures, the data-dir fixture, the Nix
  # files the NixOS tests evaluate, and the cluster script.
  keep = path: type:
    craneLib.filterCargoSources path type
    || lib.hasInfix "/tests/golden/" path
    || lib.hasInfix "/tests/fixtures/" path
    || lib.hasSuffix ".nix" path
    || lib.hasSuffix ".sh" path
    || lib.hasSuffix "flake.lock" path;
  source = lib.cleanSourceWith { src = src; filter = keep; name = "aspen-source"; };

  common = {
    pname = "aspen";
    version = "0.1.0";
    src = source;
    strictDeps = true;
  };
  cargoArtifacts = craneLib.buildDepsOnly common;
in
{
  aspen = craneLib.buildPackage (common // {
    inherit cargoArtifacts;
    cargoExtraArgs = "-p aspen-cli --bins";
    doCheck = false;
    meta = {
      description = "Aspen: distributed-systems primitives over one iroh QUIC endpoint";
      mainProgram = "aspen";
      license = with lib.licenses; [ mit asl20 ];
      platforms = lib.platforms.linux;
    };
  });

  # The microVM guest agent, linked statically (musl) so the guest image needs no libc. Its
  # dependencies are few (libc, serde, postcard), so it builds apart from the workspace's.
  vm-agent = (crane.mkLib pkgs.pkgsStatic).buildPackage (common // {
    pname = "aspen-vm-agent";
    cargoExtraArgs = "-p aspen-vm-agent --bin aspen-vm-agent";
    doCheck = false;
    meta = {
      description = "The guest agent (PID 1) of Aspen microVMs";
      mainProgram = "aspen-vm-agent";
      license = with lib.licenses; [ mit asl20 ];
      platforms = lib.platforms.linux;
    };
  });

  # The crate tests run real node processes on loopback inside the build sandbox; tests
  # that need network namespaces (root) skip themselves there.
  tests = craneLib.cargoTest (common // {
    inherit cargoArtifacts;
    cargoTestExtraArgs = "--workspace -- --test-threads 2";
    nativeCheckInputs = [ pkgs.nix pkgs.systemd pkgs.iproute2 pkgs.procps pkgs.python3 pkgs.bash ];
    ASPEN_NIXPKGS_LIB = "${pkgs.path}/lib";
    # The build sandbox has no writable Nix store: the flake-lock check is done by
    # `nix flake check` itself there.
    ASPEN_NO_NIX_STORE = "1";
    preCheck = ''
      export NIX_STATE_DIR=$TMPDIR/nix-state HOME=$TMPDIR
    '';
  });

  clippy = craneLib.cargoClippy (common // {
    inherit cargoArtifacts;
    cargoClippyExtraArgs = "--workspace --all-targets -- -D warnings";
  });
}
