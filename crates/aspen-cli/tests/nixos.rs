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
//! - AspenFS mounts (`services.aspen.fs.mounts`) become `aspen-fs-NAME` units whose `ExecStart`
//!   the real `aspen` accepts, which score at most 4.5 (a FUSE daemon cannot have the node's
//!   sandbox, see below), and whose commands, run here as systemd would run them, mount a
//!   prefix of a real node with FUSE, serve it, unmount on SIGTERM and clean up after SIGKILL;
//!   wrong mounts fail with the module's messages;
//! - the microVM runner's options (`services.aspen.vm`) install QEMU (and Cloud Hypervisor when
//!   chosen), a wrapper whose command line the real `aspen vm run` accepts, and the image link;
//! - a CI worker (`services.aspen.ci.worker`) becomes the `aspen-ci-worker` unit, word for word,
//!   whose `ExecStart` the real `aspen ci worker` accepts, which keeps what `unshare` and jobs
//!   need and scores at most 3.0; `services.aspen.ci.scheduler = false` gives the node
//!   `--ci-no-scheduler`, which `aspen-node --check-config` accepts; wrong workers fail with
//!   the module's messages;
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
    let expected = [
        "flake.nix",
        "modules/aspen-node.nix",
        "vm-tests/cluster.nix",
        "vm-tests/cache.nix",
        "vm-tests/fs.nix",
        "vm-tests/ci.nix",
        "images/node.nix",
    ];
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

/// Splits an `Exec*` line as systemd does for these: words, single quotes, double quotes, and
/// backslash escapes outside single quotes (`\"`, `\\`; what the module writes).
fn split_exec(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match (c, quote) {
            ('\'' | '"', None) => {
                quote = Some(c);
                in_word = true;
            }
            (c, Some(q)) if c == q => quote = None,
            ('\\', q) if q != Some('\'') => {
                let escaped = chars.next().expect("a backslash escapes something");
                assert!(matches!(escaped, '"' | '\\' | '\''), "an escape this splitter does not know: \\{escaped}");
                word.push(escaped);
                in_word = true;
            }
            (' ', None) => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            (c, _) => {
                word.push(c);
                in_word = true;
            }
        }
    }
    assert!(quote.is_none(), "an unclosed quote in {line}");
    if in_word {
        words.push(word);
    }
    words
}

/// One split word as the process gets it: systemd's specifiers (`%%`, and `%d`, the
/// credentials directory) and then its variables (`$$`; the module writes no other).
fn expand_word(word: &str, credentials: &Path) -> String {
    let mut out = String::new();
    let mut chars = word.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '%' => match chars.next() {
                Some('%') => out.push('%'),
                Some('d') => out.push_str(credentials.to_str().unwrap()),
                other => panic!("a specifier this test does not expect: %{other:?} in {word}"),
            },
            c => out.push(c),
        }
    }
    let mut argv_word = String::new();
    let mut chars = out.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '$' {
            assert_eq!(chars.next(), Some('$'), "a variable systemd would expand in {word}");
        }
        argv_word.push(c);
    }
    argv_word
}

/// The argv systemd runs for an `Exec*` line.
fn exec_argv(line: &str, credentials: &Path) -> Vec<String> {
    split_exec(line).iter().map(|w| expand_word(w, credentials)).collect()
}

/// `systemd-analyze security --offline=true` of a unit rendered from an evaluated service.
fn exposure(name: &str, service: &serde_json::Value) -> (f64, String) {
    let dir = tempfile::tempdir().unwrap();
    let unit = dir.path().join(format!("{name}.service"));
    std::fs::write(&unit, render_unit(service)).unwrap();
    let out =
        Command::new("systemd-analyze").args(["security", "--offline=true", "--no-pager"]).arg(&unit).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = text.lines().find(|l| l.contains("Overall exposure level")).unwrap_or_else(|| {
        panic!("{name}: no score from systemd-analyze:\n{text}\n{}", String::from_utf8_lossy(&out.stderr))
    });
    let score = line.split(':').nth(1).and_then(|s| s.split_whitespace().next()).unwrap().parse().unwrap();
    (score, text)
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
        let (score, text) = exposure("aspen", service);
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

fn aspen_bin() -> &'static str {
    env!("CARGO_BIN_EXE_aspen")
}

