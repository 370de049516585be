# AspenFS on NixOS: one machine runs a node and mounts a prefix of its KV through
# services.aspen.fs.mounts (the unit aspen-fs-default). The mount presents a token made for its
# prefix only, which exists only once the node has made the cluster: the unit, started at boot
# without it, keeps trying until the token is there. A file written through the mount is a key
# (`aspen kv get`), a key put with `aspen kv put` is a file, only root uses the mount, stopping
# the unit unmounts, and after a SIGKILL the dead mount is detached and the unit mounts again.
{ pkgs, module, aspen }:

pkgs.testers.runNixOSTest {
  name = "aspen-fs";

  nodes.machine = {
    imports = [ (import ./defaults.nix { inherit pkgs module aspen; }) ];
    services.aspen = {
      nodeId = 1;
      initialize = true;
      fs.mounts.default = {
        mountPoint = "/mnt/aspen";
        ticketFile = "/var/lib/aspen/node.ticket";
        tokenFile = "/etc/aspen/fs.token";
      };
    };
  };

  testScript = ''
    ticket = "/var/lib/aspen/node.ticket"
    unit = "aspen-fs-default.service"

    start_all()
    machine.wait_for_unit("aspen.service")
    machine.wait_for_file("/var/lib/aspen/root.token")
    machine.wait_for_file(ticket)
    root = machine.succeed("cat /var/lib/aspen/root.token").strip()

    def aspen(args):
        return machine.succeed(f"aspen --ticket-file {ticket} --token {root} {args}")

    def mounted():
        # The mount's source is its FUSE name, aspenfs:PREFIX.
        return machine.execute("findmnt --noheadings --output SOURCE,FSTYPE --mountpoint /mnt/aspen")[1].split()

    def restarts():
        return int(machine.succeed(f"systemctl show --property NRestarts --value {unit}").strip())

    machine.wait_until_succeeds(
        f"aspen --ticket-file {ticket} --token {root} --json cluster status | jq -e '.leader == 1'"
    )

    with subtest("without its token the unit keeps trying, and mounts once the token is there"):
        machine.wait_until_succeeds(f"test $(systemctl show --property NRestarts --value {unit}) -ge 1", timeout=60)
        assert mounted() == [], mounted()
        p = "fs/default/"
        token = aspen(
            f"token create --read {p} --write {p} --delete {p} --watch {p}"
            f" --app blob:read:aspenfs/{p} --app blob:write:aspenfs/{p} --ttl 1h"
        ).strip()
        assert token.startswith("aspen"), token
        machine.succeed(f"mkdir -p /etc/aspen && (umask 077 && printf %s {token} > /etc/aspen/fs.token)")
        machine.wait_until_succeeds("findmnt --mountpoint /mnt/aspen", timeout=60)
        assert mounted() == ["aspenfs:fs/default/", "fuse"], mounted()
        machine.wait_for_unit(unit)

    with subtest("a file written through the mount is a key"):
        machine.succeed("echo 'written through the mount' > /mnt/aspen/hello.txt")
        machine.succeed("mkdir /mnt/aspen/docs && echo nested > /mnt/aspen/docs/a.txt")
        machine.succeed(
            f"aspen --ticket-file {ticket} --token {root} kv get fs/default/hello.txt"
            " | grep -a -F 'written through the mount'"
        )
        machine.succeed(
            f"aspen --ticket-file {ticket} --token {root} kv get fs/default/docs/a.txt | grep -a -F nested"
        )

    with subtest("a key put with aspen kv is a file in the mount"):
        aspen("kv put fs/default/from-kv.txt 'put as a key'")
        machine.wait_until_succeeds("grep -x 'put as a key' /mnt/aspen/from-kv.txt", timeout=30)
        machine.succeed("ls /mnt/aspen | grep -x from-kv.txt")

    with subtest("only root uses the mount (allowOther is off)"):
        machine.fail("runuser -u nobody -- cat /mnt/aspen/from-kv.txt")
        machine.succeed("cat /mnt/aspen/from-kv.txt")

    with subtest("the unit's hardening: CAP_SYS_ADMIN alone, and scored"):
        pid = machine.succeed(f"systemctl show --property MainPID --value {unit}").strip()
        caps = machine.succeed(f"grep CapBnd /proc/{pid}/status").split()[1]
        assert caps == "0000000000200000", f"bounding set {caps}, not CAP_SYS_ADMIN alone"
        out = machine.succeed(f"systemd-analyze security {unit} --no-pager | tail -n 1")
        exposure = float(out.split(":")[1].split()[0])
        assert exposure <= 4.5, f"exposure {exposure} over 4.5: {out}"

    with subtest("stopping the unit unmounts, and the files stay keys"):
        machine.succeed(f"systemctl stop {unit}")
        assert mounted() == [], mounted()
        machine.succeed("test -d /mnt/aspen && test ! -e /mnt/aspen/hello.txt")
        result = machine.succeed(f"systemctl show --property Result --value {unit}").strip()
        assert result == "success", result
        aspen("kv get fs/default/hello.txt")

    with subtest("killed, the dead mount is detached and the unit mounts again"):
        machine.succeed(f"systemctl start {unit}")
        machine.wait_until_succeeds("findmnt --mountpoint /mnt/aspen", timeout=60)
        before = restarts()
        machine.succeed(f"systemctl kill --signal=SIGKILL {unit}")
        machine.wait_until_succeeds(f"test $(systemctl show --property NRestarts --value {unit}) -gt {before}", timeout=60)
        machine.wait_until_succeeds("grep -x 'put as a key' /mnt/aspen/from-kv.txt", timeout=60)
        assert mounted() == ["aspenfs:fs/default/", "fuse"], mounted()
        machine.succeed(f"systemctl stop {unit}")
        assert mounted() == [], mounted()
  '';
}
