# The forge on NixOS: a two-node cluster runs services.aspen; a user on one machine pushes a
# repository through git-remote-aspen, and a user on another machine clones it, fetches a
# new commit, files an issue and finds the push events. Nothing but the module and the
# package: git on the client machines, the node's git from `services.aspen.forge.gitPackage`.
{ pkgs, module, aspen }:

pkgs.testers.runNixOSTest {
  name = "aspen-forge";

  defaults = {
    imports = [ (import ./defaults.nix { inherit pkgs module aspen; }) ];
    services.aspen.forge.gcGraceSeconds = 0;
    environment.systemPackages = [ pkgs.git ];
  };

  nodes = {
    alice = { services.aspen = { nodeId = 1; initialize = true; }; };
    bob = { services.aspen = { nodeId = 2; joinTicketFile = "/var/lib/aspen/join.ticket"; }; };
  };

  testScript = ''
    start_all()
    alice.wait_for_unit("aspen.service")
    alice.wait_for_file("/var/lib/aspen/join.ticket")
    ticket = alice.succeed("cat /var/lib/aspen/join.ticket").strip()
    root = alice.succeed("cat /var/lib/aspen/root.token").strip()
    bob.wait_for_unit("aspen.service")
    bob.succeed(
        f"printf %s '{ticket}' > /var/lib/aspen/join.ticket"
        " && chown aspen:aspen /var/lib/aspen/join.ticket && chmod 0600 /var/lib/aspen/join.ticket"
    )
    alice.wait_until_succeeds(
        f"aspen --ticket-file /var/lib/aspen/node.ticket --token {root} --json cluster status"
        " | jq -e '[.members[] | select(.voter)] | length == 2'"
    )

    # Each user: the node's ticket saved as cluster "home", the root token, a git identity.
    for m in (alice, bob):
        m.succeed(
            f"aspen --ticket-file /var/lib/aspen/node.ticket --token {root} cluster save home --with-token"
            " && git config --global user.name Tester && git config --global user.email t@example.org"
            " && git config --global init.defaultBranch main"
        )

    with subtest("a push from one machine"):
        alice.succeed("aspen --cluster home forge repo create team/app")
        alice.succeed(
            "mkdir /root/src && cd /root/src && git init -q"
            " && echo hello > README && git add README && git commit -qm first"
            " && git remote add origin aspen://home/team/app && git push -q origin main"
        )

    with subtest("is cloned on another"):
        bob.succeed("cd /root && git clone -q aspen://home/team/app clone && cd clone && git fsck --strict")
        head_alice = alice.succeed("git -C /root/src rev-parse HEAD").strip()
        head_bob = bob.succeed("git -C /root/clone rev-parse HEAD").strip()
        assert head_alice == head_bob, f"{head_alice} != {head_bob}"

    with subtest("a new commit is fetched, and the push events are there"):
        alice.succeed("cd /root/src && echo more >> README && git commit -qam second && git push -q origin main")
        bob.succeed("cd /root/clone && git pull -q --ff-only")
        bob.succeed("grep -x more /root/clone/README")
        bob.succeed("aspen --cluster home --json forge events --prefix team/ | jq -s -e 'length == 2'")

    with subtest("issues, signed by each user's own key"):
        alice.succeed("aspen identity create")
        bob.succeed("aspen identity create")
        issue_id = alice.succeed(
            "aspen --cluster home --json issue create team/app --title 'It crashes' | jq -r .id"
        ).strip()
        bob.succeed(f"aspen --cluster home issue comment team/app {issue_id} -m 'seen here too'")
        alice.succeed(
            f"aspen --cluster home --json issue show team/app {issue_id} | jq -e '.comments | length == 1'"
        )

    with subtest("the node's git is the module's, and the hardening still holds"):
        for m in (alice, bob):
            m.succeed("systemctl show aspen.service -p Environment | grep -q ASPEN_FORGE_GIT=/nix/store/")
            out = m.succeed("systemd-analyze security aspen.service --no-pager | tail -n 1")
            exposure = float(out.split(":")[1].split()[0])
            assert exposure <= 2.0, f"{m.name}: exposure {exposure} over 2.0: {out}"
  '';
}
