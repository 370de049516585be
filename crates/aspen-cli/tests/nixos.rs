//! The NixOS distribution, checked where nixpkgs cannot be fetched (see docs/nixos.md):
//!
//! - every `.nix` file parses, and flake.lock is a lock nix accepts for flake.nix's inputs;
//! - modules/aspen-node.nix, evaluated by the real module system (nixpkgs' `lib`), gives
//!   the expected service for a minimal, a full, a first, a joining and a cache-serving node,
//!   the expected `nix.settings` for a machine that substitutes from a cluster's caches (with or
//!   without a node), and refuses a wrongly typed option and contradicting settings;
//! - each evaluated `ExecStart` goes through the real binary's parser and validation
//!   (`aspen-node ... --check-config`), so the module cannot set a flag the binary lacks;
//! - the unit rendered from the module scores at most 2.0 in
//!   `systemd-analyze security --offline=true`;
//! - `nix run .#cluster`'s script forms a working cluster.
//!
//! Needs `nix-instantiate` and `nix` (Debian's nix-bin) and `systemd-analyze`, which
//! scripts/test.sh installs. nixpkgs' `lib` comes from `$ASPEN_NIXPKGS_LIB`, else
//! `../shared/nixpkgs-lib/lib` beside the checkout; without either, the module tests say so and
//! skip (the parse, lock, script and binary checks still run).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn repo() -> PathBuf {
    aspen_core::golden::crate_dir(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

fn node_bin() -> &'static str {
    env!("CARGO_BIN_EXE_aspen-node")
}

fn nixpkgs_lib() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("ASPEN_NIXPKGS_LIB") {
        return Some(PathBuf::from(dir));
    }
    let beside = repo().join("../shared/nixpkgs-lib/lib");
    beside.join("default.nix").is_file().then_some(beside)
}

fn nix_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        let name = entry.file_name();
        if name == "target" || name == ".git" || name == ".aspen" {
            continue;
        }
        if path.is_dir() {
            nix_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "nix") {
            out.push(path);
        }
    }
}

#[test]
fn every_nix_file_parses() {
    let mut files = Vec::new();
    nix_files(&repo(), &mut files);
    let expected =
        ["flake.nix", "modules/aspen-node.nix", "vm-tests/cluster.nix", "vm-tests/cache.nix", "images/node.nix"];
    for expected in expected {
        assert!(files.contains(&repo().join(expected)), "{expected} is missing");
    }
    for file in &files {
        let out = Command::new("nix-instantiate").arg("--parse").arg(file).output().expect("nix-instantiate runs");
        assert!(out.status.success(), "{} does not parse:\n{}", file.display(), String::from_utf8_lossy(&out.stderr));
    }
}

/// `nix flake metadata --no-update-lock-file` on a copy of flake.nix and flake.lock: it fails
/// when the lock does not match the declared inputs (nix would have to change it).
fn flake_metadata(flake: &str, lock: &str) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("flake.nix"), flake).unwrap();
    std::fs::write(dir.path().join("flake.lock"), lock).unwrap();
    Command::new("nix")
        .args(["--extra-experimental-features", "nix-command flakes", "flake", "metadata", "--json"])
        .args(["--no-update-lock-file", "--offline"])
        .arg(format!("path:{}", dir.path().display()))
        .output()
        .expect("nix runs")
}