/// What no AspenFS unit may set: each gives the service a mount namespace of its own (or, for
/// PrivateUsers, a user namespace without CAP_SYS_ADMIN over the host's mounts), from which
/// the FUSE mount would never reach the host.
const NAMESPACING: &[&str] = &[
    "PrivateMounts",
    "PrivateTmp",
    "PrivateDevices",
    "PrivateUsers",
    "PrivateIPC",
    "PrivateNetwork",
    "ProtectSystem",
    "ProtectHome",
    "ProtectKernelTunables",
    "ProtectKernelModules",
    "ProtectKernelLogs",
    "ProtectControlGroups",
    "ProtectHostname",
    "ProtectProc",
    "ProcSubset",
    "ReadWritePaths",
    "ReadOnlyPaths",
    "InaccessiblePaths",
    "TemporaryFileSystem",
    "BindPaths",
    "BindReadOnlyPaths",
    "MountFlags",
    "DynamicUser",
    "StateDirectory",
];

/// The source of the mount at `point` (`/proc/self/mountinfo`), if something is mounted there.
fn mounted_source(point: &Path) -> Option<String> {
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let point = point.to_str().unwrap();
    table.lines().rev().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let target = left.split(' ').nth(4)?.replace("\\040", " ");
        (target == point).then(|| right.split(' ').nth(1).unwrap_or_default().replace("\\040", " "))
    })
}

