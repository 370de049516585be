{
  description = "Aspen: distributed-systems primitives over one iroh QUIC endpoint, shipped as a NixOS appliance";

  inputs = {
    nixpkgs.url = "github:NixOS/nixpkgs/release-25.11";
    crane.url = "github:ipetkov/crane";
  };

  outputs = { self, nixpkgs, crane }:
    let
      inherit (nixpkgs) lib;
      systems = [ "x86_64-linux" "aarch64-linux" ];
      forAllSystems = f: lib.genAttrs systems (system: f system nixpkgs.legacyPackages.${system});
      built = forAllSystems (_: pkgs: import ./nix/package.nix { inherit pkgs crane; src = ./.; });

      # The module, with this flake's package as the default.
      module = { pkgs, lib, ... }: {
        imports = [ ./modules/aspen-node.nix ];
        services.aspen.package = lib.mkDefault self.packages.${pkgs.stdenv.hostPlatform.system}.aspen;
      };

      node = system: modules: lib.nixosSystem {
        modules = [ { nixpkgs.hostPlatform = system; } module ] ++ modules;
      };
      image = system: node system [ ./images/node.nix ];
    in
    {
      packages = forAllSystems (system: pkgs: {
        aspen = built.${system}.aspen;
        default = built.${system}.aspen;
        image-qcow2 = (image system).config.system.build.images.qemu-efi;
        image-iso = (image system).config.system.build.images.iso;
        vm-agent = built.${system}.vm-agent;
      } // lib.optionalAttrs (system == "x86_64-linux") {
        # The runner boots guests with qemu-system-x86_64 (or Cloud Hypervisor) on x86-64.
        vm-image = import ./images/vm-guest.nix { inherit pkgs; aspen = built.${system}.aspen; agent = built.${system}.vm-agent; };
      });

      apps = forAllSystems (system: pkgs: rec {
        cluster = {
          type = "app";
          program = lib.getExe (import ./nix/cluster-app.nix { inherit pkgs; aspen = built.${system}.aspen; });
        };
        # Aspen builds, tests, caches and deploys itself on this machine (dogfood/run.sh).
        dogfood-local = {
          type = "app";
          program = lib.getExe (import ./nix/dogfood-app.nix {
            inherit pkgs;
            aspen = built.${system}.aspen;
            vmImage = if system == "x86_64-linux" then self.packages.${system}.vm-image else null;
          });
        };
        default = cluster;
      });

      nixosModules = {
        aspen-node = module;
        default = module;
      };

      nixosConfigurations = {
        node1 = node "x86_64-linux" [ (import ./images/example-cluster.nix { id = 1; address = "10.0.0.11"; }) ];
        node2 = node "x86_64-linux" [ (import ./images/example-cluster.nix { id = 2; address = "10.0.0.12"; }) ];
        node3 = node "x86_64-linux" [ (import ./images/example-cluster.nix { id = 3; address = "10.0.0.13"; }) ];
        image = image "x86_64-linux";
      };

      checks = forAllSystems (system: pkgs: {
        vm-cluster = import ./vm-tests/cluster.nix { inherit pkgs module; aspen = built.${system}.aspen; };
        vm-forge = import ./vm-tests/forge.nix { inherit pkgs module; aspen = built.${system}.aspen; };
        vm-cache = import ./vm-tests/cache.nix { inherit pkgs module; aspen = built.${system}.aspen; };
        vm-fs = import ./vm-tests/fs.nix { inherit pkgs module; aspen = built.${system}.aspen; };
        vm-ci = import ./vm-tests/ci.nix { inherit pkgs module; aspen = built.${system}.aspen; };
        cargo-test = built.${system}.tests;
        clippy = built.${system}.clippy;
      });

      devShells = forAllSystems (system: pkgs: {
        default = pkgs.mkShell {
          inputsFrom = [ built.${system}.aspen ];
          packages = [
            pkgs.cargo
            pkgs.rustc
            pkgs.clippy
            pkgs.rustfmt
            pkgs.rust-analyzer
            pkgs.iproute2
            pkgs.nix
            pkgs.systemd
            pkgs.etcd
            pkgs.qemu
          ];
        };
      });
    };
}