#[test]
fn flake_lock_is_a_version_7_lock_of_exactly_the_declared_inputs() {
    let flake = std::fs::read_to_string(repo().join("flake.nix")).unwrap();
    let lock_text = std::fs::read_to_string(repo().join("flake.lock")).unwrap();
    let lock: serde_json::Value = serde_json::from_str(&lock_text).expect("flake.lock is JSON");
    assert_eq!(lock["version"], 7);
    let declared = Command::new("nix-instantiate")
        .args(["--eval", "--strict", "--json", "-E"])
        .arg(format!("builtins.attrNames (import {}/flake.nix).inputs", repo().display()))
        .output()
        .unwrap();
    let declared: Vec<String> = serde_json::from_slice(&declared.stdout).expect("flake.nix's inputs");
    let root = lock["root"].as_str().unwrap();
    let mut locked: Vec<String> = lock["nodes"][root]["inputs"].as_object().unwrap().keys().cloned().collect();
    locked.sort();
    assert_eq!(locked, declared, "flake.lock names exactly flake.nix's inputs");
    for name in &locked {
        let node = &lock["nodes"][name]["locked"];
        assert_eq!(node["type"], "github", "{name}");
        assert_eq!(node["rev"].as_str().map(str::len), Some(40), "{name} is pinned to a commit");
        assert!(node["narHash"].as_str().is_some_and(|h| h.starts_with("sha256-")), "{name}");
        assert!(node["lastModified"].as_u64().is_some(), "{name}");
    }
    if std::env::var_os("ASPEN_NO_NIX_STORE").is_some() {
        eprintln!("SKIPPED: nix flake metadata needs a writable Nix store (ASPEN_NO_NIX_STORE is set)");
        return;
    }
    let out = flake_metadata(&flake, &lock_text);
    assert!(out.status.success(), "nix refuses the lock:\n{}", String::from_utf8_lossy(&out.stderr));
    // The same check refuses a lock that lacks a declared input.
    let more = flake.replacen("inputs = {", "inputs = {\n    extra.url = \"github:example/extra\";", 1);
    let out = flake_metadata(&more, &lock_text);
    assert!(!out.status.success(), "a lock missing an input passed");
}

