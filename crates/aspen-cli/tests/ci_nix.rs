//! A nix job through CI whose output the real `nix` then substitutes from the cluster's cache,
//! all with real processes: three nodes (one serving the cache over HTTP), a `git push`
//! through `git-remote-aspen` of a repository whose `.aspen/ci.ncl` has a nix job with
//! `cache_push`, an `aspen ci worker --executors nix --cache NAME` process that builds it with
//! `nix-build` and pushes the closure, and `nix copy --from http://…` into a fresh store that
//! checks the cache's signatures.
//!
//! As in the cache's own tests (crates/aspen-cache/tests/nix_cache.rs), the job builds into the
//! host's store a derivation that needs no nixpkgs (the builder is the host's `/bin/sh`), with
//! a nonce of its own so every run builds anew, and every other store is a chroot store under
//! the test's temp dir. The worker's nix settings (`NIX_CONFIG`: no substituters) reach the
//! job's `nix-build`, so the build asks no outside cache.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use aspen_ci::CiClient;
use aspen_ci::records::State;
use aspen_core::capability::Capability;
use aspen_testkit::git::GitEnv;
use aspen_testkit::harness::TestCluster;

/// The cache the worker pushes to.
const CACHE: &str = "ci-out";
/// Generous bound for the run: a checkout and two tiny builds.
const RUN_BOUND: Duration = Duration::from_secs(300);

/// The settings the cache tests give nix: no outside substituters (the build is hermetic),
/// no narinfo remembered between commands (this machine pushes and substitutes alike), and
/// root building in the store directly.
const NIX_CONFIG: &str = "substituters =
narinfo-cache-positive-ttl = 0
narinfo-cache-negative-ttl = 0
experimental-features = nix-command
sandbox = false
build-users-group =";

const PIPELINE: &str = r#"{ jobs = { hello = {
  executor = 'nix,
  build = "default.nix",
  cache_push = true,
  timeout_secs = 600,
} } }
"#;

/// Two paths: `hello` refers to `greeting`, so the push sends a closure, references first.
fn default_nix(nonce: &str) -> String {
    format!(
        r#"let
  mk = name: script: builtins.derivation {{
    inherit name;
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" script ];
    PATH = "/usr/bin:/bin";
  }};
  greeting = mk "aspen-ci-greeting" ''
    mkdir $out
    echo "greetings from {nonce}" > $out/text
  '';
in mk "aspen-ci-hello" ''
  mkdir $out
  echo "hello from {nonce}" > $out/hello
  echo ${{greeting}} > $out/greeting-path
''
"#
    )
}

fn nix_available() -> bool {
    Command::new("nix-build").arg("--version").output().is_ok_and(|o| o.status.success())
}

fn bin_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_git-remote-aspen")).parent().expect("bin dir").to_path_buf()
}

/// `aspen --ticket … --token … ARGS`.
fn aspen(git: &GitEnv, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_aspen"))
        .args(["--ticket", git.ticket(), "--token", git.token()])
        .args(args)
        .env_remove("ASPEN_TICKET_FILE")
        .env_remove("ASPEN_TOKEN_FILE")
        .stdin(Stdio::null())
        .output()
        .expect("run aspen")
}

fn aspen_ok(git: &GitEnv, args: &[&str]) -> String {
    let out = aspen(git, args);
    assert!(out.status.success(), "aspen {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8")
}

/// A process killed and waited for when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `nix copy --from URL --to STORE PATH`, with `home` as HOME (nix keeps its narinfo cache there).
fn nix_copy(home: &Path, url: &str, store: &Path, key: Option<&str>, netrc: &Path, path: &str) -> Output {
    let mut cmd = Command::new("nix");
    cmd.env("NIX_CONFIG", NIX_CONFIG).env("HOME", home).env_remove("XDG_CACHE_HOME");
    cmd.arg("copy").arg("--from").arg(url).arg("--to").arg(store);
    if let Some(key) = key {
        cmd.args(["--option", "trusted-public-keys", key]);
    }
    cmd.arg("--option").arg("netrc-file").arg(netrc).arg(path);
    cmd.output().expect("run nix copy")
}

/// An `aspen ci worker --executors nix` with the tests' nix settings, working under `dir`
/// with `home` as HOME, and `extra` flags; returns it and its log file.
fn nix_worker(git: &GitEnv, dir: &Path, home: &Path, extra: &[&str]) -> (Killed, PathBuf) {
    let path = dir.join("worker.log");
    let log = std::fs::File::create(&path).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_aspen"))
        .args(["--ticket", git.ticket(), "--token", git.token(), "ci", "worker", "--executors", "nix"])
        .args(extra)
        .arg("--work-dir")
        .arg(dir.join("worker"))
        .env("NIX_CONFIG", NIX_CONFIG)
        .env("HOME", home)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start the worker");
    (Killed(child), path)
}

