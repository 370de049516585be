# CI on NixOS: a one-node cluster runs the forge and the CI scheduler (services.aspen, the
# scheduler being on by default), and a machine without a node runs a worker
# (services.aspen.ci.worker, the unit aspen-ci-worker) with the node's ticket and a token. They
# exist only once the cluster does: the unit, started at boot without them, keeps trying until
# they are there. A repository whose `.aspen/ci.ncl` has one shell job is pushed through
# git-remote-aspen; the push starts a run, the job runs on the worker (its host name, and PID 1
# of a PID namespace of its own: `unshare` works inside the unit's sandbox), and the run
# succeeds with the job's artifact and log. The unit runs as `aspen-ci` without capabilities,
# is scored, and stops cleanly.
{ pkgs, module, aspen }:

pkgs.testers.runNixOSTest {
  name = "aspen-ci";

  nodes = {
    node = {
      imports = [ (import ./defaults.nix { inherit pkgs module aspen; }) ];
      services.aspen = { nodeId = 1; initialize = true; };
      environment.systemPackages = [ pkgs.git ];
    };

    # No node here: the worker alone, for the node's cluster.
    worker = {
      imports = [ module ];
      services.aspen = {
        package = aspen;
        ci.worker = {
          enable = true;
          id = "vm-worker";
          executors = [ "shell" ];
          ticketFile = "/etc/aspen/ci.ticket";
          tokenFile = "/etc/aspen/ci.token";
        };
      };
      environment.systemPackages = [ aspen pkgs.jq ];
      virtualisation.memorySize = 1024;
    };
  };

  testScript = ''
    import json
    import shlex

    unit = "aspen-ci-worker.service"

    start_all()
    node.wait_for_unit("aspen.service")
    node.wait_for_file("/var/lib/aspen/root.token")
    node.wait_for_file("/var/lib/aspen/node.ticket")
    root = node.succeed("cat /var/lib/aspen/root.token").strip()
    ticket = node.succeed("cat /var/lib/aspen/node.ticket").strip()
    node.wait_until_succeeds(
        f"aspen --ticket-file /var/lib/aspen/node.ticket --token {root} --json cluster status"
        " | jq -e '.leader == 1'"
    )
    # The node's ticket saved as cluster "home" with the root token, and a git identity.
    node.succeed(
        f"aspen --ticket-file /var/lib/aspen/node.ticket --token {root} cluster save home --with-token"
        " && git config --global user.name Tester && git config --global user.email t@example.org"
        " && git config --global init.defaultBranch main"
    )

    def aspen(args):
        return node.succeed(f"aspen --cluster home {args}")

    def journal():
        return worker.execute(f"journalctl --no-pager -u {unit}")[1]

    with subtest("without its ticket and token the worker keeps trying, and starts once they are there"):
        worker.wait_until_succeeds(f"test $(systemctl show --property NRestarts --value {unit}) -ge 1", timeout=60)
        worker.succeed(
            "mkdir -p /etc/aspen && (umask 077"
            f" && printf %s {shlex.quote(ticket)} > /etc/aspen/ci.ticket"
            f" && printf %s {shlex.quote(root)} > /etc/aspen/ci.token)"
        )
        worker.wait_for_unit(unit)
        # Started, and shell jobs get namespaces of their own inside the unit's sandbox.
        worker.wait_until_succeeds(f"journalctl -u {unit} | grep -F 'ci worker vm-worker: '", timeout=60)
        worker.succeed(f"journalctl -u {unit} | grep -F 'shell isolation on (unshare)'")

    with subtest("a push starts a run, and its job runs on the worker"):
        aspen("forge repo create team/app")
        aspen("ci enable team/app")
        pipeline = """
          {
            jobs = {
              where = {
                executor = 'shell,
                run = "uname -n > where.txt && echo pid $$ >> where.txt && cat where.txt",
                artifacts = ["where.txt"],
              },
            },
          }
        """
        node.succeed(f"mkdir -p /root/src/.aspen && printf %s {shlex.quote(pipeline)} > /root/src/.aspen/ci.ncl")
        node.succeed("aspen ci validate /root/src/.aspen/ci.ncl")
        node.succeed(
            "cd /root/src && git init -q && git add -A && git commit -qm pipeline"
            " && git remote add origin aspen://home/team/app && git push -q origin main"
        )
        # Until the run ends (exit 1 when it did not succeed, which the asserts below show).
        node.execute("aspen --cluster home ci wait 1 --within-secs 300")
        run = json.loads(aspen("--json ci show 1"))
        assert run["state"] == "success", f"{run}\n{journal()}"
        assert run["repo"] == "team/app" and run["ref"].endswith("main"), run
        assert [job["name"] for job in run["jobs"]] == ["where"], run
        job = run["jobs"][0]
        assert job["state"] == "success" and job["exit_code"] == 0, job
        assert job["worker"] == "vm-worker", job
        assert [a["path"] for a in job["artifacts"]] == ["where.txt"], job
        # The worker machine's name, and PID 1: the job was the first process of its own PID
        # namespace.
        log = aspen("ci logs 1 where").splitlines()
        assert "worker" in log and "pid 1" in log, log

    with subtest("the unit runs as aspen-ci without capabilities, and is scored"):
        pid = worker.succeed(f"systemctl show --property MainPID --value {unit}").strip()
        assert worker.succeed(f"stat -c %U /proc/{pid}").strip() == "aspen-ci"
        caps = worker.succeed(f"grep CapBnd /proc/{pid}/status").split()[1]
        assert caps == "0000000000000000", f"bounding set {caps}, not empty"
        out = worker.succeed(f"systemd-analyze security {unit} --no-pager | tail -n 1")
        exposure = float(out.split(":")[1].split()[0])
        assert exposure <= 3.0, f"exposure {exposure} over 3.0: {out}"

    with subtest("stopped, the worker ends cleanly"):
        worker.succeed(f"systemctl stop {unit}")
        result = worker.succeed(f"systemctl show --property Result --value {unit}").strip()
        assert result == "success", f"{result}\n{journal()}"
        worker.succeed(f"journalctl -u {unit} | grep -F 'ci worker vm-worker stopped'")
  '';
}
