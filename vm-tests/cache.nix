# The Nix binary cache on NixOS: a one-node cluster serves the cache's HTTP gateway
# (services.aspen.cache, with the cluster's secrets key as a credential), a closure built at
# test time is pushed to a cache over iroh, and a machine without a node substitutes it with
# plain nix, which checks the cache's signature: with another key of the cache's key name
# (what services.aspen.substituters sets on that machine) it takes nothing, with the key
# `aspen cache key show` prints it takes the path and its closure. After a restart the node
# opens the cache's signing key again with the secrets key, and a new push is substituted too.
{ pkgs, module, aspen }:

let
  # The cluster's secrets key, fixed (64 hex digits). Through pkgs.writeText it sits in the Nix
  # store, world-readable: fine for a test, never for a real cluster, whose key is a file
  # outside the store (`openssl rand -hex 32`), the same on every node.
  secretsKey = pkgs.writeText "aspen-test-secrets.key" "3f8a1c9e5b7d2f4a6c8e0b1d3f5a7c9e2b4d6f8a0c1e3b5d7f9a2c4e6b8d0f1a";

  # A key named like the cache's (`main-1`, the default for cache `main`) that is not its key.
  wrongKey = "main-1:kdwWPccm2xbn97ny5FcQ6qvT2KHKzKKHlYRVI9nMdS8=";
in
pkgs.testers.runNixOSTest {
  name = "aspen-cache";

  nodes = {
    node = {
      imports = [ (import ./defaults.nix { inherit pkgs module aspen; }) ];
      services.aspen = {
        nodeId = 1;
        initialize = true;
        # A path outside the store, as the module requires: /etc holds a copy (mode 0400,
        # root's), which systemd hands to the service as a credential.
        secretsKeyFile = "/etc/aspen/secrets.key";
        cache = { httpListen = "0.0.0.0:8380"; openFirewall = true; };
      };
      environment.etc."aspen/secrets.key" = { source = secretsKey; mode = "0400"; };
      virtualisation.writableStore = true;
    };

    # No node here: only the module's client side.
    client = {
      imports = [ module ];
      services.aspen.substituters = [ { url = "http://node:8380/main"; publicKey = wrongKey; } ];
      environment.systemPackages = [ pkgs.curl ];
      virtualisation.writableStore = true;
    };
  };

  testScript = ''
    import json
    import shlex
    import uuid

    wrong_key = "${wrongKey}"

    start_all()
    node.wait_for_unit("aspen.service")
    node.wait_for_file("/var/lib/aspen/root.token")
    node.wait_for_file("/var/lib/aspen/node.ticket")
    root = node.succeed("cat /var/lib/aspen/root.token").strip()

    def aspen(args):
        return node.succeed(f"aspen --ticket-file /var/lib/aspen/node.ticket --token {root} {args}")

    node.wait_until_succeeds(
        f"aspen --ticket-file /var/lib/aspen/node.ticket --token {root} --json cluster status"
        " | jq -e '.leader == 1'"
    )

    with subtest("a public cache with its own signing key, served on the node's gateway"):
        aspen("cache create main --public")
        public_key = aspen("cache key show main").strip()
        assert public_key.startswith("main-1:"), public_key
        assert public_key != wrong_key
        node.wait_for_open_port(8380)
        client.wait_for_unit("multi-user.target")
        # Through the firewall the module opened.
        client.wait_until_succeeds("curl -fsS http://node:8380/main/nix-cache-info | grep -x 'StoreDir: /nix/store'")
        # The module's client side is in nix.conf, beside NixOS's own cache.
        client.succeed("grep -E '^substituters = .*http://node:8380/main' /etc/nix/nix.conf")
        client.succeed(f"grep -F '{wrong_key}' /etc/nix/nix.conf")

    # Two store paths built now (so in no machine's store but the node's), the first referring
    # to the second. Built, not added: nix takes a content-addressed path (`nix-store --add`,
    # `builtins.toFile`) without any signature, and this test is about the cache's.
    bash = node.succeed("readlink -f /run/current-system/sw/bin/bash").strip().removesuffix("/bin/bash")

    def make_closure(tag):
        expr = """
          let
            make = name: text: derivation {
              inherit name text;
              system = builtins.currentSystem;
              builder = "''${builtins.storePath "BASH"}/bin/bash";
              args = [ "-c" "echo $text > $out" ];
            };
            dep = make "aspen-cache-dep" "dep TAG";
          in make "aspen-cache-top" "top, which needs ''${dep}"
        """.replace("BASH", bash).replace("TAG", tag)
        top = node.succeed(f"nix-build --no-out-link --option substitute false -E {shlex.quote(expr)}").strip()
        dep = node.succeed(f"nix-store --query --references {top}").strip()
        assert dep.endswith("-aspen-cache-dep"), dep
        return top, dep

    def substitute(top, dep, tag):
        client.succeed(f"nix-store --realise {top} --option trusted-public-keys {shlex.quote(public_key)}")
        assert client.succeed(f"cat {dep}").strip() == f"dep {tag}"
        client.succeed(f"grep -F {dep} {top}")
        client.succeed(f"nix-store --query --references {top} | grep -x {dep}")
        client.succeed(f"nix-store --verify-path {top} && nix-store --verify-path {dep}")

    with subtest("a closure built on the node is pushed over iroh"):
        tag = uuid.uuid4().hex
        top, dep = make_closure(tag)
        report = json.loads(aspen(f"--json cache push --cache main {top}"))
        assert report["closure"] == 2 and report["pushed"] == 2, report
        client.fail(f"test -e {top}")

    with subtest("with another key of the cache's key name, nix takes nothing"):
        out = client.fail(f"nix-store --realise {top} 2>&1")
        assert "sign" in out, out
        client.fail(f"test -e {top}")
        client.fail(f"test -e {dep}")

    with subtest("with the cache's key, nix substitutes the path and its closure"):
        substitute(top, dep, tag)

    with subtest("after a restart, the node opens the signing key again with the secrets key"):
        node.systemctl("restart aspen.service")
        node.wait_for_unit("aspen.service")
        node.wait_until_succeeds(
            f"aspen --ticket-file /var/lib/aspen/node.ticket --token {root} --json cluster status"
            " | jq -e '.leader == 1'"
        )
        node.wait_for_open_port(8380)
        assert aspen("cache key show main").strip() == public_key
        tag = uuid.uuid4().hex
        top, dep = make_closure(tag)
        report = json.loads(aspen(f"--json cache push --cache main {top}"))
        assert report["pushed"] == 2, report
        substitute(top, dep, tag)

    with subtest("the service's hardening holds, and the secrets key is only a credential"):
        out = node.succeed("systemd-analyze security aspen.service --no-pager | tail -n 1")
        exposure = float(out.split(":")[1].split()[0])
        assert exposure <= 2.0, f"exposure {exposure} over 2.0: {out}"
        pid = node.succeed("systemctl show -p MainPID --value aspen.service").strip()
        cmdline = node.succeed(f"tr '\\0' ' ' < /proc/{pid}/cmdline")
        assert "--secrets-key-file /run/credentials/aspen.service/secrets.key" in cmdline, cmdline
        assert "/etc/aspen" not in cmdline, cmdline
  '';
}