/// The first run of `repo` once it ended; panics with the worker's log past [`RUN_BOUND`].
async fn ended_run(ci: &CiClient, repo: &str, worker_log: impl Fn() -> String) -> aspen_ci::protocol::RunInfo {
    tokio::time::timeout(RUN_BOUND, async {
        loop {
            if let Some(r) = ci.runs(Some(repo), None, 1).await.unwrap().into_iter().next()
                && r.run.state.is_final()
            {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no run of {repo} ended within {RUN_BOUND:?}\nworker log:\n{}", worker_log()))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_nix_job_pushes_its_closure_and_nix_substitutes_it_from_the_cache() {
    if !nix_available() {
        eprintln!("SKIPPED: no nix-build on PATH (scripts/test.sh installs nix-bin)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // Node 1 serves the cache over HTTP: on loopback a free port, in a namespace of its own
    // every port is free.
    let gateway = std::sync::Mutex::new(None);
    let c = TestCluster::start_each(3, |i, node: SocketAddr| {
        if i != 1 {
            return Vec::new();
        }
        let addr = if node.ip().is_loopback() {
            std::net::TcpListener::bind((node.ip(), 0)).unwrap().local_addr().unwrap()
        } else {
            SocketAddr::new(node.ip(), 8380)
        };
        *gateway.lock().unwrap() = Some(addr);
        vec!["--cache-http-listen".into(), addr.to_string()]
    })
    .await;
    let gateway = gateway.into_inner().unwrap().expect("a gateway");
    let git = GitEnv::new(&c, bin_dir());

    aspen_ok(&git, &["cache", "create", CACHE]);
    let key = aspen_ok(&git, &["cache", "key", "show", CACHE]).trim().to_string();
    assert!(key.starts_with(&format!("{CACHE}-1:")), "{key}");
    aspen_ok(&git, &["forge", "repo", "create", "t/nix"]);
    aspen_ok(&git, &["ci", "enable", "t/nix"]);

    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let (_worker, worker_log) = nix_worker(&git, dir.path(), &home, &["--id", "nix1", "--cache", CACHE]);
    let worker_log = || std::fs::read_to_string(&worker_log).unwrap_or_default();

    let nonce = format!("aspen-ci-nix-{}-{}", std::process::id(), aspen_net::now_ms());
    let _repo = git.push_new_repo("t/nix", &[(".aspen/ci.ncl", PIPELINE), ("default.nix", &default_nix(&nonce))]);

    // The push starts a run; it ends within the bound.
    let ci = CiClient::new(&c.client().await);
    let ended = ended_run(&ci, "t/nix", worker_log).await;
    let run = ended.number.to_string();
    let job_log = aspen_ok(&git, &["ci", "logs", &run, "hello"]);
    assert_eq!(ended.run.state, State::Success, "{ended:?}\njob log:\n{job_log}\nworker log:\n{}", worker_log());
    assert!(
        job_log.contains("pushed 2 of 2 paths") && job_log.contains(&format!("to cache {CACHE}")),
        "the job's log tells of the push: {job_log}"
    );
    assert!(!job_log.contains("cache.nixos.org"), "the build asked no outside cache: {job_log}");
    let out = job_log
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("/nix/store/") && l.ends_with("-aspen-ci-hello"))
        .unwrap_or_else(|| panic!("nix-build printed its output path: {job_log}"))
        .to_string();

    // The real nix substitutes it over HTTP into a fresh store, checking the cache's
    // signatures: refused without the key, taken with it.
    let url = format!("http://{gateway}/{CACHE}");
    let reader = c.token_with(vec![Capability::App {
        app: "cache".into(),
        right: "read".into(),
        scope: CACHE.as_bytes().to_vec(),
    }]);
    let netrc = dir.path().join("netrc");
    std::fs::write(&netrc, format!("default login aspen password {}\n", reader.encode())).unwrap();
    let unsigned = nix_copy(&home, &url, &dir.path().join("no-key"), None, &netrc, &out);
    let err = String::from_utf8_lossy(&unsigned.stderr);
    assert!(!unsigned.status.success() && err.contains("lacks a valid signature"), "without the key: {err}");
    let fresh = dir.path().join("fresh");
    let copied = nix_copy(&home, &url, &fresh, Some(&key), &netrc, &out);
    assert!(copied.status.success(), "nix copy --from {url}: {}", String::from_utf8_lossy(&copied.stderr));
    let in_fresh = |path: &str| fresh.join(path.trim_start_matches('/'));
    let hello = std::fs::read_to_string(in_fresh(&out).join("hello")).expect("the substituted output");
    assert_eq!(hello, format!("hello from {nonce}\n"));
    let greeting = std::fs::read_to_string(in_fresh(&out).join("greeting-path")).unwrap().trim().to_string();
    let text = std::fs::read_to_string(in_fresh(&greeting).join("text")).expect("its reference came along");
    assert_eq!(text, format!("greetings from {nonce}\n"));

    // The build's outputs and derivations leave the host's store again (nothing roots them).
    let store = |args: &[&str]| Command::new("nix-store").env("NIX_CONFIG", NIX_CONFIG).args(args).output();
    let derivers =
        store(&["--query", "--deriver", &out, &greeting]).map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
    let mut built = vec!["--delete", &out, &greeting];
    let derivers = derivers.unwrap_or_default();
    built.extend(derivers.lines().filter(|l| l.ends_with(".drv")));
    let _ = store(&built);
}

/// A flake whose `checks.<system>` has two checks (each with the nonce, so each run builds
/// anew), and nothing else: no inputs, so nix evaluates it offline.
fn flake_nix(nonce: &str) -> String {
    format!(
        r#"{{
  outputs = {{ self }}: let
    system = "x86_64-linux";
    check = name: builtins.derivation {{
      inherit name system;
      builder = "/bin/sh";
      args = [ "-c" "echo {nonce} > $out" ];
    }};
  in {{
    checks.${{system}} = {{ fmt = check "aspen-ci-fmt"; unit = check "aspen-ci-unit"; }};
  }};
}}
"#
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn flake_checks_become_one_job_per_check() {
    if !nix_available() || std::env::consts::ARCH != "x86_64" {
        eprintln!("SKIPPED: needs nix on PATH (scripts/test.sh installs nix-bin) on x86_64");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let c = TestCluster::start(3).await;
    let git = GitEnv::new(&c, bin_dir());
    aspen_ok(&git, &["forge", "repo", "create", "t/flake"]);
    aspen_ok(&git, &["ci", "enable", "t/flake"]);
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let (_worker, worker_log) = nix_worker(&git, dir.path(), &home, &["--id", "flake1", "--capacity", "2"]);
    let worker_log = || std::fs::read_to_string(&worker_log).unwrap_or_default();
    let pipeline = r#"{ jobs = {
  checks = { executor = 'nix, flake_checks = true },
  after = { executor = 'nix, build = ".#checks.x86_64-linux.fmt", needs = ["checks"] },
} }
"#;
    let nonce = format!("aspen-ci-flake-{}-{}", std::process::id(), aspen_net::now_ms());
    let _repo = git.push_new_repo("t/flake", &[(".aspen/ci.ncl", pipeline), ("flake.nix", &flake_nix(&nonce))]);

    let ci = CiClient::new(&c.client().await);
    let ended = ended_run(&ci, "t/flake", worker_log).await;
    let names: Vec<&str> = ended.jobs.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["after", "checks.fmt", "checks.unit"], "{ended:?}\nworker log:\n{}", worker_log());
    let run = ended.number.to_string();
    let fmt_log = aspen_ok(&git, &["ci", "logs", &run, "checks.fmt"]);
    assert_eq!(ended.run.state, State::Success, "{ended:?}\ncheck log:\n{fmt_log}\nworker log:\n{}", worker_log());
    let after = &ended.jobs.iter().find(|(n, _)| n == "after").unwrap().1;
    assert_eq!(after.needs, ["checks.fmt", "checks.unit"], "what needed the job needs every check");
    let mut outputs = Vec::new();
    for check in ["fmt", "unit"] {
        let job_log = aspen_ok(&git, &["ci", "logs", &run, &format!("checks.{check}")]);
        // `nix build --json`: what it built, and its outputs.
        let built: serde_json::Value = job_log
            .lines()
            .find(|l| l.starts_with("[{"))
            .and_then(|l| serde_json::from_str(l).ok())
            .unwrap_or_else(|| panic!("nix build printed what it built: {job_log}"));
        let out = built[0]["outputs"]["out"].as_str().expect("an output path").to_string();
        assert!(out.ends_with(&format!("-aspen-ci-{check}")), "{out}");
        assert_eq!(std::fs::read_to_string(&out).unwrap(), format!("{nonce}\n"));
        outputs.push(out);
    }

    // The checks' outputs leave the host's store again.
    let store = |args: &[&str]| Command::new("nix-store").env("NIX_CONFIG", NIX_CONFIG).args(args).output();
    let derivers = store(&["--query", "--deriver", &outputs[0], &outputs[1]])
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let mut built: Vec<&str> = vec!["--delete", &outputs[0], &outputs[1]];
    built.extend(derivers.lines().filter(|l| l.ends_with(".drv")));
    let _ = store(&built);
}
