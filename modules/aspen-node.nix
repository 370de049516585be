# services.aspen: one Aspen node as a hardened systemd service.
#
# Secrets (the node's key, the cluster's secrets key, tokens, tickets) are files read at run
# time, never in the Nix store.
# A cluster forms without anyone at a keyboard: one node sets `initialize`, the others set
# `joinTicketFile` (or `joinTicketImport`, for a ticket placed on the boot partition) and wait
# for the ticket, however long it takes.
{ config, lib, pkgs, ... }:

let
  inherit (lib) mkOption mkEnableOption mkIf types optional optionals concatStringsSep escapeShellArg;
  cfg = config.services.aspen;

  # Run-time paths only: a secret named by a store path would sit world-readable in the store.
  runtimePath = types.addCheck types.str (p: lib.hasPrefix "/" p && !lib.hasPrefix builtins.storeDir p) // {
    description = "absolute path outside the Nix store";
  };

  # `IP:PORT` as the node parses it (a socket address: no host names), an IPv6 address in
  # brackets; the port is what the firewall opens.
  listenAddr = types.strMatching "([0-9.]+|\\[[0-9a-fA-F:.]+]):[0-9]{1,5}" // {
    description = "`IP:PORT` (an IPv6 address in brackets)";
  };
  cacheHttpPort =
    if cfg.cache.httpListen == null then null
    else lib.toInt (lib.last (lib.splitString ":" cfg.cache.httpListen));

  # The client side: nix.conf entries for caches served by an Aspen cluster.
  netrcFiles = lib.unique (lib.filter (f: f != null) (map (s: s.netrcFile) cfg.substituters));

  stateDir = "/var/lib/aspen";
  importedTicket = "${cfg.dataDir}/join.ticket.imported";
  joinTicket = if cfg.joinTicketImport != null then importedTicket else cfg.joinTicketFile;

  args =
    [ "--data-dir" cfg.dataDir "--bind" "${cfg.listenAddress}:${toString cfg.port}" ]
    ++ optionals (cfg.nodeId != null) [ "--node-id" (toString cfg.nodeId) ]
    ++ optionals (cfg.advertiseAddress != null) [ "--advertise-addr" cfg.advertiseAddress ]
    ++ optionals (cfg.secretKeyFile != null) [ "--secret-key-file" "%d/node.key" ]
    ++ optionals (cfg.secretsKeyFile != null) [ "--secrets-key-file" "%d/secrets.key" ]
    ++ optionals cfg.initialize [ "--init" "--root-token-file" cfg.rootTokenFile "--join-ticket-out" cfg.joinTicketOut ]
    ++ optionals (!cfg.initialize) [ "--root-token-file" cfg.rootTokenFile ]
    ++ optionals (joinTicket != null) [ "--join-ticket-file" joinTicket "--join-as" cfg.joinAs ]
    ++ [
      "--forge-gc-grace-secs" (toString cfg.forge.gcGraceSeconds)
      "--forge-gc-interval-secs" (toString cfg.forge.gcIntervalSeconds)
    ]
    ++ optionals (cfg.cache.httpListen != null) [ "--cache-http-listen" cfg.cache.httpListen ]
    ++ [ "--cache-gc-interval-secs" (toString cfg.cache.gcIntervalSeconds) ]
    ++ cfg.extraFlags;
