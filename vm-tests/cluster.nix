# Four NixOS machines run services.aspen: node1 initializes the cluster, node2 and node3 join
# from the ticket file alone, KV writes made on one are read on the others, the leader's
# service is killed and the cluster keeps serving while systemd brings it back, node4 joins
# and is removed, and the service's hardening is checked inside each VM.
{ pkgs, module, aspen }:

pkgs.testers.runNixOSTest {
  name = "aspen-cluster";

  defaults = import ./defaults.nix { inherit pkgs module aspen; };

  nodes = {
    node1 = { services.aspen = { nodeId = 1; initialize = true; }; };
    node2 = { services.aspen = { nodeId = 2; joinTicketFile = "/var/lib/aspen/join.ticket"; }; };
    node3 = { services.aspen = { nodeId = 3; joinTicketFile = "/var/lib/aspen/join.ticket"; }; };
    node4 = { services.aspen = { nodeId = 4; joinTicketFile = "/var/lib/aspen/join.ticket"; }; };
  };

  testScript = ''
    import json

    machines = {1: node1, 2: node2, 3: node3, 4: node4}
    start_all()
    node1.wait_for_unit("aspen.service")
    node1.wait_for_file("/var/lib/aspen/join.ticket")
    ticket = node1.succeed("cat /var/lib/aspen/join.ticket").strip()
    root = node1.succeed("cat /var/lib/aspen/root.token").strip()

    def place_ticket(machine):
        machine.wait_for_unit("aspen.service")
        machine.succeed(
            f"printf %s '{ticket}' > /var/lib/aspen/join.ticket"
            " && chown aspen:aspen /var/lib/aspen/join.ticket && chmod 0600 /var/lib/aspen/join.ticket"
        )

    def aspen(machine, args):
        return machine.succeed(f"aspen --ticket-file /var/lib/aspen/node.ticket --token {root} {args}")

    def status(machine):
        return json.loads(aspen(machine, "--json cluster status"))

    def voters(machine):
        return sorted(m["node_id"] for m in status(machine)["members"] if m["voter"])

    with subtest("three nodes form a cluster from ticket files alone"):
        place_ticket(node2)
        place_ticket(node3)
        node1.wait_until_succeeds(
            f"aspen --ticket-file /var/lib/aspen/node.ticket --token {root} --json cluster status"
            " | jq -e '[.members[] | select(.voter)] | length == 3'"
        )

    with subtest("writes on one node are read on the others"):
        aspen(node1, "kv put vm/key hello")
        for m in (node2, node3):
            m.wait_until_succeeds(
                f"aspen --ticket-file /var/lib/aspen/node.ticket --token {root} kv get vm/key --stale | grep -x hello"
            )

    with subtest("the leader's service is killed; the cluster serves, and the node rejoins"):
        leader_id = status(node1)["leader"]
        leader = machines[leader_id]
        other = node2 if leader_id != 2 else node3
        leader.succeed("systemctl kill --signal=KILL aspen.service")
        other.wait_until_succeeds(
            f"aspen --ticket-file /var/lib/aspen/node.ticket --token {root} kv put vm/after-kill yes"
        )
        leader.wait_for_unit("aspen.service")
        leader.wait_until_succeeds(
            f"aspen --ticket-file /var/lib/aspen/node.ticket --token {root} kv get vm/after-kill --stale | grep -x yes"
        )

    with subtest("a fourth node joins and is removed"):
        place_ticket(node4)
        node1.wait_until_succeeds(
            f"aspen --ticket-file /var/lib/aspen/node.ticket --token {root} --json cluster status"
            " | jq -e '[.members[] | select(.voter)] | length == 4'"
        )
        aspen(node1, "cluster remove 4")
        node1.wait_until_succeeds(
            f"aspen --ticket-file /var/lib/aspen/node.ticket --token {root} --json cluster status"
            " | jq -e '.members | length == 3'"
        )

    with subtest("the service's hardening holds"):
        for m in (node1, node2, node3):
            out = m.succeed("systemd-analyze security aspen.service --no-pager | tail -n 1")
            exposure = float(out.split(":")[1].split()[0])
            assert exposure <= 2.0, f"{m.name}: exposure {exposure} over 2.0: {out}"
            m.succeed("test $(stat -c %a /var/lib/aspen/root.token 2>/dev/null || echo 600) = 600")
            m.fail("ls -l /nix/store | grep -i 'aspen.*token'")
  '';
}