#[test]
fn aspenfs_mounts_and_the_vm_runner_evaluate_to_what_the_binary_accepts() {
    let Some(lib) = nixpkgs_lib() else {
        eprintln!("SKIPPED: no nixpkgs lib (set ASPEN_NIXPKGS_LIB, or keep ../shared/nixpkgs-lib beside the checkout)");
        return;
    };
    let nowhere = tempfile::tempdir().unwrap();
    let credentials = nowhere.path().join("credentials");

    // Two mounts and one turned off: a unit for each mount that is on, after the node's.
    let evaluated = evaluate(&lib, "fs-mounts").unwrap_or_else(|e| panic!("fs-mounts fails to evaluate:\n{e}"));
    let services = evaluated["services"].as_object().unwrap();
    let names: Vec<&str> = services.keys().map(String::as_str).collect();
    assert_eq!(names, ["aspen", "aspen-fs-default", "aspen-fs-media"]);
    let expected_args: [(&str, &[&str], &str, &[&str]); 2] = [
        (
            "aspen-fs-default",
            &[
                "--ticket-file",
                "%/ticket",
                "--token-file",
                "%/token",
                "fs",
                "mount",
                "/mnt/aspen",
                "--prefix",
                "fs/default/",
                "--ttl-ms",
                "60000",
                "--unwatched-ttl-ms",
                "1000",
                "--op-timeout",
                "30",
                "--threads",
                "2",
            ],
            "/mnt/aspen",
            &["ticket:/var/lib/aspen/node.ticket", "token:/var/lib/aspen/root.token"],
        ),
        (
            "aspen-fs-media",
            &[
                "--ticket-file",
                "%/ticket",
                "fs",
                "mount",
                "/srv/aspen media/100%",
                "--prefix",
                "team/media files/",
                "--ttl-ms",
                "5000",
                "--unwatched-ttl-ms",
                "250",
                "--op-timeout",
                "7",
                "--threads",
                "4",
                "--allow-other",
            ],
            "/srv/aspen media/100%",
            &["ticket:/run/keys/aspen.ticket"],
        ),
    ];
    for (name, args, mount_point, loaded) in expected_args {
        let service = &services[name];
        let config = &service["serviceConfig"];
        assert_eq!(config["Type"], "simple", "{name}");
        assert_eq!(config["KillSignal"], "SIGTERM", "{name}");
        assert_eq!(config["TimeoutStopSec"], "30s", "{name}");
        assert_eq!(config["Restart"], "on-failure", "{name}");
        assert_eq!(config["DevicePolicy"], "closed", "{name}");
        assert_eq!(config["DeviceAllow"], serde_json::json!(["/dev/fuse rw"]), "{name}");
        assert_eq!(config["CapabilityBoundingSet"], serde_json::json!(["CAP_SYS_ADMIN"]), "{name}");
        assert_eq!(config["LoadCredential"], serde_json::json!(loaded), "{name}");
        assert!(config.get("User").is_none(), "{name}: mount(2) needs root");
        for key in NAMESPACING {
            assert!(config.get(*key).is_none(), "{name} sets {key}, which would keep its mount from the host");
        }
        for key in ["wants", "after"] {
            assert_eq!(service[key], serde_json::json!(["network-online.target", "aspen.service"]), "{name} {key}");
        }
        assert_eq!(service["wantedBy"], serde_json::json!(["multi-user.target"]), "{name}");

        // What the daemon gets, word for word, and what the real binary makes of it: with the
        // credentials missing, it gets past the parser and stops at the ticket (clap's own
        // errors exit with 2).
        let exec = config["ExecStart"].as_str().unwrap();
        let argv = exec_argv(exec, &credentials);
        assert_eq!(argv[0], "/aspen-package/bin/aspen", "{name}: {exec}");
        let expected: Vec<String> =
            args.iter().map(|a| a.replace("%/", &format!("{}/", credentials.display()))).collect();
        assert_eq!(argv[1..], expected[..], "{name}: {exec}");
        let out = Command::new(aspen_bin()).args(&argv[1..]).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name}: aspen refuses what the module passes ({exec}):\n{stderr}");
        assert!(stderr.contains("cannot read the ticket file"), "{name}: {stderr}");

        let pre = exec_argv(config["ExecStartPre"].as_str().unwrap(), &credentials);
        assert_eq!(pre, ["/usr/bin/mkdir", "-p", mount_point], "{name}");
        let post = exec_argv(config["ExecStopPost"].as_str().unwrap(), &credentials);
        let prefix = &args[args.iter().position(|a| *a == "--prefix").unwrap() + 1];
        assert_eq!(post[..2], ["/bin/sh", "-c"], "{name}");
        assert!(post[2].contains("umount --lazy"), "{name}: {post:?}");
        assert_eq!(post[3..], ["aspen-fs-cleanup".to_string(), mount_point.into(), format!("aspenfs:{prefix}")]);

        // Scored by systemd. A FUSE daemon cannot have the node's sandbox (about 1.2): it runs
        // as root with CAP_SYS_ADMIN to call mount(2), and in the host's mount namespace, or
        // its mount would stay inside the service; so no ProtectSystem, ProtectHome,
        // PrivateTmp, PrivateDevices (DevicePolicy=closed and /dev/fuse instead), Protect-
        // Kernel*, ProtectControlGroups, ProtectProc or PrivateUsers. What is left (no other
        // capability, a system call allow list, no new privileges, no namespaces, no W^X
        // mappings, network families only) scores about 4.0.
        let (score, text) = exposure(name, service);
        eprintln!("{name}: systemd-analyze security exposure {score}");
        assert!(score <= 4.5, "{name}: exposure {score} is over 4.5:\n{text}");
    }

    // A mount on a machine without a node: no node to wait for.
    let client = evaluate(&lib, "fs-client").unwrap();
    let names: Vec<&str> = client["services"].as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(names, ["aspen-fs-shared"]);
    assert_eq!(client["services"]["aspen-fs-shared"]["after"], serde_json::json!(["network-online.target"]));
    let exec = client["services"]["aspen-fs-shared"]["serviceConfig"]["ExecStart"].as_str().unwrap();
    assert!(exec.contains(" --prefix fs/shared/ "), "the prefix defaults to fs/NAME/: {exec}");

    // The microVM runner: QEMU, the image linked into place, and a wrapper whose command the
    // real `aspen vm run` parses (and stops at the missing image, exit 1; clap's errors are 2).
    for (case, hypervisor, image_dir, tools, links) in [
        (
            "vm",
            "qemu-tcg",
            "/var/lib/aspen/vm-image",
            &["qemu-host-cpu-only"][..],
            &["L+ /var/lib/aspen/vm-image - - - - /aspen-vm-image"][..],
        ),
        (
            "vm-cloud-hypervisor",
            "cloud-hypervisor",
            "/srv/vm-image",
            &["qemu-host-cpu-only", "cloud-hypervisor"][..],
            &[][..],
        ),
    ] {
        let vm = evaluate(&lib, case).unwrap_or_else(|e| panic!("{case} fails to evaluate:\n{e}"));
        assert_eq!(vm["services"], serde_json::json!({}), "{case}: the runner is a command, not a service");
        assert_eq!(vm["tmpfiles"], serde_json::json!(links), "{case}");
        let packages = vm["packages"].as_array().unwrap();
        let names: Vec<&str> = packages.iter().map(|p| p["name"].as_str().unwrap()).collect();
        for tool in ["aspen", "aspen-vm-run"].iter().chain(tools) {
            assert!(names.contains(tool), "{case}: {tool} is not installed: {names:?}");
        }
        let script = packages.iter().find(|p| p["name"] == "aspen-vm-run").unwrap()["text"].as_str().unwrap();
        let path = script.lines().find_map(|l| l.strip_prefix("export PATH=")).unwrap();
        for tool in tools {
            assert!(
                path.starts_with(&format!("/{}/bin", tools[0])) && path.contains(&format!("/{tool}/bin")),
                "{path}"
            );
        }
        let exec = script.lines().find_map(|l| l.strip_prefix("exec ")).unwrap();
        let mut words = split_exec(exec);
        assert_eq!(words.pop().as_deref(), Some("$@"), "{case}: the wrapper passes its arguments on: {exec}");
        assert_eq!(words, ["/aspen-package/bin/aspen", "vm", "run", "--image", image_dir, "--hypervisor", hypervisor]);
        let missing = nowhere.path().join("no-image");
        words[4] = missing.to_str().unwrap().to_string();
        let out = Command::new(aspen_bin()).args(&words[1..]).args(["--", "true"]).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{case}: aspen refuses the wrapper's command ({exec}):\n{stderr}");
        // The runner's own refusal (no image here, or no Cloud Hypervisor), not the parser's.
        assert!(stderr.contains("no guest image") || stderr.contains("is not on PATH"), "{case}: {stderr}");
    }

    for (case, expected) in [
        ("fs-bad-prefix", "services.aspen.fs.mounts.default.prefix \"fs/default\" must end in \"/\""),
        (
            "fs-relative-mount-point",
            "services.aspen.fs.mounts.default.mountPoint \"mnt/aspen\" must be an absolute path",
        ),
        ("fs-same-mount-point", "two mounts at one place (/mnt/aspen)"),
        ("fs-bad-name", "a mount's name becomes the unit aspen-fs-my files.service"),
        ("fs-no-ticket", "`services.aspen.fs.mounts.default.ticketFile' was accessed but has no value defined"),
        ("vm-on-aarch64", "on x86-64 hosts only"),
    ] {
        match evaluate(&lib, case) {
            Ok(v) => panic!("case {case} evaluated: {v}"),
            Err(message) => assert!(message.contains(expected), "case {case}: {message}"),
        }
    }
}