/// The module evaluated for `case`: `Ok(json)`, or `Err(message)` when evaluation fails.
fn evaluate(lib: &Path, case: &str) -> Result<serde_json::Value, String> {
    let out = Command::new("nix-instantiate")
        .args(["--eval", "--strict", "--json"])
        .arg(repo().join("nix/tests/eval-module.nix"))
        .args(["--arg", "lib"])
        .arg(format!("import {}", lib.display()))
        .args(["--argstr", "case", case])
        .output()
        .expect("nix-instantiate runs");
    if out.status.success() {
        Ok(serde_json::from_slice(&out.stdout).expect("JSON"))
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Splits an `ExecStart` line as systemd does for these (words, single quotes).
fn split_exec(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '\'' => {
                quoted = !quoted;
                in_word = true;
            }
            ' ' if !quoted => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

/// A unit file from the evaluated service, as NixOS renders one: lists become repeated keys.
fn render_unit(service: &serde_json::Value) -> String {
    let value = |v: &serde_json::Value| match v {
        serde_json::Value::Bool(b) => b.to_string(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let mut unit = format!("[Unit]\nDescription={}\n", service["description"].as_str().unwrap());
    for (key, name) in [("after", "After"), ("wants", "Wants")] {
        for v in service[key].as_array().into_iter().flatten() {
            unit += &format!("{name}={}\n", value(v));
        }
    }
    unit += "[Service]\n";
    for (k, v) in service["environment"].as_object().into_iter().flatten() {
        unit += &format!("Environment=\"{k}={}\"\n", value(v));
    }
    for (k, v) in service["serviceConfig"].as_object().unwrap() {
        match v {
            serde_json::Value::Array(items) => items.iter().for_each(|i| unit += &format!("{k}={}\n", value(i))),
            other => unit += &format!("{k}={}\n", value(other)),
        }
    }
    unit += "[Install]\n";
    for v in service["wantedBy"].as_array().into_iter().flatten() {
        unit += &format!("WantedBy={}\n", value(v));
    }
    unit
}

#[test]
fn the_module_evaluates_stays_in_step_with_the_binary_and_is_hardened() {
    let Some(lib) = nixpkgs_lib() else {
        eprintln!("SKIPPED: no nixpkgs lib (set ASPEN_NIXPKGS_LIB, or keep ../shared/nixpkgs-lib beside the checkout)");
        return;
    };
    for case in ["minimal", "full", "first-node", "joining-node", "cache-node"] {
        let evaluated = evaluate(&lib, case).unwrap_or_else(|e| panic!("case {case} fails to evaluate:\n{e}"));
        let service = &evaluated["services"]["aspen"];
        let config = &service["serviceConfig"];
        assert_eq!(config["Type"], "notify", "{case}");
        assert_eq!(config["Restart"], "on-failure", "{case}");
        assert_eq!(config["StateDirectory"], "aspen", "{case}");
        assert_eq!(evaluated["users"]["aspen"]["isSystemUser"], true, "{case}");

        // The binary parses and validates exactly what the module passes.
        let exec = config["ExecStart"].as_str().unwrap();
        let words = split_exec(exec);
        assert_eq!(words[0], "/aspen-package/bin/aspen-node", "{case}: {exec}");
        let credentials = tempfile::tempdir().unwrap();
        let args: Vec<String> =
            words[1..].iter().map(|w| w.replace("%d", credentials.path().to_str().unwrap())).collect();
        let out = Command::new(node_bin()).args(&args).arg("--check-config").output().unwrap();
        assert!(
            out.status.success() && String::from_utf8_lossy(&out.stdout).starts_with("ok"),
            "{case}: aspen-node refuses what the module passes ({exec}):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );

        // Hardening, scored by systemd itself.
        let dir = tempfile::tempdir().unwrap();
        let unit = dir.path().join("aspen.service");
        std::fs::write(&unit, render_unit(service)).unwrap();
        let out = Command::new("systemd-analyze")
            .args(["security", "--offline=true", "--no-pager"])
            .arg(&unit)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text.lines().find(|l| l.contains("Overall exposure level")).unwrap_or_else(|| {
            panic!("{case}: no score from systemd-analyze:\n{text}\n{}", String::from_utf8_lossy(&out.stderr))
        });
        let score: f64 = line.split(':').nth(1).and_then(|s| s.split_whitespace().next()).unwrap().parse().unwrap();
        assert!(score <= 2.0, "{case}: exposure {score} is over 2.0:\n{text}");
    }

    let full = evaluate(&lib, "full").unwrap();
    assert_eq!(full["firewall"], serde_json::json!([7711]));
    // The forge's settings reach the node, and its git is the module's.
    let exec = full["services"]["aspen"]["serviceConfig"]["ExecStart"].as_str().unwrap();
    assert!(exec.contains("--forge-gc-grace-secs 600") && exec.contains("--forge-gc-interval-secs 0"), "{exec}");
    assert_eq!(full["services"]["aspen"]["environment"]["ASPEN_FORGE_GIT"], "/git/bin/git");
    assert_eq!(full["paths"]["aspen-join-ticket"]["pathConfig"]["PathExists"], "/boot/aspen/join.ticket");
    let credential = &full["services"]["aspen"]["serviceConfig"]["LoadCredential"];
    assert_eq!(
        credential,
        &serde_json::json!(["node.key:/run/keys/aspen-node.key", "secrets.key:/run/keys/aspen-secrets.key"]),
        "the node's key and the cluster's secrets key are credentials"
    );
    // The cache: the secrets key by its credential path only, the gateway and its port, gc.
    let words = split_exec(exec);
    let flag = |name: &str| words.iter().position(|w| w == name).map(|i| words[i + 1].as_str());
    assert_eq!(flag("--secrets-key-file"), Some("%d/secrets.key"), "{exec}");
    assert_eq!(flag("--cache-http-listen"), Some("0.0.0.0:8380"), "{exec}");
    assert_eq!(flag("--cache-gc-interval-secs"), Some("600"), "{exec}");
    assert!(!exec.contains("/run/keys/aspen-secrets.key"), "the secrets key's path is not on the command line: {exec}");
    assert_eq!(full["firewallTCP"], serde_json::json!([8380]), "the gateway's port");

    let minimal = evaluate(&lib, "minimal").unwrap();
    assert_eq!(minimal["firewall"], serde_json::json!([]), "closed by default");
    assert_eq!(minimal["firewallTCP"], serde_json::json!([]), "closed by default");
    let exec = minimal["services"]["aspen"]["serviceConfig"]["ExecStart"].as_str().unwrap();
    assert!(!exec.contains("--secrets-key-file") && !exec.contains("--cache-http-listen"), "{exec}");
    assert!(exec.contains("--cache-gc-interval-secs 3600"), "{exec}");
    assert_eq!(minimal["services"]["aspen"]["serviceConfig"]["LoadCredential"], serde_json::json!([]));
    let disabled = evaluate(&lib, "disabled").unwrap();
    assert_eq!(disabled["services"], serde_json::json!({}), "nothing when disabled");

    // An IPv6 gateway: quoted for systemd, its port opened.
    let cache_node = evaluate(&lib, "cache-node").unwrap();
    let exec = cache_node["services"]["aspen"]["serviceConfig"]["ExecStart"].as_str().unwrap();
    assert!(exec.contains("--cache-http-listen '[::]:8381'") && exec.contains("--cache-gc-interval-secs 0"), "{exec}");
    assert_eq!(cache_node["firewallTCP"], serde_json::json!([8381]));
    assert_eq!(
        cache_node["services"]["aspen"]["serviceConfig"]["LoadCredential"],
        serde_json::json!(["secrets.key:/var/lib/aspen-keys/secrets.key"])
    );

    // Substituters: beside NixOS's own (cache.nixos.org, which stays last), with or without a
    // node on the machine; a netrc file when a cache needs a token.
    let nixos_cache = "https://cache.nixos.org/";
    let nixos_key = "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=";
    let main_key = "main-1:2c4mTn1AaMZ6gi3p8XYRTJSSPXSbFnIK0fxxkXPFCWU=";
    let team_key = "team-1:S1k2d0pZCkZ5Yk2mX8R9vQh3e0Jd6r1nqXzq3b7yT8o=";
    let keys = |v: &serde_json::Value| -> std::collections::BTreeSet<String> {
        v["nix"]["trusted-public-keys"].as_array().unwrap().iter().map(|k| k.as_str().unwrap().to_string()).collect()
    };
    let set = |k: &[&str]| -> std::collections::BTreeSet<String> { k.iter().map(|k| k.to_string()).collect() };
    let client = evaluate(&lib, "client").unwrap();
    assert_eq!(client["services"], serde_json::json!({}), "a client runs no node");
    assert_eq!(
        client["nix"]["substituters"],
        serde_json::json!(["http://10.0.0.11:8380/main", "http://10.0.0.12:8380/team", nixos_cache])
    );
    assert_eq!(keys(&client), set(&[nixos_key, main_key, team_key]));
    assert_eq!(client["nix"]["netrc-file"], "/run/keys/aspen-cache.netrc");
    assert_eq!(cache_node["nix"]["substituters"], serde_json::json!(["http://10.0.0.11:8380/main", nixos_cache]));
    assert_eq!(keys(&cache_node), set(&[nixos_key, main_key]));
    assert!(cache_node["nix"].get("netrc-file").is_none(), "no netrc file unless one is named");
    assert_eq!(disabled["nix"]["substituters"], serde_json::json!([nixos_cache]), "nix.settings untouched by default");
    assert_eq!(keys(&disabled), set(&[nixos_key]));

    for (case, expected) in [
        ("wrong-type", "is not of type `null or integer"),
        ("contradiction", "`initialize` makes a new cluster"),
        ("two-tickets", "not both"),
        ("secret-in-store", "absolute path outside the Nix store"),
        ("secrets-key-in-store", "`services.aspen.secretsKeyFile' is not of type `null or absolute path outside"),
        ("same-key-files", "they must be different files"),
        ("listen-host-name", "`services.aspen.cache.httpListen' is not of type `null or `IP:PORT`"),
        ("two-netrc-files", "nix reads one netrc file"),
        ("nameless-key", ".publicKey' is not of type"),
    ] {
        match evaluate(&lib, case) {
            Ok(v) => panic!("case {case} evaluated: {v}"),
            Err(message) => assert!(message.contains(expected), "case {case}: {message}"),
        }
    }
}

#[test]
fn the_binary_refuses_contradicting_settings() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = Command::new(node_bin())
        .args(["--data-dir", data.to_str().unwrap(), "--heartbeat-ms", "900", "--election-timeout-ms", "300"])
        .arg("--check-config")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("heartbeat"), "{}", String::from_utf8_lossy(&out.stderr));
    let out = Command::new(node_bin())
        .args(["--data-dir", data.to_str().unwrap(), "--join-ticket-out", "/tmp/x"])
        .arg("--check-config")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(!data.exists(), "checking the settings writes nothing");
}

#[test]
fn the_cluster_app_script_forms_a_working_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let bin_dir = Path::new(node_bin()).parent().unwrap();
    let port = {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.local_addr().unwrap().port().saturating_sub(3).max(20_000)
    };
    let mut child = Command::new("bash")
        .arg(repo().join("nix/cluster.sh"))
        .current_dir(dir.path())
        .env("ASPEN_BIN_DIR", bin_dir)
        .env("ASPEN_BASE_PORT", port.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the script starts");
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut ticket = None;
    for line in stdout.lines() {
        let line = line.unwrap();
        if line.starts_with("aspen") {
            ticket = Some(line);
            break;
        }
        assert!(Instant::now() < deadline, "the script printed no ticket in time");
    }
    let stop = |child: &mut std::process::Child| {
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        child.wait().unwrap()
    };
    let Some(ticket) = ticket else {
        let status = stop(&mut child);
        panic!("the script ended ({status}) without a ticket");
    };
    let aspen = bin_dir.join("aspen");
    let run = |args: &[&str]| Command::new(&aspen).args(args).current_dir(dir.path()).output().unwrap();
    // The ticket file is where the CLI looks by default.
    let put = run(&["kv", "put", "from/script", "works"]);
    assert!(put.status.success(), "{}", String::from_utf8_lossy(&put.stderr));
    let get = run(&["--ticket", &ticket, "kv", "get", "from/script"]);
    assert_eq!(String::from_utf8_lossy(&get.stdout), "works");
    let status = run(&["--json", "cluster", "status"]);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let voters = status["members"].as_array().unwrap().iter().filter(|m| m["voter"] == true).count();
    assert_eq!(voters, 3, "{status}");
    let mode = std::fs::metadata(dir.path().join(".aspen/cluster/cluster.ticket")).unwrap().permissions();
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777, 0o600);
    let exit = stop(&mut child);
    assert!(exit.success(), "the script stops cleanly on SIGTERM: {exit}");
    let alive = Command::new("pgrep").arg("-f").arg(dir.path().to_str().unwrap()).output().unwrap();
    assert!(alive.stdout.is_empty(), "nodes left running: {}", String::from_utf8_lossy(&alive.stdout));
}

/// Each VM test's Python script, evaluated out of vm-tests/*.nix with a stand-in for
/// nixpkgs' test framework, compiles; the machines it names are the ones the test declares.
#[test]
fn the_vm_test_script_compiles_and_names_its_machines() {
    for (file, machines) in [
        ("cluster", &["node1", "node2", "node3", "node4"][..]),
        ("forge", &["alice", "bob"][..]),
        ("cache", &["client", "node"][..]),
    ] {
        let expr = format!(
            "let t = import {}/vm-tests/{file}.nix {{ pkgs = {{ testers.runNixOSTest = a: a; jq = \"jq\"; git = \"git\"; }}; \
             module = {{ }}; aspen = \"aspen\"; }}; in {{ script = t.testScript; nodes = builtins.attrNames t.nodes; }}",
            repo().display()
        );
        let out = Command::new("nix-instantiate").args(["--eval", "--strict", "--json", "-E", &expr]).output().unwrap();
        assert!(out.status.success(), "{file}: {}", String::from_utf8_lossy(&out.stderr));
        let test: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let nodes: Vec<&str> = test["nodes"].as_array().unwrap().iter().filter_map(|n| n.as_str()).collect();
        assert_eq!(nodes, machines, "{file}");
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("test_script.py");
        std::fs::write(&script, test["script"].as_str().unwrap()).unwrap();
        let out = Command::new("python3").args(["-m", "py_compile"]).arg(&script).output().expect("python3 runs");
        assert!(
            out.status.success(),
            "the {file} VM test script does not compile:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
