# services.aspen: one Aspen node as a hardened systemd service.
#
# Secrets (the node's key, the cluster's secrets key, tokens, tickets) are files read at run
# time, never in the Nix store.
# A cluster forms without anyone at a keyboard: one node sets `initialize`, the others set
# `joinTicketFile` (or `joinTicketImport`, for a ticket placed on the boot partition) and wait
# for the ticket, however long it takes.
#
# Clients of a cluster can run here too, with or without a node on the machine: AspenFS
# mounts (`services.aspen.fs.mounts`, one `aspen-fs-NAME` service each), the microVM runner
# (`services.aspen.vm`) and a CI worker (`services.aspen.ci.worker`, the `aspen-ci-worker`
# service).
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
    ++ optional (!cfg.ci.scheduler) "--ci-no-scheduler"
    ++ [
      "--ci-keep-runs" (toString cfg.ci.keepRuns)
      "--ci-prune-interval-secs" (toString cfg.ci.pruneIntervalSeconds)
    ]
    ++ cfg.extraFlags;

  # A word of an Exec line, read by systemd as written: plain when it is plain, else in double
  # quotes with C escapes (systemd's quoting, which is not the shell's), and with systemd's
  # specifiers (`%`) and variables (`$`) escaped.
  execWord = w:
    let quoted = if builtins.match "[[:alnum:],._+:@/=-]+" w != null then w else builtins.toJSON w;
    in lib.replaceStrings [ "%" "$" ] [ "%%" "$$" ] quoted;
  execLine = words: concatStringsSep " " (map execWord words);

  # AspenFS: the mounts this machine runs, and what each one is checked against.
  fsMounts = lib.filterAttrs (_: m: m.enable) cfg.fs.mounts;
  # What /proc/self/mountinfo shows as the source of a mount of `prefix` (its FUSE fsname).
  fsSource = prefix: "aspenfs:${prefix}";
  # The mount point without a trailing slash, to compare two of them.
  normalPath = p: if p != "/" && lib.hasSuffix "/" p then normalPath (lib.removeSuffix "/" p) else p;
  enabledPoints = lib.mapAttrsToList (_: m: normalPath m.mountPoint) fsMounts;
  duplicatePoints = lib.unique (lib.filter (p: lib.count (q: q == p) enabledPoints > 1) enabledPoints);

  fsArgs = m:
    [ "fs" "mount" m.mountPoint "--prefix" m.prefix ]
    ++ [ "--ttl-ms" (toString m.ttlMs) "--unwatched-ttl-ms" (toString m.unwatchedTtlMs) ]
    ++ [ "--op-timeout" (toString m.opTimeoutSeconds) "--threads" (toString m.threads) ]
    ++ optional m.allowOther "--allow-other";

  # After the daemon died without unmounting (SIGKILL, a crash, the stop timeout), the kernel
  # keeps its mount, on which every call fails with ENOTCONN, until someone unmounts it. Only
  # a mount of this prefix is detached: not another file system mounted at the same place.
  # findmnt reads the mount table, so it answers for a dead mount that stat cannot reach.
  fsCleanup = m: execLine [
    pkgs.runtimeShell
    "-c"
    (concatStringsSep " " [
      "if current=$(${pkgs.util-linux}/bin/findmnt --noheadings --output SOURCE --mountpoint \"$1\")"
      "&& [ \"$current\" = \"$2\" ]; then exec ${pkgs.util-linux}/bin/umount --lazy \"$1\"; fi"
    ])
    "aspen-fs-cleanup"
    m.mountPoint
    (fsSource m.prefix)
  ];

  fsService = name: m: {
    description = "AspenFS: ${lib.replaceStrings [ "%" ] [ "%%" ] "${m.prefix} at ${m.mountPoint}"}";
    wantedBy = [ "multi-user.target" ];
    # The cluster may be elsewhere; when this machine runs a node, start after it (so the
    # local ticket and token exist) and stop before it.
    wants = [ "network-online.target" ] ++ optional cfg.enable "aspen.service";
    after = [ "network-online.target" ] ++ optional cfg.enable "aspen.service";
    serviceConfig = {
      Type = "simple";
      ExecStartPre = "${pkgs.coreutils}/bin/mkdir -p ${execWord m.mountPoint}";
      # The ticket and the token are credentials: systemd reads them (wherever they are, the
      # node's data directory included) and hands the daemon root-owned copies.
      ExecStart =
        "${cfg.package}/bin/aspen --ticket-file %d/ticket"
        + lib.optionalString (m.tokenFile != null) " --token-file %d/token"
        + " ${execLine (fsArgs m)}";
      ExecStopPost = fsCleanup m;
      LoadCredential = [ "ticket:${m.ticketFile}" ] ++ optional (m.tokenFile != null) "token:${m.tokenFile}";
      # SIGTERM unmounts (detaching a busy mount) and exits 0; the unmount waits at most 10 s
      # for the FUSE session to end. Past the timeout systemd kills it and ExecStopPost
      # detaches what is left.
      KillSignal = "SIGTERM";
      TimeoutStopSec = "30s";
      # A failed start (the cluster's ticket or token not there yet, a dead mount in the way,
      # cleaned by ExecStopPost) is tried again.
      Restart = "on-failure";
      RestartSec = "5s";
      UMask = "0077";
      # Hardening, within what a FUSE daemon needs: root with CAP_SYS_ADMIN alone, for
      # mount(2) and umount2(2) (the mount is root's: with `allowOther` false, no other user
      # reaches it), /dev/fuse and no other device, the network for the cluster.
      # Nothing here may give the service a mount namespace of its own: every file system
      # namespacing setting (PrivateMounts, PrivateTmp, PrivateDevices, ProtectSystem,
      # ProtectHome, ReadWritePaths and the other *Paths, ProtectKernelTunables,
      # ProtectKernelModules, ProtectKernelLogs, ProtectControlGroups, ProtectProc, ProcSubset,
      # ProtectHostname=yes, PrivateIPC) turns propagation towards the host off, and the mount
      # would exist only inside the service. PrivateUsers would take CAP_SYS_ADMIN away from
      # the host's mount namespace. That is why this unit scores worse than the node's.
      CapabilityBoundingSet = [ "CAP_SYS_ADMIN" ];
      AmbientCapabilities = "";
      NoNewPrivileges = true;
      DevicePolicy = "closed";
      DeviceAllow = [ "/dev/fuse rw" ];
      ProtectClock = true;
      RestrictAddressFamilies = [ "AF_INET" "AF_INET6" "AF_UNIX" "AF_NETLINK" ];
      RestrictNamespaces = true;
      RestrictRealtime = true;
      RestrictSUIDSGID = true;
      LockPersonality = true;
      MemoryDenyWriteExecute = true;
      SystemCallArchitectures = "native";
      SystemCallFilter = [ "@system-service" "@mount" "~@privileged" ];
      SystemCallErrorNumber = "EPERM";
      KeyringMode = "private";
    };
  };

  # The microVM runner: the hypervisors it looks for on PATH, and a command with this
  # machine's image and backend.
  hypervisorPackages =
    [ cfg.vm.qemuPackage ] ++ optional (cfg.vm.hypervisor == "cloud-hypervisor") pkgs.cloud-hypervisor;
  vmRunArgs = [ "vm" "run" "--image" cfg.vm.imageDir "--hypervisor" cfg.vm.hypervisor ];
  vmRun = pkgs.writeShellScriptBin "aspen-vm-run" ''
    export PATH=${lib.makeBinPath hypervisorPackages}''${PATH:+:$PATH}
    exec ${escapeShellArg "${cfg.package}/bin/aspen"} ${concatStringsSep " " (map escapeShellArg vmRunArgs)} "$@"
  '';

  # The CI worker: `aspen ci worker` as the system user aspen-ci.
  worker = cfg.ci.worker;
  vmJobs = lib.elem "vm" worker.executors;
  nodeTicket = "${cfg.dataDir}/node.ticket";
  workDir = normalPath worker.workDir;
  # A work directory under /var/lib is the unit's StateDirectory; another one is made by
  # systemd-tmpfiles and opened in the read-only file system with ReadWritePaths.
  workState = if lib.hasPrefix "/var/lib/" workDir then lib.removePrefix "/var/lib/" workDir else null;
  # Below the node's data directory, which only the `aspen` user may enter.
  inDataDir = p: lib.hasPrefix "${normalPath cfg.dataDir}/" (normalPath p);
  # The guest image vm jobs boot: the store path itself when Nix builds it (the worker's user
  # reads it wherever `imageDir` is), else the directory put at `imageDir` by hand.
  workerImage = if cfg.vm.image != null then "${cfg.vm.image}" else cfg.vm.imageDir;
  workerArgs =
    [ "ci" "worker" ]
    ++ optionals (worker.id != null) [ "--id" worker.id ]
    ++ [ "--capacity" (toString worker.capacity) "--executors" (concatStringsSep "," (lib.unique worker.executors)) ]
    ++ optionals (worker.maxCpus != null) [ "--max-cpus" (toString worker.maxCpus) ]
    ++ [ "--max-memory-mib" (toString worker.maxMemoryMiB) "--work-dir" workDir ]
    ++ [ "--session-ttl-secs" (toString worker.sessionTtlSeconds) ]
    ++ optionals (worker.cache != null) [ "--cache" worker.cache ]
    ++ optional (!worker.isolation) "--no-isolation"
    ++ optionals vmJobs [ "--vm-image" workerImage "--hypervisor" cfg.vm.hypervisor ]
    ++ [ "--git" "${worker.gitPackage}/bin/git" ]
    ++ optionals (worker.passEnv != [ ]) [ "--pass-env" (concatStringsSep "," worker.passEnv) ]
    ++ [ "--eval-limit-secs" (toString worker.evalLimitSeconds) ];

  workerService = {
    description = "Aspen CI worker";
    wantedBy = [ "multi-user.target" ];
    # The cluster may be elsewhere; when this machine runs a node, start after it (so the
    # local ticket exists) and stop before it.
    wants = [ "network-online.target" ] ++ optional cfg.enable "aspen.service";
    after = [ "network-online.target" ] ++ optional cfg.enable "aspen.service";
    # Jobs get the worker's PATH (and nothing else of its environment): sh, git, nix,
    # unshare, `git-remote-aspen` beside `aspen` (checkouts), the hypervisors (vm jobs), and
    # what `extraPackages` adds. NixOS puts coreutils, findutils, grep, sed and systemd after
    # them.
    path =
      [ cfg.package worker.gitPackage worker.nixPackage pkgs.util-linux pkgs.bash ]
      ++ optionals vmJobs hypervisorPackages
      ++ worker.extraPackages;
    serviceConfig = {
      Type = "simple";
      # The ticket and the token are credentials, as for AspenFS mounts: systemd reads them
      # and hands the worker copies its user may read.
      ExecStart =
        "${cfg.package}/bin/aspen --ticket-file %d/ticket"
        + lib.optionalString (worker.tokenFile != null) " --token-file %d/token"
        + " ${execLine workerArgs}";
      LoadCredential =
        optional (worker.ticketFile != null) "ticket:${worker.ticketFile}"
        ++ optional (worker.tokenFile != null) "token:${worker.tokenFile}";
      User = "aspen-ci";
      Group = "aspen-ci";
      SupplementaryGroups = optional vmJobs "kvm";
      WorkingDirectory = workDir;
      # The worker ends when its lease does (it cannot renew it for a while): it is started
      # again, and so is a start without its ticket or token yet.
      Restart = "on-failure";
      RestartSec = "5s";
      # Jobs are the worker's children, in its cgroup, and die with it. SIGTERM goes to the
      # worker alone: it stops its jobs itself, records nothing for them and gives them back
      # to the pool (another worker runs them), where a SIGTERM to every process at once would
      # have it record each running job as failed ("killed by signal 15"). What is left
      # (processes a job moved out of its process group) is killed with SIGKILL.
      KillMode = "mixed";
      KillSignal = "SIGTERM";
      TimeoutStopSec = "30s";
      # Jobs create files as usual (their tests may check modes); the work directory itself
      # is 0700.
      UMask = "0022";
      # Hardening, within what a CI worker needs. Jobs run as the worker's user, inside this
      # sandbox: shell jobs under `unshare --user --map-root-user --pid --fork --mount
      # --mount-proc --ipc --uts` (each in namespaces of its own), nix jobs as clients of the
      # nix daemon (which builds, in its own sandbox), vm jobs in QEMU or Cloud Hypervisor.
      # What the unit cannot have, and why:
      # - RestrictNamespaces=true: unshare makes user, mount, PID, IPC and UTS namespaces;
      #   those five are allowed, and no other (network, cgroup, time).
      # - ProtectKernelTunables, ProtectKernelLogs: they mount over parts of /proc
      #   (/proc/sys, /proc/kmsg, ...), and the kernel refuses a user namespace a new /proc
      #   (`--mount-proc`) while the /proc it comes from is partly covered.
      # - ProcSubset=pid: jobs without isolation, and the hypervisors, read /proc/cpuinfo,
      #   /proc/meminfo, /proc/stat.
      # - PrivateNetwork, IPAddressDeny: the worker talks to the cluster, jobs download.
      # - MemoryDenyWriteExecute: it would hold for every job too, and JIT compilers (JVM, V8,
      #   LuaJIT, QEMU's TCG) map memory writable and executable.
      # - A system call filter without @mount, @privileged or @debug: unshare mounts /proc;
      #   a job, root in its user namespace, changes owners (tar, cp -a) and ids; sanitizers
      #   and debuggers use ptrace. The filter still keeps out modules, the clock, swap,
      #   reboot, raw I/O, kexec, bpf and the obsolete calls.
      # - LockPersonality: sanitizers (ThreadSanitizer, MemorySanitizer) and `setarch -R` turn
      #   address randomization off with personality(2) and run again.
      # - PrivateDevices, with vm jobs: its /dev has no /dev/kvm (DevicePolicy=closed and
      #   DeviceAllow instead; without KVM, QEMU emulates).
      # No capabilities at all: a user makes its own namespaces.
      CapabilityBoundingSet = "";
      AmbientCapabilities = "";
      NoNewPrivileges = true;
      PrivateTmp = true;
      PrivateUsers = true;
      PrivateMounts = true;
      ProtectSystem = "strict";
      ProtectHome = true;
      ProtectClock = true;
      ProtectHostname = true;
      ProtectKernelModules = true;
      ProtectControlGroups = true;
      ProtectProc = "invisible";
      RestrictAddressFamilies = [ "AF_INET" "AF_INET6" "AF_UNIX" "AF_NETLINK" ];
      RestrictNamespaces = [ "user" "mnt" "pid" "ipc" "uts" ];
      RestrictRealtime = true;
      RestrictSUIDSGID = true;
      RemoveIPC = true;
      SystemCallArchitectures = "native";
      # `seccomp`: Cloud Hypervisor (and sandboxes jobs run) add filters of their own.
      SystemCallFilter = [ "@system-service" "@mount" "@debug" "seccomp" ];
      SystemCallErrorNumber = "EPERM";
      KeyringMode = "private";
    }
    // (if workState != null then { StateDirectory = workState; StateDirectoryMode = "0700"; } else { ReadWritePaths = [ workDir ]; })
    // (if vmJobs then { DevicePolicy = "closed"; DeviceAllow = [ "/dev/kvm rw" ]; } else { PrivateDevices = true; });
  };
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

    fs.mounts = mkOption {
      type = types.attrsOf (types.submodule ({ name, ... }: {
        options = {
          enable = mkOption {
            type = types.bool;
            default = true;
            description = "Whether to run this mount (the `aspen-fs-${name}` service).";
          };

          mountPoint = mkOption {
            type = types.str;
            example = "/srv/aspen/${name}";
            description = ''
              Where the prefix is mounted: an absolute path, made (`mkdir -p`) if missing, and
              not where another file system is mounted.
            '';
          };

          prefix = mkOption {
            type = types.str;
            default = "fs/${name}/";
            defaultText = lib.literalExpression ''"fs/''${name}/"'';
            description = ''
              The KV prefix shown as the file system's root; it ends in `/`. Files are keys
              under it (`aspen kv get PREFIXa/b` reads file `a/b`), and large files' chunks are
              blobs pinned as `aspenfs/PREFIX<hash>`.
            '';
          };

          ttlMs = mkOption {
            type = types.ints.unsigned;
            default = 60000;
            description = ''
              How long the kernel keeps names and attributes while the mount's watch on the
              prefix runs (a change made elsewhere drops them as it is seen): `--ttl-ms`.
            '';
          };

          unwatchedTtlMs = mkOption {
            type = types.ints.unsigned;
            default = 1000;
            description = "The same while the watch is down, until it is back: `--unwatched-ttl-ms`.";
          };

          opTimeoutSeconds = mkOption {
            type = types.ints.positive;
            default = 30;
            description = ''
              A system call on the mount fails with EIO when the cluster has not answered
              within this: `--op-timeout`.
            '';
          };

          threads = mkOption {
            type = types.ints.positive;
            default = 2;
            description = "Threads answering the kernel: `--threads`.";
          };

          allowOther = mkOption {
            type = types.bool;
            default = false;
            description = ''
              Let every user of this machine use the mount (with the permissions of its files,
              which all belong to root): `--allow-other`. Off, only root can.
            '';
          };

          ticketFile = mkOption {
            type = runtimePath;
            example = "/var/lib/aspen/node.ticket";
            description = ''
              The cluster's ticket, passed to the service as a systemd credential (so it may be
              a file only its owner reads). There is no default, the cluster being anywhere; on
              a machine that runs a node, `''${dataDir}/node.ticket` is that node's own ticket,
              written each time it starts.
            '';
          };

          tokenFile = mkOption {
            type = types.nullOr runtimePath;
            default = null;
            example = "/run/keys/aspen-fs.token";
            description = ''
              The capability token the mount presents, passed as a systemd credential; `null`:
              the token inside the ticket (a node's `node.ticket` has none). The token's rights
              are the mount's: read, write, delete and watch on the prefix, and for files larger
              than one KV value `blob:read` and `blob:write` over `aspenfs/PREFIX`, as made (from
              a token that holds them) by `aspen token create --read P --write P --delete P
              --watch P --app blob:read:aspenfs/P --app blob:write:aspenfs/P --ttl ...`. It
              expires with its `--ttl`; replace the file and restart the service to renew it.
            '';
          };
        };
      }));
      default = { };
      example = lib.literalExpression ''
        {
          media = {
            mountPoint = "/srv/aspen/media";
            ticketFile = "/var/lib/aspen/node.ticket";
            tokenFile = "/run/keys/aspen-fs-media.token";
          };
        }
      '';
      description = ''
        AspenFS mounts: KV prefixes of a cluster mounted as file systems with FUSE. Each runs
        `aspen fs mount` as the service `aspen-fs-NAME`, as root with CAP_SYS_ADMIN only (and
        no mount namespace of its own, so that the mount is the host's), after the node when
        this machine runs one. Stopping the service unmounts. Independent of `enable`: a
        machine without a node may mount a cluster's prefixes.
      '';
    };

    vm = {
      enable = mkOption {
        type = types.bool;
        default = false;
        description = ''
          Make this machine ready for the microVM runner (`aspen vm run`, `aspen vm doctor`):
          QEMU installed (and Cloud Hypervisor when `hypervisor` names it), and the command
          `aspen-vm-run`, which is `aspen vm run --image IMAGEDIR --hypervisor HYPERVISOR`
          followed by its own arguments (`aspen-vm-run -- uname -a`). Independent of `enable`:
          the node itself runs no VMs.
        '';
      };

      image = mkOption {
        type = types.nullOr types.package;
        default = null;
        example = lib.literalExpression "aspen.packages.x86_64-linux.vm-image";
        description = ''
          The guest image to install at `imageDir`, as a link kept by systemd-tmpfiles. In
          production it is the image Nix builds, the flake's `packages.x86_64-linux.vm-image`
          (images/vm-guest.nix): nixpkgs' kernel, the closure of its virtio, VirtioFS and
          vsock modules, static busybox and the static guest agent as /init, assembled by
          `aspen vm image build`; this module only links it. `null`: put an image (a directory
          holding `vmlinuz` and `initramfs.cpio`, as `aspen vm image build --out` writes) at
          `imageDir` yourself.
        '';
      };

      imageDir = mkOption {
        type = types.strMatching "/[^[:space:]]*" // { description = "absolute path without spaces"; };
        default = "${stateDir}/vm-image";
        description = ''
          The guest image directory `aspen-vm-run` boots (its `--image`; also what `aspen vm
          doctor --image` checks). The default lies in the node's state directory, which only
          root and the `aspen` user may enter while a node runs here: run VMs as root, or
          choose another directory.
        '';
      };

      hypervisor = mkOption {
        type = types.enum [ "auto" "qemu" "qemu-tcg" "cloud-hypervisor" ];
        default = "auto";
        description = ''
          The backend `aspen-vm-run` asks for (`--hypervisor`). `auto` takes Cloud Hypervisor
          where KVM runs guests and `cloud-hypervisor` is on PATH, else QEMU with KVM, else
          QEMU with TCG (emulated, slow, but anywhere); `qemu-tcg` emulates even where KVM
          works. QEMU is always installed; Cloud Hypervisor only when chosen here.
        '';
      };

      qemuPackage = mkOption {
        type = types.package;
        default = pkgs.qemu_kvm;
        defaultText = lib.literalExpression "pkgs.qemu_kvm";
        description = "The QEMU providing `qemu-system-x86_64`, which the runner looks for on PATH.";
      };
    };

    ci = {
      scheduler = mkOption {
        type = types.bool;
        default = true;
        description = ''
          Whether this node starts CI runs from pushes and advances them (queues jobs as
          their needs succeed, ends runs). Off: `--ci-no-scheduler`, and the node still
          answers the CI protocol (`aspen ci ...`). Runs advance as long as one node of the
          cluster schedules; the nodes that do race safely. Only for the node (`enable`).
        '';
      };

      keepRuns = mkOption {
        type = types.ints.unsigned;
        default = 500;
        description = ''
          Finished CI runs kept per repository, with their jobs, logs and artifacts
          (`--ci-keep-runs`); the scheduling nodes delete older ones, except runs that a kept
          run reused. 0 keeps every run.
        '';
      };

      pruneIntervalSeconds = mkOption {
        type = types.ints.positive;
        default = 3600;
        description = "Seconds between prunings of old CI runs (`--ci-prune-interval-secs`).";
      };

      worker = {
        enable = mkOption {
          type = types.bool;
          default = false;
          description = ''
            Run a CI worker on this machine: the service `aspen-ci-worker`, which is `aspen
            ci worker` as the system user `aspen-ci`, claiming the jobs of the cluster's
            runs that its executors, cpus and memory allow, and running them. Independent
            of `enable`: a machine without a node may work for a cluster elsewhere. Shell
            and nix jobs run as the worker's user and can read what it reads, its token
            included: run them only for code you trust, and other code with the `vm`
            executor.
          '';
        };

        id = mkOption {
          type = types.nullOr types.nonEmptyStr;
          default = null;
          example = "builder-1";
          description = ''
            The worker's name, unique among the pool's live workers (`--id`); it is what
            `aspen ci show` names as a job's worker. `null`: the host name and a random
            suffix, new on each start.
          '';
        };

        capacity = mkOption {
          type = types.ints.positive;
          default = 2;
          description = "Jobs run at once (`--capacity`).";
        };

        executors = mkOption {
          type = types.listOf (types.enum [ "shell" "nix" "vm" ]);
          default = [ "shell" "nix" ];
          example = [ "shell" "nix" "vm" ];
          description = ''
            The executors offered (`--executors`): `shell` (a script in namespaces of its own,
            with `unshare`), `nix` (`nix-build` or `nix build`, through this machine's nix
            daemon) and `vm` (a script in a microVM, booted with `services.aspen.vm`'s image and
            hypervisor, which must be enabled). The worker claims only jobs of these.
          '';
        };

        maxCpus = mkOption {
          type = types.nullOr types.ints.positive;
          default = null;
          description = "The most cpus one job may ask for (`--max-cpus`); `null`: this machine's.";
        };

        maxMemoryMiB = mkOption {
          type = types.ints.positive;
          default = 8192;
          description = "The most memory one job may ask for, in MiB (`--max-memory-mib`).";
        };

        workDir = mkOption {
          type = types.strMatching "/[^[:space:]]*" // { description = "absolute path without spaces"; };
          default = "/var/lib/aspen-ci";
          example = "/srv/aspen-ci";
          description = ''
            Where jobs' workspaces are made (`--work-dir`), owned by `aspen-ci` with mode
            0700. Under /var/lib it is the service's `StateDirectory`; elsewhere
            systemd-tmpfiles makes it. Not inside the node's data directory, which the worker
            cannot enter.
          '';
        };

        sessionTtlSeconds = mkOption {
          type = types.addCheck types.ints.positive (n: n >= 3) // { description = "integer of at least 3"; };
          default = 15;
          description = ''
            How long after this worker dies its jobs go to another worker
            (`--session-ttl-secs`): the lease it keeps alive with the cluster.
          '';
        };

        cache = mkOption {
          type = types.nullOr (types.strMatching "[a-z0-9_][a-z0-9._-]{0,63}" // {
            description = "cache name (1 to 64 of a-z, 0-9, `-`, `_`, `.`, not starting with `.` or `-`)";
          });
          default = null;
          example = "main";
          description = ''
            The cluster's cache that nix jobs with `cache_push` push their outputs' closures
            to (`--cache`), which `aspen cache create` made; the token needs `cache:write` on
            it. `null`: such jobs say they have nowhere to push.
          '';
        };

        isolation = mkOption {
          type = types.bool;
          default = true;
          description = ''
            Run shell jobs in new PID, mount, IPC and UTS namespaces (the worker checks on
            start that `unshare` can, and says whether it does), so that killing a job kills
            everything it started. Off: `--no-isolation`, each job in its own process group
            only.
          '';
        };

        ticketFile = mkOption {
          type = types.nullOr runtimePath;
          default = if cfg.enable then nodeTicket else null;
          defaultText = lib.literalExpression ''
            if config.services.aspen.enable then "''${config.services.aspen.dataDir}/node.ticket" else null
          '';
          example = "/run/keys/aspen-ci.ticket";
          description = ''
            The cluster's ticket, passed to the service as a systemd credential. By default,
            on a machine that runs a node, that node's own ticket (written each time it
            starts); elsewhere there is no default, and it must be set.
          '';
        };

        tokenFile = mkOption {
          type = types.nullOr runtimePath;
          default = if cfg.enable && cfg.initialize then cfg.rootTokenFile else null;
          defaultText = lib.literalExpression ''
            if config.services.aspen.enable && config.services.aspen.initialize
            then config.services.aspen.rootTokenFile else null
          '';
          example = "/run/keys/aspen-ci.token";
          description = ''
            The token the worker presents, passed as a systemd credential; `null`: the token
            inside the ticket (a node's `node.ticket` has none). By default, on the node that
            initialized the cluster, its root token, which grants everything; a worker needs
            read, write and delete on `_aspen/ci/` and `_aspen/coord/work/ci/`, leases,
            `forge:read` on the repositories, `blob:write` over `ci/`, and `cache:write` for
            `cache` (docs/ci.md). Replace the file and restart the service to renew it.
          '';
        };

        gitPackage = mkOption {
          type = types.package;
          default = pkgs.git;
          defaultText = lib.literalExpression "pkgs.git";
          description = "The git that checks out each job's commit (`--git`), also on the jobs' PATH.";
        };

        nixPackage = mkOption {
          type = types.package;
          default = config.nix.package;
          defaultText = lib.literalExpression "config.nix.package";
          description = ''
            The nix whose `nix-build` and `nix build` run nix jobs (as clients of this
            machine's nix daemon, which builds) and which pushes to `cache`; on the jobs' PATH.
          '';
        };

        evalLimitSeconds = mkOption {
          type = types.ints.between 1 3600;
          default = 30;
          description = ''
            Seconds a pipeline's evaluation may take (`--eval-limit-secs`): it runs in a child
            process, killed at the limit, so a pipeline that never ends cannot hold the worker.
          '';
        };

        passEnv = mkOption {
          type = types.listOf (types.strMatching "[A-Za-z_][A-Za-z0-9_]*");
          default = [ ];
          example = [ "CARGO_HOME" "RUSTUP_HOME" ];
          description = ''
            Variables of the worker's environment (set with `systemd.services.aspen-ci-worker.environment`)
            that its jobs get (`--pass-env`); jobs otherwise start from a clean environment.
          '';
        };

        extraPackages = mkOption {
          type = types.listOf types.package;
          default = [ ];
          example = lib.literalExpression "[ pkgs.gnumake pkgs.gcc ]";
          description = ''
            More packages on the jobs' PATH, which otherwise holds the worker's own tools
            (above) and what NixOS gives every service (coreutils, findutils, grep, sed,
            systemd).
          '';
        };
      };
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

    # AspenFS mounts, with or without a node on this machine.
    (mkIf (cfg.fs.mounts != { }) {
      assertions =
        lib.concatLists (lib.mapAttrsToList
          (name: m: [
            {
              assertion = builtins.match "[A-Za-z0-9_.-]+" name != null;
              message = "services.aspen.fs.mounts.\"${name}\": a mount's name becomes the unit aspen-fs-${name}.service; use letters, digits, `_`, `.` and `-`.";
            }
            {
              assertion = lib.hasSuffix "/" m.prefix;
              message = "services.aspen.fs.mounts.${name}.prefix \"${m.prefix}\" must end in \"/\": a mount shows the keys below a directory of the KV, such as \"fs/${name}/\".";
            }
            {
              assertion = lib.hasPrefix "/" m.mountPoint;
              message = "services.aspen.fs.mounts.${name}.mountPoint \"${m.mountPoint}\" must be an absolute path.";
            }
          ])
          cfg.fs.mounts)
        ++ [
          {
            assertion = duplicatePoints == [ ];
            message = "services.aspen.fs.mounts: two mounts at one place (${concatStringsSep ", " duplicatePoints}); each mount needs its own mountPoint.";
          }
        ];

      systemd.services = lib.mapAttrs' (name: m: lib.nameValuePair "aspen-fs-${name}" (fsService name m)) fsMounts;
    })

    # The microVM runner. No kernel modules are added: kvm_intel or kvm_amd loads by itself
    # on a CPU that has it, and the runner needs no vhost_vsock (QEMU reaches the guest agent
    # through virtio-serial, Cloud Hypervisor through its own vsock socket, and VirtioFS is
    # served in-process over vhost-user).
    (mkIf cfg.vm.enable {
      assertions = [
        {
          assertion = pkgs.stdenv.hostPlatform.isx86_64;
          message = "services.aspen.vm: the runner boots x86-64 guests with qemu-system-x86_64 or Cloud Hypervisor, on x86-64 hosts only.";
        }
      ];
      environment.systemPackages = [ cfg.package vmRun ] ++ hypervisorPackages;
      systemd.tmpfiles.rules = optional (cfg.vm.image != null) "L+ ${cfg.vm.imageDir} - - - - ${cfg.vm.image}";
    })

    # A CI worker, with or without a node on this machine. Its vm executor is the microVM
    # runner above: services.aspen.vm is the one place its image and hypervisor are set, and
    # the worker is given them (`--vm-image`, `--hypervisor`), so `aspen-vm-run` and vm jobs
    # boot the same guest the same way.
    (mkIf worker.enable {
      assertions = [
        {
          assertion = worker.executors != [ ];
          message = "services.aspen.ci.worker.executors is empty: the worker would claim no job. List at least one of \"shell\", \"nix\", \"vm\".";
        }
        {
          assertion = worker.cache == null || lib.elem "nix" worker.executors;
          message = "services.aspen.ci.worker.cache (\"${toString worker.cache}\") is where nix jobs with `cache_push` push their outputs, but `executors` has no \"nix\": add it, or leave `cache` null.";
        }
        {
          assertion = !vmJobs || cfg.vm.enable;
          message = "services.aspen.ci.worker: the \"vm\" executor boots guests with the microVM runner; set services.aspen.vm.enable (and its `image` and `hypervisor`, which the worker uses).";
        }
        {
          assertion = !(vmJobs && cfg.enable && cfg.vm.image == null && inDataDir cfg.vm.imageDir);
          message = "services.aspen.ci.worker: vm jobs boot the image at services.aspen.vm.imageDir (${cfg.vm.imageDir}), inside the node's data directory, which the worker's user cannot enter; set `services.aspen.vm.image`, or choose an `imageDir` elsewhere.";
        }
        {
          assertion = worker.ticketFile != null;
          message = "services.aspen.ci.worker.ticketFile: no node runs on this machine (services.aspen.enable is false), so there is no local ticket to default to; name the cluster's ticket file.";
        }
        {
          assertion = !(cfg.enable && worker.ticketFile == nodeTicket && worker.tokenFile == null);
          message = "services.aspen.ci.worker: the node's own ticket (${nodeTicket}) carries no token, and `tokenFile` is null; name a token file (the root token is the default only on the node that initialized the cluster).";
        }
        {
          assertion = !(cfg.enable && (inDataDir workDir || workDir == normalPath cfg.dataDir));
          message = "services.aspen.ci.worker.workDir (${workDir}) is inside the node's data directory, which the worker's user cannot enter; choose another (the default is /var/lib/aspen-ci).";
        }
      ];

      users.users.aspen-ci = {
        isSystemUser = true;
        group = "aspen-ci";
        home = workDir;
        description = "Aspen CI worker";
      };
      users.groups.aspen-ci = { };

      environment.systemPackages = [ cfg.package ];
      systemd.tmpfiles.rules = optional (workState == null) "d ${workDir} 0700 aspen-ci aspen-ci - -";
      systemd.services.aspen-ci-worker = workerService;
    })
  ];
}