/// What the CI worker's unit may not set: each keeps `unshare` from giving a shell job the
/// namespaces and the /proc it gets (RestrictNamespaces=true forbids them; ProtectKernel-
/// Tunables and ProtectKernelLogs cover parts of /proc, and the kernel then refuses a user
/// namespace a /proc of its own), or breaks what jobs run (JIT compilers need writable
/// executable memory; sanitizers change their personality and run again; tools read /proc's
/// non-process files).
const CI_WORKER_CANNOT: &[&str] = &[
    "ProtectKernelTunables",
    "ProtectKernelLogs",
    "ProcSubset",
    "MemoryDenyWriteExecute",
    "LockPersonality",
    "PrivateNetwork",
];

#[test]
fn the_ci_worker_and_the_scheduler_evaluate_to_what_the_binaries_accept() {
    let Some(lib) = nixpkgs_lib() else {
        eprintln!("SKIPPED: no nixpkgs lib (set ASPEN_NIXPKGS_LIB, or keep ../shared/nixpkgs-lib beside the checkout)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let credentials = dir.path().join("credentials");
    // The worker resolves its hypervisor before it reads the ticket: a stand-in QEMU on PATH
    // (only looked for, never run) gets a vm worker that far on any machine.
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    std::fs::write(bin.join("qemu-system-x86_64"), "#!/bin/sh\nexit 1\n").unwrap();
    std::fs::set_permissions(bin.join("qemu-system-x86_64"), std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .unwrap();
    let path = std::env::join_paths(
        std::iter::once(bin.clone()).chain(std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())),
    )
    .unwrap();

    type Case<'a> = (&'a str, &'a [&'a str], &'a [&'a str], &'a [&'a str], &'a [&'a str]);
    let cases: [Case; 2] = [
        // A first node with a worker of every executor: the node's ticket and root token, the
        // runner's image (its store path) and hypervisor, a cache to push to.
        (
            "ci-worker",
            &[
                "--ticket-file",
                "%/ticket",
                "--token-file",
                "%/token",
                "ci",
                "worker",
                "--id",
                "builder-1",
                "--capacity",
                "4",
                "--executors",
                "shell,nix,vm",
                "--max-cpus",
                "8",
                "--max-memory-mib",
                "16384",
                "--work-dir",
                "/var/lib/aspen-ci",
                "--session-ttl-secs",
                "30",
                "--cache",
                "main",
                "--vm-image",
                "/aspen-vm-image",
                "--hypervisor",
                "qemu-tcg",
                "--git",
                "/git/bin/git",
                "--pass-env",
                "CARGO_HOME,RUSTUP_HOME",
                "--eval-limit-secs",
                "60",
            ],
            &["ticket:/var/lib/aspen/node.ticket", "token:/var/lib/aspen/root.token"],
            &["network-online.target", "aspen.service"],
            &["/aspen-package", "/git", "/nix", "/usr", "/bash", "/qemu-host-cpu-only", "/gnumake"],
        ),
        // A worker alone, for a cluster elsewhere: the defaults, and shell jobs without
        // namespaces.
        (
            "ci-worker-only",
            &[
                "--ticket-file",
                "%/ticket",
                "--token-file",
                "%/token",
                "ci",
                "worker",
                "--capacity",
                "2",
                "--executors",
                "shell",
                "--max-memory-mib",
                "8192",
                "--work-dir",
                "/srv/aspen-ci",
                "--session-ttl-secs",
                "15",
                "--no-isolation",
                "--git",
                "/git/bin/git",
                "--eval-limit-secs",
                "30",
            ],
            &["ticket:/run/keys/aspen-ci.ticket", "token:/run/keys/aspen-ci.token"],
            &["network-online.target"],
            &["/aspen-package", "/git", "/nix", "/usr", "/bash"],
        ),
    ];
    for (case, args, loaded, after, tools) in cases {
        let evaluated = evaluate(&lib, case).unwrap_or_else(|e| panic!("{case} fails to evaluate:\n{e}"));
        let service = &evaluated["services"]["aspen-ci-worker"];
        let config = &service["serviceConfig"];
        assert_eq!(service["description"], "Aspen CI worker", "{case}");
        assert_eq!(config["Type"], "simple", "{case}");
        assert_eq!(config["User"], "aspen-ci", "{case}");
        assert_eq!(config["Group"], "aspen-ci", "{case}");
        assert_eq!(config["Restart"], "on-failure", "{case}");
        // SIGTERM to the worker alone, which stops its jobs and gives them back; SIGKILL
        // then to whatever is left of them in its cgroup.
        assert_eq!(config["KillMode"], "mixed", "{case}");
        assert_eq!(config["KillSignal"], "SIGTERM", "{case}");
        assert_eq!(config["TimeoutStopSec"], "30s", "{case}");
        assert_eq!(config["LoadCredential"], serde_json::json!(loaded), "{case}");
        for key in ["wants", "after"] {
            assert_eq!(service[key], serde_json::json!(after), "{case} {key}");
        }
        assert_eq!(service["wantedBy"], serde_json::json!(["multi-user.target"]), "{case}");
        assert_eq!(service["path"], serde_json::json!(tools), "{case}: the jobs' PATH");
        assert_eq!(evaluated["users"]["aspen-ci"]["isSystemUser"], true, "{case}");
        assert_eq!(evaluated["groups"]["aspen-ci"], serde_json::json!({}), "{case}");

        // What the worker gets, word for word, and what the real binary makes of it: with the
        // credentials missing, it gets past the parser (whose errors exit with 2) and past
        // its executors and hypervisor, and stops at the ticket.
        let exec = config["ExecStart"].as_str().unwrap();
        let argv = exec_argv(exec, &credentials);
        assert_eq!(argv[0], "/aspen-package/bin/aspen", "{case}: {exec}");
        let expected: Vec<String> =
            args.iter().map(|a| a.replace("%/", &format!("{}/", credentials.display()))).collect();
        assert_eq!(argv[1..], expected[..], "{case}: {exec}");
        let out = Command::new(aspen_bin()).args(&argv[1..]).env("PATH", &path).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{case}: aspen refuses what the module passes ({exec}):\n{stderr}");
        assert!(stderr.contains("cannot read the ticket file"), "{case}: {stderr}");

        // Hardening: none of what would break `unshare` or the jobs, and the rest.
        for key in CI_WORKER_CANNOT {
            assert!(config.get(*key).is_none(), "{case} sets {key}");
        }
        assert_eq!(config["RestrictNamespaces"], serde_json::json!(["user", "mnt", "pid", "ipc", "uts"]), "{case}");
        assert_eq!(config["CapabilityBoundingSet"], "", "{case}");
        assert_eq!(config["NoNewPrivileges"], true, "{case}");
        assert_eq!(config["ProtectSystem"], "strict", "{case}");
        assert_eq!(config["PrivateUsers"], true, "{case}");
        let filter = config["SystemCallFilter"].as_array().unwrap();
        assert!(filter.contains(&serde_json::json!("@mount")), "{case}: unshare mounts /proc: {filter:?}");
        // Scored by systemd. The node scores about 1.2 (at most 2.0); the worker cannot have
        // what its jobs need, and systemd-analyze counts each against it: the network (no
        // PrivateNetwork, no IP allow list), user, mount, PID, IPC and UTS namespaces (for
        // unshare), all of /proc (no ProtectKernelTunables, ProtectKernelLogs or
        // ProcSubset), writable executable memory, and a system call filter that admits
        // @mount, @debug and the @privileged calls of a job that is root in its namespace.
        // That scores 2.6 with systemd 252; vm jobs add /dev/kvm and the kvm group, 2.8.
        // The bound is the worse of the two and 0.2 for other systemd versions' weights;
        // what matters most (no capabilities, PrivateUsers, NoNewPrivileges, ProtectSystem,
        // the namespaces allowed) is checked above one by one.
        let (score, text) = exposure("aspen-ci-worker", service);
        eprintln!("{case}: aspen-ci-worker's systemd-analyze security exposure {score}");
        assert!(score <= 3.0, "{case}: exposure {score} is over 3.0:\n{text}");
    }

    // With a node: after it, in a StateDirectory, vm jobs with /dev/kvm and the runner's own
    // packages and image link.
    let worker = evaluate(&lib, "ci-worker").unwrap();
    let config = &worker["services"]["aspen-ci-worker"]["serviceConfig"];
    let names: Vec<&str> = worker["services"].as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(names, ["aspen", "aspen-ci-worker"]);
    assert_eq!(config["StateDirectory"], "aspen-ci");
    assert_eq!(config["StateDirectoryMode"], "0700");
    assert_eq!(config["WorkingDirectory"], "/var/lib/aspen-ci");
    assert!(config.get("ReadWritePaths").is_none() && config.get("PrivateDevices").is_none(), "{config}");
    assert_eq!(config["DevicePolicy"], "closed");
    assert_eq!(config["DeviceAllow"], serde_json::json!(["/dev/kvm rw"]));
    assert_eq!(config["SupplementaryGroups"], serde_json::json!(["kvm"]));
    assert_eq!(worker["users"]["aspen-ci"]["home"], "/var/lib/aspen-ci");
    assert_eq!(worker["tmpfiles"], serde_json::json!(["L+ /var/lib/aspen/vm-image - - - - /aspen-vm-image"]));
    let packages: Vec<&str> =
        worker["packages"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert!(packages.contains(&"aspen-vm-run") && packages.contains(&"qemu-host-cpu-only"), "{packages:?}");
    // The node still schedules (the default), and checks out with the binary.
    let node_exec = worker["services"]["aspen"]["serviceConfig"]["ExecStart"].as_str().unwrap();
    assert!(!node_exec.contains("--ci-no-scheduler"), "{node_exec}");

    // Alone: no node to wait for, a work directory made by tmpfiles and opened for writing,
    // and a private /dev.
    let alone = evaluate(&lib, "ci-worker-only").unwrap();
    let config = &alone["services"]["aspen-ci-worker"]["serviceConfig"];
    let names: Vec<&str> = alone["services"].as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(names, ["aspen-ci-worker"]);
    assert!(config.get("StateDirectory").is_none(), "{config}");
    assert_eq!(config["ReadWritePaths"], serde_json::json!(["/srv/aspen-ci"]));
    assert_eq!(config["WorkingDirectory"], "/srv/aspen-ci", "without the trailing slash");
    assert_eq!(alone["tmpfiles"], serde_json::json!(["d /srv/aspen-ci 0700 aspen-ci aspen-ci - -"]));
    assert_eq!(config["PrivateDevices"], true);
    assert!(config.get("DeviceAllow").is_none(), "{config}");
    assert_eq!(config["SupplementaryGroups"], serde_json::json!([]));
    assert!(alone["users"].get("aspen").is_none(), "no node user without a node");

    // `ci.scheduler = false`: the node's flag, which the real aspen-node accepts.
    let quiet = evaluate(&lib, "ci-no-scheduler").unwrap();
    assert!(quiet["services"].get("aspen-ci-worker").is_none(), "no worker unless enabled");
    for (case, evaluated, scheduler) in [("ci-no-scheduler", &quiet, false), ("ci-worker", &worker, true)] {
        let exec = evaluated["services"]["aspen"]["serviceConfig"]["ExecStart"].as_str().unwrap();
        let words = split_exec(exec);
        assert_eq!(words.iter().any(|w| w == "--ci-no-scheduler"), !scheduler, "{case}: {exec}");
        let keep = words.iter().position(|w| w == "--ci-keep-runs").map(|i| words[i + 1].as_str());
        assert_eq!(keep, Some(if scheduler { "50" } else { "500" }), "{case}: ci.keepRuns: {exec}");
        let prune = words.iter().position(|w| w == "--ci-prune-interval-secs").map(|i| words[i + 1].as_str());
        assert_eq!(prune, Some("3600"), "{case}: {exec}");
        let out = Command::new(node_bin()).args(&words[1..]).arg("--check-config").output().unwrap();
        assert!(
            out.status.success() && String::from_utf8_lossy(&out.stdout).starts_with("ok"),
            "{case}: aspen-node refuses what the module passes ({exec}):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    for (case, expected) in [
        ("ci-no-executors", "services.aspen.ci.worker.executors is empty: the worker would claim no job"),
        ("ci-cache-without-nix", "services.aspen.ci.worker.cache (\"main\") is where nix jobs with `cache_push` push"),
        (
            "ci-vm-without-runner",
            "the \"vm\" executor boots guests with the microVM runner; set services.aspen.vm.enable",
        ),
        ("ci-no-ticket", "services.aspen.ci.worker.ticketFile: no node runs on this machine"),
        ("ci-no-token", "the node's own ticket (/var/lib/aspen/node.ticket) carries no token, and `tokenFile` is null"),
        (
            "ci-vm-image-in-data-dir",
            "services.aspen.vm.imageDir (/var/lib/aspen/vm-image), inside the node's data directory",
        ),
        (
            "ci-work-dir-in-data-dir",
            "services.aspen.ci.worker.workDir (/var/lib/aspen/ci) is inside the node's data directory",
        ),
        ("ci-short-session", "`services.aspen.ci.worker.sessionTtlSeconds' is not of type `integer of at least 3'"),
        ("ci-bad-cache-name", "`services.aspen.ci.worker.cache' is not of type `null or cache name"),
    ] {
        match evaluate(&lib, case) {
            Ok(v) => panic!("case {case} evaluated: {v}"),
            Err(message) => assert!(message.contains(expected), "case {case}: {message}"),
        }
    }
}

/// The mount unit's own commands, run as systemd runs them (argv from the evaluated unit, the
/// credentials in a directory of their own) against a real node: ExecStartPre makes the mount
/// point, ExecStart mounts the prefix with FUSE, a file written there is a key and a key put
/// is a file, SIGTERM unmounts, and after a SIGKILL ExecStopPost detaches the dead mount; it
/// leaves alone another file system mounted at the same place.
#[test]
fn the_aspenfs_unit_commands_mount_serve_and_clean_up() {
    let Some(lib) = nixpkgs_lib() else {
        eprintln!("SKIPPED: no nixpkgs lib (set ASPEN_NIXPKGS_LIB, or keep ../shared/nixpkgs-lib beside the checkout)");
        return;
    };
    // SAFETY: geteuid cannot fail.
    if !Path::new("/dev/fuse").exists() || unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED: the AspenFS unit test needs /dev/fuse and root, as the unit does");
        return;
    }
    let evaluated = evaluate(&lib, "fs-mounts").unwrap();
    let config = &evaluated["services"]["aspen-fs-default"]["serviceConfig"];
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("node");
    let mut node = Command::new(node_bin())
        .args(["--data-dir", data.to_str().unwrap(), "--bind", "127.0.0.1:0", "--init"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    struct KillOnDrop(std::process::Child);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(data.join("node.ticket").exists() && data.join("root.token").exists()) {
        assert!(Instant::now() < deadline, "the node wrote no ticket in time");
        assert!(node.try_wait().unwrap().is_none(), "the node exited");
        std::thread::sleep(Duration::from_millis(100));
    }
    let node = KillOnDrop(node);

    // What systemd would do: copy the credentials, and run each command with its argv.
    let credentials = dir.path().join("credentials");
    std::fs::create_dir(&credentials).unwrap();
    std::fs::copy(data.join("node.ticket"), credentials.join("ticket")).unwrap();
    std::fs::copy(data.join("root.token"), credentials.join("token")).unwrap();
    let point = dir.path().join("mnt/aspen");
    // Whatever happens, nothing stays mounted in the temporary directory (a daemon still
    // serving it sees its session end and exits).
    struct DetachOnDrop(PathBuf);
    impl Drop for DetachOnDrop {
        fn drop(&mut self) {
            while mounted_source(&self.0).is_some() {
                let path = std::ffi::CString::new(self.0.to_str().unwrap()).unwrap();
                // SAFETY: a valid NUL-terminated path.
                if unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) } != 0 {
                    break;
                }
            }
        }
    }
    let _detach = DetachOnDrop(point.clone());
    let argv = |key: &str| -> Vec<String> {
        exec_argv(config[key].as_str().unwrap(), &credentials)
            .into_iter()
            .map(|w| if w == "/mnt/aspen" { point.to_str().unwrap().to_string() } else { w })
            .collect()
    };
    let aspen = |args: &[&str]| {
        Command::new(aspen_bin())
            .arg("--ticket-file")
            .arg(data.join("node.ticket"))
            .arg("--token-file")
            .arg(data.join("root.token"))
            .args(args)
            .output()
            .unwrap()
    };
    let run = |key: &str| {
        let argv = argv(key);
        let out = Command::new(&argv[0]).args(&argv[1..]).output().unwrap();
        assert!(out.status.success(), "{key} {argv:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    let start = || {
        let argv = argv("ExecStart");
        assert_eq!(argv[0], "/aspen-package/bin/aspen");
        let child = Command::new(aspen_bin())
            .args(&argv[1..])
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while mounted_source(&point).is_none() {
            assert!(Instant::now() < deadline, "the prefix was not mounted in time");
            std::thread::sleep(Duration::from_millis(100));
        }
        child
    };
    let within = |what: &str, check: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !check() {
            assert!(Instant::now() < deadline, "{what}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };

    run("ExecStartPre");
    assert!(point.is_dir(), "ExecStartPre makes the mount point");
    let mut daemon = start();
    assert_eq!(mounted_source(&point).as_deref(), Some("aspenfs:fs/default/"));
    std::fs::write(point.join("hello.txt"), "written through the mount\n").unwrap();
    let get = aspen(&["kv", "get", "fs/default/hello.txt"]);
    assert!(get.status.success(), "{}", String::from_utf8_lossy(&get.stderr));
    assert!(
        get.stdout.windows(26).any(|w| w == b"written through the mount\n"),
        "the file is a key: {:?}",
        String::from_utf8_lossy(&get.stdout)
    );
    let put = aspen(&["kv", "put", "fs/default/from-kv.txt", "put as a key"]);
    assert!(put.status.success(), "{}", String::from_utf8_lossy(&put.stderr));
    within("the key put shows in the mount", &|| {
        std::fs::read_to_string(point.join("from-kv.txt")).is_ok_and(|t| t == "put as a key")
    });

    // Stopped the way systemd stops it: SIGTERM unmounts and exits 0, well within
    // TimeoutStopSec; ExecStopPost then has nothing to do.
    assert_eq!(config["TimeoutStopSec"], "30s");
    // SAFETY: a signal to our own child.
    unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
    let stopped = Instant::now();
    let status = loop {
        if let Some(status) = daemon.try_wait().unwrap() {
            break status;
        }
        assert!(stopped.elapsed() < Duration::from_secs(30), "no exit within TimeoutStopSec");
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut daemon.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(status.success(), "SIGTERM: {status}: {stderr}");
    assert_eq!(mounted_source(&point), None, "unmounted on SIGTERM");
    run("ExecStopPost");
    assert!(point.is_dir());

    // Killed: the kernel keeps the dead mount until ExecStopPost detaches it.
    let mut daemon = start();
    assert_eq!(std::fs::read_to_string(point.join("hello.txt")).unwrap(), "written through the mount\n");
    daemon.kill().unwrap();
    daemon.wait().unwrap();
    assert_eq!(mounted_source(&point).as_deref(), Some("aspenfs:fs/default/"), "a dead mount stays");
    let err = std::fs::read_dir(&point).map(drop).expect_err("a dead mount answers nothing");
    assert_eq!(err.raw_os_error(), Some(libc::ENOTCONN), "{err}");
    run("ExecStopPost");
    assert_eq!(mounted_source(&point), None, "ExecStopPost detaches the dead mount");
    assert!(point.is_dir());

    // Another file system at the mount point is not the unit's to unmount.
    let tmpfs = Command::new("mount").args(["-t", "tmpfs", "aspen-test-other"]).arg(&point).output().unwrap();
    if tmpfs.status.success() {
        run("ExecStopPost");
        assert_eq!(mounted_source(&point).as_deref(), Some("aspen-test-other"), "ExecStopPost left it alone");
        let out = Command::new("umount").arg(&point).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    } else {
        eprintln!("(no tmpfs mount here: {})", String::from_utf8_lossy(&tmpfs.stderr).trim());
    }
    drop(node);
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
        ("fs", &["machine"][..]),
        ("ci", &["node", "worker"][..]),
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
