# Evaluates modules/aspen-node.nix with the real module system (nixpkgs' lib) and a small
# declaration of the NixOS options the module sets, without the rest of nixpkgs. Used by the
# crate tests (crates/aspen-cli/tests/nixos.rs), where nixpkgs cannot be fetched:
#
#   nix-instantiate --eval --strict --json nix/tests/eval-module.nix \
#     --arg lib 'import /path/to/nixpkgs/lib' --argstr case full
#
# Prints the evaluated service (its ExecStart, environment and serviceConfig), the users, the
# firewall ports (UDP and TCP), the other units (AspenFS mounts and the CI worker among them),
# nix.settings, the system packages (with the text of the scripts among them), the tmpfiles
# rules and the warnings, or fails with the module's assertion messages.
{ lib, case }:

let
  inherit (lib) mkOption types;

  # What NixOS declares and the module sets; each is a plain mergeable value here.
  hostOptions = {
    options = {
      assertions = mkOption { type = types.listOf types.unspecified; default = [ ]; };
      warnings = mkOption { type = types.listOf types.str; default = [ ]; };
      users.users = mkOption { type = types.attrsOf types.anything; default = { }; };
      users.groups = mkOption { type = types.attrsOf types.anything; default = { }; };
      networking.firewall.allowedUDPPorts = mkOption { type = types.listOf types.port; default = [ ]; };
      networking.firewall.allowedTCPPorts = mkOption { type = types.listOf types.port; default = [ ]; };
      environment.systemPackages = mkOption { type = types.listOf types.unspecified; default = [ ]; };
      systemd.services = mkOption { type = types.attrsOf types.anything; default = { }; };
      systemd.paths = mkOption { type = types.attrsOf types.anything; default = { }; };
      systemd.tmpfiles.rules = mkOption { type = types.listOf types.str; default = [ ]; };
      # The nix NixOS runs its daemon with: the CI worker's default.
      nix.package = mkOption { type = types.package; default = drv "nix"; };
      # nix.settings as NixOS declares it: free-form, with these two lists declared.
      nix.settings = mkOption {
        type = types.submodule {
          freeformType = types.attrsOf types.anything;
          options.substituters = mkOption { type = types.listOf types.str; };
          options.trusted-public-keys = mkOption { type = types.listOf types.str; };
        };
        default = { };
      };
    };
    # What NixOS's nix module defines on every machine: the module's entries go beside these.
    config.nix.settings = {
      substituters = lib.mkAfter [ "https://cache.nixos.org/" ];
      trusted-public-keys = [ "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=" ];
    };
  };

  # Caches of a cluster, as a client machine names them.
  mainCache = { url = "http://10.0.0.11:8380/main"; publicKey = "main-1:2c4mTn1AaMZ6gi3p8XYRTJSSPXSbFnIK0fxxkXPFCWU="; };
  teamCache = {
    url = "http://10.0.0.12:8380/team";
    publicKey = "team-1:S1k2d0pZCkZ5Yk2mX8R9vQh3e0Jd6r1nqXzq3b7yT8o=";
    netrcFile = "/run/keys/aspen-cache.netrc";
  };

  # Stand-in packages: evaluation needs derivation-shaped values, not builds.
  drv = name: { type = "derivation"; inherit name; outPath = "/${name}"; };
  package = { type = "derivation"; name = "aspen"; outPath = "/aspen-package"; };
  # Tools the units run are this machine's (/usr/bin, /bin/sh), so that the tests can run the
  # commands the module wrote; a script keeps its text.
  pkgsOn = x86: {
    coreutils = "/usr";
    util-linux = "/usr";
    runtimeShell = "/bin/sh";
    git = drv "git";
    bash = drv "bash";
    qemu_kvm = drv "qemu-host-cpu-only";
    cloud-hypervisor = drv "cloud-hypervisor";
    writeShellScriptBin = name: text: drv name // { inherit text; };
    stdenv.hostPlatform.isx86_64 = x86;
  };
  pkgs = pkgsOn (case != "vm-on-aarch64");

  # AspenFS mounts.
  defaultMount = {
    mountPoint = "/mnt/aspen";
    ticketFile = "/var/lib/aspen/node.ticket";
    tokenFile = "/var/lib/aspen/root.token";
  };

  cases = {
    minimal = { services.aspen = { enable = true; package = package; }; };
    full = {
      services.aspen = {
        enable = true;
        inherit package;
        nodeId = 3;
        dataDir = "/var/lib/aspen";
        listenAddress = "0.0.0.0";
        port = 7711;
        advertiseAddress = "10.0.0.13:7711";
        openFirewall = true;
        joinTicketImport = "/boot/aspen/join.ticket";
        joinAs = "learner";
        rootTokenFile = "/var/lib/aspen/root.token";
        secretKeyFile = "/run/keys/aspen-node.key";
        secretsKeyFile = "/run/keys/aspen-secrets.key";
        logLevel = "info,aspen_node=debug";
        extraFlags = [ "--blob-replicas" "2" "--heartbeat-ms" "50" "--election-timeout-ms" "400" ];
        forge = { gcGraceSeconds = 600; gcIntervalSeconds = 0; };
        cache = { httpListen = "0.0.0.0:8380"; openFirewall = true; gcIntervalSeconds = 600; };
      };
    };
    # A first node serving the cache gateway on IPv6, and using the cluster's caches itself.
    cache-node = {
      services.aspen = {
        enable = true;
        inherit package;
        nodeId = 1;
        initialize = true;
        secretsKeyFile = "/var/lib/aspen-keys/secrets.key";
        cache = { httpListen = "[::]:8381"; openFirewall = true; gcIntervalSeconds = 0; };
        substituters = [ mainCache ];
      };
    };
    # A machine without a node that substitutes from a cluster's caches.
    client = { services.aspen.substituters = [ mainCache teamCache ]; };
    first-node = {
      services.aspen = {
        enable = true;
        inherit package;
        nodeId = 1;
        listenAddress = "10.0.0.11";
        initialize = true;
        openFirewall = true;
      };
    };
    joining-node = {
      services.aspen = {
        enable = true;
        inherit package;
        nodeId = 2;
        listenAddress = "10.0.0.12";
        joinTicketFile = "/var/lib/aspen/join.ticket";
      };
    };
    disabled = { services.aspen = { package = package; }; };
    # Must fail: a string where a number belongs.
    wrong-type = { services.aspen = { enable = true; inherit package; nodeId = "one"; }; };
    # Must fail: a new cluster and a join at once.
    contradiction = {
      services.aspen = { enable = true; inherit package; initialize = true; joinTicketFile = "/var/lib/aspen/join.ticket"; };
    };
    # Must fail: a secret named by a store path.
    secret-in-store = {
      services.aspen = { enable = true; inherit package; secretKeyFile = "${builtins.storeDir}/xyz-node.key"; };
    };
    # Must fail: the cluster's secrets key named by a store path.
    secrets-key-in-store = {
      services.aspen = { enable = true; inherit package; secretsKeyFile = "${builtins.storeDir}/xyz-secrets.key"; };
    };
    # Must fail: the node's own key and the cluster's in one file.
    same-key-files = {
      services.aspen = {
        enable = true;
        inherit package;
        secretKeyFile = "/run/keys/aspen.key";
        secretsKeyFile = "/run/keys/aspen.key";
      };
    };
    # Must fail: a host name where the node takes a socket address.
    listen-host-name = {
      services.aspen = { enable = true; inherit package; cache.httpListen = "localhost:8380"; };
    };
    # Must fail: two netrc files, where nix reads one.
    two-netrc-files = {
      services.aspen.substituters = [ teamCache (mainCache // { netrcFile = "/run/keys/other.netrc"; }) ];
    };
    # Must fail: a key without its name.
    nameless-key = {
      services.aspen.substituters = [ (mainCache // { publicKey = "2c4mTn1AaMZ6gi3p8XYRTJSSPXSbFnIK0fxxkXPFCWU="; }) ];
    };
    # A node and two mounts (and a third, turned off): one with the defaults, the node's ticket
    # and its root token; one with every setting, a mount point and a prefix that need quoting
    # (a space, systemd's `%`), and the token inside its ticket.
    fs-mounts = {
      services.aspen = {
        enable = true;
        inherit package;
        initialize = true;
        fs.mounts = {
          default = defaultMount;
          media = {
            mountPoint = "/srv/aspen media/100%";
            prefix = "team/media files/";
            ttlMs = 5000;
            unwatchedTtlMs = 250;
            opTimeoutSeconds = 7;
            threads = 4;
            allowOther = true;
            ticketFile = "/run/keys/aspen.ticket";
            tokenFile = null;
          };
          old = { enable = false; mountPoint = "/mnt/old"; ticketFile = "/run/keys/aspen.ticket"; tokenFile = null; };
        };
      };
    };
    # A mount on a machine without a node.
    fs-client = {
      services.aspen = {
        inherit package;
        fs.mounts.shared = {
          mountPoint = "/srv/shared";
          ticketFile = "/run/keys/aspen.ticket";
          tokenFile = "/run/keys/aspen-fs.token";
        };
      };
    };
    # Must fail: a prefix that is not a directory of the KV.
    fs-bad-prefix = { services.aspen = { inherit package; fs.mounts.default = defaultMount // { prefix = "fs/default"; }; }; };
    # Must fail: a relative mount point.
    fs-relative-mount-point = { services.aspen = { inherit package; fs.mounts.default = defaultMount // { mountPoint = "mnt/aspen"; }; }; };
    # Must fail: two mounts at one place.
    fs-same-mount-point = {
      services.aspen = {
        inherit package;
        fs.mounts = { a = defaultMount; b = defaultMount // { mountPoint = "/mnt/aspen/"; }; };
      };
    };
    # Must fail: a name that cannot be part of a unit's name.
    fs-bad-name = { services.aspen = { inherit package; fs.mounts."my files" = defaultMount; }; };
    # Must fail: no ticket named (there is no default: the cluster may be anywhere).
    fs-no-ticket = {
      services.aspen = { inherit package; fs.mounts.default = { mountPoint = "/mnt/aspen"; tokenFile = "/run/keys/aspen-fs.token"; }; };
    };
    # The microVM runner: an image installed at the default place, and QEMU with TCG.
    vm = {
      services.aspen = { inherit package; vm = { enable = true; image = drv "aspen-vm-image"; hypervisor = "qemu-tcg"; }; };
    };
    # Cloud Hypervisor, and an image put in place by hand.
    vm-cloud-hypervisor = {
      services.aspen = { inherit package; vm = { enable = true; imageDir = "/srv/vm-image"; hypervisor = "cloud-hypervisor"; }; };
    };
    # Must fail: the runner on a host that is not x86-64.
    vm-on-aarch64 = { services.aspen = { inherit package; vm.enable = true; }; };
    # A first node that runs a CI worker with every executor (vm jobs boot the runner's
    # image), pushing to a cache; its ticket and token are the node's.
    ci-worker = {
      services.aspen = {
        enable = true;
        inherit package;
        initialize = true;
        vm = { enable = true; image = drv "aspen-vm-image"; hypervisor = "qemu-tcg"; };
        ci.worker = {
          enable = true;
          id = "builder-1";
          capacity = 4;
          executors = [ "shell" "nix" "vm" ];
          maxCpus = 8;
          maxMemoryMiB = 16384;
          sessionTtlSeconds = 30;
          cache = "main";
          extraPackages = [ (drv "gnumake") ];
          passEnv = [ "CARGO_HOME" "RUSTUP_HOME" ];
          evalLimitSeconds = 60;
        };
        ci.keepRuns = 50;
      };
    };
    # A machine that runs only a worker, for a cluster elsewhere: shell jobs without
    # namespaces, a work directory outside /var/lib (written with a trailing slash).
    ci-worker-only = {
      services.aspen = {
        inherit package;
        ci.worker = {
          enable = true;
          executors = [ "shell" ];
          isolation = false;
          workDir = "/srv/aspen-ci/";
          ticketFile = "/run/keys/aspen-ci.ticket";
          tokenFile = "/run/keys/aspen-ci.token";
        };
      };
    };
    # A node of that cluster that leaves scheduling to the others.
    ci-no-scheduler = {
      services.aspen = {
        enable = true;
        inherit package;
        nodeId = 2;
        joinTicketFile = "/var/lib/aspen/join.ticket";
        ci.scheduler = false;
      };
    };
    # Must fail: a worker with nothing to run.
    ci-no-executors = {
      services.aspen = { inherit package; ci.worker = { enable = true; executors = [ ]; ticketFile = "/run/keys/aspen-ci.ticket"; }; };
    };
    # Must fail: a cache to push to, and no nix jobs to push from.
    ci-cache-without-nix = {
      services.aspen = {
        inherit package;
        ci.worker = { enable = true; executors = [ "shell" ]; cache = "main"; ticketFile = "/run/keys/aspen-ci.ticket"; };
      };
    };
    # Must fail: vm jobs without the microVM runner.
    ci-vm-without-runner = {
      services.aspen = { inherit package; ci.worker = { enable = true; executors = [ "vm" ]; ticketFile = "/run/keys/aspen-ci.ticket"; }; };
    };
    # Must fail: no node here, and no ticket named.
    ci-no-ticket = { services.aspen = { inherit package; ci.worker.enable = true; }; };
    # Must fail: a joining node's own ticket, which carries no token, and no token file.
    ci-no-token = {
      services.aspen = {
        enable = true;
        inherit package;
        joinTicketFile = "/var/lib/aspen/join.ticket";
        ci.worker.enable = true;
      };
    };
    # Must fail: an image put by hand inside the node's data directory (the default imageDir).
    ci-vm-image-in-data-dir = {
      services.aspen = {
        enable = true;
        inherit package;
        initialize = true;
        vm.enable = true;
        ci.worker = { enable = true; executors = [ "vm" ]; };
      };
    };
    # Must fail: a work directory the worker cannot enter.
    ci-work-dir-in-data-dir = {
      services.aspen = { enable = true; inherit package; initialize = true; ci.worker = { enable = true; workDir = "/var/lib/aspen/ci"; }; };
    };
    # Must fail: a lease shorter than the worker takes.
    ci-short-session = {
      services.aspen = { inherit package; ci.worker = { enable = true; sessionTtlSeconds = 2; ticketFile = "/run/keys/aspen-ci.ticket"; }; };
    };
    # Must fail: a cache name the cluster refuses.
    ci-bad-cache-name = {
      services.aspen = { inherit package; ci.worker = { enable = true; cache = "Main"; ticketFile = "/run/keys/aspen-ci.ticket"; }; };
    };
    # Must fail: joining from two tickets.
    two-tickets = {
      services.aspen = {
        enable = true;
        inherit package;
        joinTicketFile = "/var/lib/aspen/join.ticket";
        joinTicketImport = "/boot/aspen/join.ticket";
      };
    };
  };

  evaluated = lib.evalModules {
    modules = [
      hostOptions
      ../../modules/aspen-node.nix
      { _module.args = { inherit pkgs; }; }
      cases.${case}
    ];
  };
  config = evaluated.config;
  failed = builtins.filter (a: !a.assertion) config.assertions;
in
if failed != [ ] then
  throw (lib.concatMapStringsSep "\n" (a: a.message) failed)
else
  {
    services = config.systemd.services;
    paths = config.systemd.paths;
    users = config.users.users;
    groups = config.users.groups;
    firewall = config.networking.firewall.allowedUDPPorts;
    firewallTCP = config.networking.firewall.allowedTCPPorts;
    nix = config.nix.settings;
    packages = map (p: { inherit (p) name; text = p.text or null; }) config.environment.systemPackages;
    tmpfiles = config.systemd.tmpfiles.rules;
    inherit (config) warnings;
  }