in
{
  options.services.aspen = {
    enable = mkEnableOption "an Aspen node (a member of a Raft-replicated key-value cluster)";

    package = mkOption {
      type = types.package;
      description = "The Aspen package; its `aspen-node` binary runs the node.";
    };

    nodeId = mkOption {
      type = types.nullOr (types.ints.between 1 9007199254740991);
      default = null;
      example = 1;
      description = ''
        The node's Raft id, unique in the cluster. `null` lets the node pick one at random on
        its first start and keep it in its data directory.
      '';
    };

    dataDir = mkOption {
      type = runtimePath;
      default = stateDir;
      description = ''
        The node's data directory: its key, Raft log, state machine, snapshots and blobs. The
        default is the service's `StateDirectory`; another path must be writable by the `aspen`
        user.
      '';
    };

    listenAddress = mkOption {
      type = types.str;
      default = "127.0.0.1";
      example = "10.0.0.11";
      description = ''
        The address the node's QUIC endpoint binds. The default reaches only this machine; a
        cluster of several machines needs an address their peers reach. Bound to `0.0.0.0`
        (or `::`), the node advertises the addresses of its interfaces as they are when it
        starts (what a machine on DHCP needs), unless `advertiseAddress` is set.
      '';
    };

    port = mkOption {
      type = types.port;
      default = 7700;
      description = "The UDP port the node's QUIC endpoint binds (Raft, clients and apps all share it).";
    };

    advertiseAddress = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "10.0.0.11:7700";
      description = ''
        The `IP:PORT` peers and clients reach this node at, when it is not the bound address
        (behind NAT, or to pick one of several interfaces).
      '';
    };

    openFirewall = mkOption {
      type = types.bool;
      default = false;
      description = "Open `port` (UDP) in the firewall.";
    };

    initialize = mkOption {
      type = types.bool;
      default = false;
      description = ''
        Make a new cluster on this node's first start, with this node as its first voter. The
        root token goes to `rootTokenFile`, and a ticket the other nodes join with goes to
        `joinTicketOut`. Set it on one node of a new cluster only.
      '';
    };

    joinTicketFile = mkOption {
      type = types.nullOr runtimePath;
      default = null;
      example = "/var/lib/aspen/join.ticket";
      description = ''
        On first start, join the cluster this ticket names (the `joinTicketOut` of the node
        that initialized it). The node serves at once, waits for the file to appear, and keeps
        trying until it is a member. The `aspen` user must be able to read it.
      '';
    };

    joinTicketImport = mkOption {
      type = types.nullOr runtimePath;
      default = null;
      example = "/boot/aspen/join.ticket";
      description = ''
        Like `joinTicketFile`, for a ticket placed where the `aspen` user cannot read it (the
        boot partition of an image): when the file appears, a root service copies it into the
        data directory, owned by `aspen` with mode 0600, and the node joins with the copy.
      '';
    };

    joinAs = mkOption {
      type = types.enum [ "voter" "learner" ];
      default = "voter";
      description = "Whether a joining node becomes a voter once caught up, or stays a learner.";
    };

    rootTokenFile = mkOption {
      type = runtimePath;
      default = "${stateDir}/root.token";
      description = ''
        Where initializing the cluster writes its root token (mode 0600, owned by `aspen`). It
        grants everything; copy it to the operators who need it, and revoke what you hand out.
      '';
    };

    joinTicketOut = mkOption {
      type = runtimePath;
      default = "${stateDir}/join.ticket";
      description = ''
        Where an initializing node writes the join ticket (mode 0600). Its token may change the
        cluster's membership and nothing else.
      '';
    };

    secretKeyFile = mkOption {
      type = types.nullOr runtimePath;
      default = null;
      example = "/run/keys/aspen-node.key";
      description = ''
        A file of 32 raw bytes: the node's iroh secret key, passed as a systemd credential. By
        default the node makes its own on first start, inside its data directory.
      '';
    };

    secretsKeyFile = mkOption {
      type = types.nullOr runtimePath;
      default = null;
      example = "/run/keys/aspen-secrets.key";
      description = ''
        The cluster's secrets key: a file of 32 raw bytes or 64 hex digits (`openssl rand -hex
        32`), passed as a systemd credential. Apps seal the secrets they keep in the KV with it
        (the cache's signing keys). Every node of the cluster needs the same file: a node
        without it refuses what needs a secret (`aspen cache create`, signing what is pushed to
        a cache), and a node with another key cannot open what the others sealed. It is not
        this node's own key (`secretKeyFile`); lose it and the sealed secrets are lost with it.
      '';
    };

    logLevel = mkOption {
      type = types.str;
      default = "info";
      example = "info,aspen_node=debug";
      description = "The node's log filter (`RUST_LOG` syntax); logs go to the journal.";
    };

    forge = {
      gitPackage = mkOption {
        type = types.package;
        default = pkgs.git;
        defaultText = lib.literalExpression "pkgs.git";
        description = ''
          The git the forge runs to serve fetches (`git upload-pack`) and to collect garbage
          (`git rev-list`, `git pack-objects`). Pushes are received by the node itself.
        '';
      };

      gcGraceSeconds = mkOption {
        type = types.ints.unsigned;
        default = 86400;
        description = ''
          How long a pushed pack is kept as it is before garbage collection may repack it and
          drop the objects no ref reaches (of the repository, or of a fork of it): the window
          in which a force-pushed or deleted branch can still be pushed back cheaply.
        '';
      };

      gcIntervalSeconds = mkOption {
        type = types.ints.unsigned;
        default = 3600;
        description = ''
          Seconds between the forge's background rounds: the leader collects every
          repository's garbage, and every node drops its copies of packs no repository holds.
          0 turns them off (`aspen forge gc REPO` still works).
        '';
      };
    };

    cache = {
      httpListen = mkOption {
        type = types.nullOr listenAddr;
        default = null;
        example = "0.0.0.0:8380";
        description = ''
          Where the node serves the Nix binary cache's HTTP gateway: what `nix` substitutes
          from and `nix copy --to` uploads to, cache NAME being `http://HOST:PORT/NAME`. Reads
          of a public cache need no token; other reads, and uploads (`cache:write`), take a
          token as the password of a netrc file. The gateway speaks plain HTTP: what it serves
          is signed, but tokens cross the network in the clear, so keep it on a trusted network
          or behind a TLS proxy. The port must be 1024 or above (the service holds no
          capabilities). `null`: no gateway (`aspen cache push` and `pull` still work over
          iroh).
        '';
      };

      openFirewall = mkOption {
        type = types.bool;
        default = false;
        description = "Open the TCP port of `cache.httpListen` in the firewall.";
      };

      gcIntervalSeconds = mkOption {
        type = types.ints.unsigned;
        default = 3600;
        description = ''
          Seconds between the leader's garbage collection rounds over the caches that have a
          retention time (`aspen cache create --retention-secs`). 0 turns them off (`aspen
          cache gc NAME` still works).
        '';
      };
    };

    substituters = mkOption {
      type = types.listOf (types.submodule {
        options = {
          url = mkOption {
            type = types.strMatching "https?://[^[:space:]]+";
            example = "http://10.0.0.11:8380/main";
            description = "The cache's URL: `http://HOST:PORT/NAME` of a node's (or `aspen cache serve`'s) gateway.";
          };
          publicKey = mkOption {
            type = types.strMatching "[^:[:space:]]+:[A-Za-z0-9+/]+=*";
            example = "main-1:2c4mTn1AaMZ6gi3p8XYRTJSSPXSbFnIK0fxxkXPFCWU=";
            description = "The cache's public key, as `aspen cache key show NAME` prints it.";
          };
          netrcFile = mkOption {
            type = types.nullOr runtimePath;
            default = null;
            example = "/run/keys/aspen-cache.netrc";
            description = ''
              For a cache that is not public: a netrc file giving the gateway's host a token
              with `cache:read` as its password (`machine HOST login aspen password TOKEN`),
              readable by root (the nix daemon reads it). It becomes nix's `netrc-file`, of
              which there is one: every substituter that names a netrc file must name the same.
            '';
          };
        };
      });
      default = [ ];
      example = lib.literalExpression ''
        [ { url = "http://10.0.0.11:8380/main"; publicKey = "main-1:2c4mTn1AaMZ6gi3p8XYRTJSSPXSbFnIK0fxxkXPFCWU="; } ]
      '';
      description = ''
        Nix binary caches served by an Aspen cluster, for this machine's nix to substitute
        from: each URL is added to `nix.settings.substituters` (beside the others, such as
        cache.nixos.org; nix tries them in the order of the `Priority` each announces, set by
        `aspen cache create --priority`) and its key to `nix.settings.trusted-public-keys`.
        Independent of `enable`: any NixOS machine may use a cluster's caches.
      '';
    };

    extraFlags = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "--blob-replicas" "3" ];
      description = "More `aspen-node` flags (`aspen-node --help` lists them).";
    };
  };

  config = lib.mkMerge [
    (mkIf cfg.enable {
      assertions = [
        {
          assertion = !(cfg.initialize && (cfg.joinTicketFile != null || cfg.joinTicketImport != null));
          message = "services.aspen: `initialize` makes a new cluster and `joinTicketFile`/`joinTicketImport` join an existing one; set one of them.";
        }
        {
          assertion = !(cfg.joinTicketFile != null && cfg.joinTicketImport != null);
          message = "services.aspen: set `joinTicketFile` or `joinTicketImport`, not both.";
        }
        {
          assertion = cfg.secretsKeyFile == null || cfg.secretsKeyFile != cfg.secretKeyFile;
          message = "services.aspen: `secretsKeyFile` is the cluster's key (the same file on every node) and `secretKeyFile` this node's own; they must be different files.";
        }
        {
          assertion = cacheHttpPort == null || (cacheHttpPort >= 1 && cacheHttpPort <= 65535);
          message = "services.aspen: the port of `cache.httpListen` (${toString cacheHttpPort}) is not a port.";
        }
      ];

      warnings = optional (cacheHttpPort != null && cacheHttpPort < 1024)
        "services.aspen: the cache gateway's port ${toString cacheHttpPort} is below 1024, which the service (without capabilities) cannot bind.";

      users.users.aspen = {
        isSystemUser = true;
        group = "aspen";
        home = cfg.dataDir;
        description = "Aspen node";
      };
      users.groups.aspen = { };

      networking.firewall.allowedUDPPorts = optional cfg.openFirewall cfg.port;
      networking.firewall.allowedTCPPorts = optional (cfg.cache.openFirewall && cacheHttpPort != null) cacheHttpPort;

      environment.systemPackages = [ cfg.package ];

      systemd.services.aspen = {
        description = "Aspen node";
        wantedBy = [ "multi-user.target" ];
        wants = [ "network-online.target" ];
        after = [ "network-online.target" ];
        environment = {
          RUST_LOG = cfg.logLevel;
          ASPEN_FORGE_GIT = "${cfg.forge.gitPackage}/bin/git";
        };
        serviceConfig = {
          Type = "notify";
          NotifyAccess = "main";
          ExecStart = "${cfg.package}/bin/aspen-node ${concatStringsSep " " (map escapeShellArg args)}";
          Restart = "on-failure";
          RestartSec = "2s";
          TimeoutStopSec = "60s";
          User = "aspen";
          Group = "aspen";
          StateDirectory = "aspen";
          StateDirectoryMode = "0700";
          WorkingDirectory = cfg.dataDir;
          LoadCredential =
            optional (cfg.secretKeyFile != null) "node.key:${cfg.secretKeyFile}"
            ++ optional (cfg.secretsKeyFile != null) "secrets.key:${cfg.secretsKeyFile}";
          UMask = "0077";
          # Hardening: the node needs its state directory, UDP/IP sockets and nothing else.
          CapabilityBoundingSet = "";
          AmbientCapabilities = "";
          NoNewPrivileges = true;
          PrivateTmp = true;
          PrivateDevices = true;
          PrivateUsers = true;
          PrivateMounts = true;
          ProtectSystem = "strict";
          ProtectHome = true;
          ProtectClock = true;
          ProtectHostname = true;
          ProtectKernelLogs = true;
          ProtectKernelModules = true;
          ProtectKernelTunables = true;
          ProtectControlGroups = true;
          ProtectProc = "invisible";
          ProcSubset = "pid";
          RestrictAddressFamilies = [ "AF_INET" "AF_INET6" "AF_UNIX" "AF_NETLINK" ];
          RestrictNamespaces = true;
          RestrictRealtime = true;
          RestrictSUIDSGID = true;
          RemoveIPC = true;
          LockPersonality = true;
          MemoryDenyWriteExecute = true;
          SystemCallArchitectures = "native";
          SystemCallFilter = [ "@system-service" "~@privileged" ];
          SystemCallErrorNumber = "EPERM";
          DevicePolicy = "closed";
          KeyringMode = "private";
        };
      };

      # A ticket placed on the boot partition: copied into the data dir, for the aspen user,
      # when it appears.
      systemd.paths.aspen-join-ticket = mkIf (cfg.joinTicketImport != null) {
        description = "Wait for the Aspen join ticket";
        wantedBy = [ "multi-user.target" ];
        pathConfig.PathExists = cfg.joinTicketImport;
      };
      systemd.services.aspen-join-ticket = mkIf (cfg.joinTicketImport != null) {
        description = "Import the Aspen join ticket";
        serviceConfig = {
          Type = "oneshot";
          ExecStart = "${pkgs.coreutils}/bin/install -D -m 0600 -o aspen -g aspen ${escapeShellArg cfg.joinTicketImport} ${escapeShellArg importedTicket}";
        };
      };
    })

    # The client side, with or without a node on this machine.
    (mkIf (cfg.substituters != [ ]) {
      assertions = [
        {
          assertion = lib.length netrcFiles <= 1;
          message = "services.aspen.substituters: nix reads one netrc file, and these name ${toString (lib.length netrcFiles)}: ${concatStringsSep ", " netrcFiles}. Put every token in one file.";
        }
      ];
      # Added beside the other definitions (cache.nixos.org's comes last, with mkAfter).
      nix.settings = {
        substituters = map (s: s.url) cfg.substituters;
        trusted-public-keys = lib.unique (map (s: s.publicKey) cfg.substituters);
      } // lib.optionalAttrs (netrcFiles != [ ]) { netrc-file = lib.head netrcFiles; };
    })
  ];
}
