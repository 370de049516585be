# services.aspen: one Aspen node as a hardened systemd service.
#
# Secrets (the node's key, tokens, tickets) are files read at run time, never in the Nix store.
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

  stateDir = "/var/lib/aspen";
  importedTicket = "${cfg.dataDir}/join.ticket.imported";
  joinTicket = if cfg.joinTicketImport != null then importedTicket else cfg.joinTicketFile;

  args =
    [ "--data-dir" cfg.dataDir "--bind" "${cfg.listenAddress}:${toString cfg.port}" ]
    ++ optionals (cfg.nodeId != null) [ "--node-id" (toString cfg.nodeId) ]
    ++ optionals (cfg.advertiseAddress != null) [ "--advertise-addr" cfg.advertiseAddress ]
    ++ optionals (cfg.secretKeyFile != null) [ "--secret-key-file" "%d/node.key" ]
    ++ optionals cfg.initialize [ "--init" "--root-token-file" cfg.rootTokenFile "--join-ticket-out" cfg.joinTicketOut ]
    ++ optionals (!cfg.initialize) [ "--root-token-file" cfg.rootTokenFile ]
    ++ optionals (joinTicket != null) [ "--join-ticket-file" joinTicket "--join-as" cfg.joinAs ]
    ++ [
      "--forge-gc-grace-secs" (toString cfg.forge.gcGraceSeconds)
      "--forge-gc-interval-secs" (toString cfg.forge.gcIntervalSeconds)
    ]
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

    extraFlags = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "--blob-replicas" "3" ];
      description = "More `aspen-node` flags (`aspen-node --help` lists them).";
    };
  };

  config = mkIf cfg.enable {
    assertions = [
      {
        assertion = !(cfg.initialize && (cfg.joinTicketFile != null || cfg.joinTicketImport != null));
        message = "services.aspen: `initialize` makes a new cluster and `joinTicketFile`/`joinTicketImport` join an existing one; set one of them.";
      }
      {
        assertion = !(cfg.joinTicketFile != null && cfg.joinTicketImport != null);
        message = "services.aspen: set `joinTicketFile` or `joinTicketImport`, not both.";
      }
    ];

    users.users.aspen = {
      isSystemUser = true;
      group = "aspen";
      home = cfg.dataDir;
      description = "Aspen node";
    };
    users.groups.aspen = { };

    networking.firewall.allowedUDPPorts = optional cfg.openFirewall cfg.port;

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
        LoadCredential = optional (cfg.secretKeyFile != null) "node.key:${cfg.secretKeyFile}";
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
  };
}
