//! The dogfood loop end to end: `dogfood/run.sh` on a small fixture repository
//! (`fixtures/dogfood-repo`, with its own `.aspen/ci.ncl`) while a client writes all along.
//!
//! Everything is real: `aspen cluster up` with three node processes, CI workers (shell and
//! nix, and vm in a QEMU microVM), `git push` through `git-remote-aspen`, `nix-build` and the
//! push of its closure to the cluster's cache, and `aspen cluster upgrade` rolling the nodes
//! onto the binary the pipeline released. One stand-in: the fixture's release job does not
//! compile Aspen (minutes of cargo); it strips the binary under test and appends its commit,
//! so each commit's release is a binary of its own (see the fixture's build.sh).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use aspen_client::Client;
use aspen_testkit::cluster_up::free_base_port;
use aspen_testkit::harness::aspen_bin;
use aspen_testkit::writer::{AckedWriter, assert_all_present};

/// The whole loop: start, push, a run of four small jobs, a cache push and three restarts.
const LOOP_LIMIT: Duration = Duration::from_secs(900);

fn workspace_root() -> PathBuf {
    aspen_core::golden::crate_dir(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

fn git(dir: &Path, args: &[&str]) {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "dogfood")
        .env("GIT_AUTHOR_EMAIL", "dogfood@example.invalid")
        .env("GIT_COMMITTER_NAME", "dogfood")
        .env("GIT_COMMITTER_EMAIL", "dogfood@example.invalid")
        .output()
        .unwrap();
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// The fixture repository, committed, with Aspen's own dogfood/release.nix.
fn fixture_repo(dir: &Path) {
    let root = workspace_root();
    copy_dir(&root.join("crates/aspen-cli/tests/fixtures/dogfood-repo"), dir);
    std::fs::create_dir_all(dir.join("dogfood")).unwrap();
    std::fs::copy(root.join("dogfood/release.nix"), dir.join("dogfood/release.nix")).unwrap();
    git(dir, &["init", "-q", "-b", "main"]);
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-q", "-m", "the fixture"]);
}

/// Stops what the loop left running (it runs with --keep so the test can check the
/// cluster afterwards): the pids in `<work>/pids`, then the script itself.
struct Loop {
    script: std::process::Child,
    work: PathBuf,
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = self.script.kill();
        let _ = self.script.wait();
        let pids: Vec<libc::pid_t> = std::fs::read_to_string(self.work.join("pids"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
        for sig in [libc::SIGTERM, libc::SIGKILL] {
            for pid in &pids {
                // SAFETY: kill(2) on processes the loop started for this test.
                unsafe {
                    libc::kill(*pid, sig);
                }
            }
            let deadline = Instant::now() + Duration::from_secs(30);
            // SAFETY: kill(2) with signal 0 only asks whether the process exists.
            while pids.iter().any(|p| unsafe { libc::kill(*p, 0) } == 0) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

fn aspen_json(ticket: &Path, args: &[&str]) -> serde_json::Value {
    let out = Command::new(aspen_bin()).arg("--json").args(args).env("ASPEN_TICKET_FILE", ticket).output().unwrap();
    assert!(out.status.success(), "aspen {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dogfood_loop_tests_releases_caches_and_rolls_the_cluster_while_a_client_writes() {
    if Command::new("nix-build").arg("--version").output().is_err() {
        eprintln!("SKIP: no nix-build (scripts/test.sh installs nix-bin)");
        return;
    }
    let Some(image) = aspen_testkit::vm::test_image().unwrap() else {
        return;
    };
    let scratch = tempfile::tempdir().unwrap();
    let repo = scratch.path().join("repo");
    fixture_repo(&repo);
    let work = scratch.path().join("work");
    let log_path = scratch.path().join("dogfood.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let bin_dir = aspen_bin().parent().unwrap().to_path_buf();
    let base = free_base_port(3).unwrap();
    let script = Command::new("bash")
        .arg(workspace_root().join("dogfood/run.sh"))
        .args(["--keep", "--repo"])
        .arg(&repo)
        .arg("--work")
        .arg(&work)
        .args(["--base-port", &base.to_string()])
        .env("DOGFOOD_BIN_DIR", &bin_dir)
        .env("DOGFOOD_VM_IMAGE", image.kernel.parent().unwrap())
        .env("DOGFOOD_TARGET_DIR", scratch.path().join("jobs-target"))
        .env("DOGFOOD_PASS_ENV", "ASPEN_FIXTURE_BIN")
        .env("DOGFOOD_RUN_LIMIT_SECS", "600")
        .env("ASPEN_FIXTURE_BIN", aspen_bin())
        .env_remove("ASPEN_TICKET")
        .env_remove("ASPEN_TICKET_FILE")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut lp = Loop { script, work: work.clone() };
    let output = || std::fs::read_to_string(&log_path).unwrap_or_default();

    // The client starts writing as soon as the cluster is up, and goes on until the end.
    let ticket = work.join("cluster/cluster.ticket");
    let deadline = Instant::now() + LOOP_LIMIT;
    while !ticket.is_file() {
        assert!(lp.script.try_wait().unwrap().is_none(), "the loop ended before the cluster was up:\n{}", output());
        assert!(Instant::now() < deadline, "no cluster within {LOOP_LIMIT:?}:\n{}", output());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let text = std::fs::read_to_string(&ticket).unwrap();
    let writer = AckedWriter::start(Client::from_ticket_str(&text).await.unwrap());
    let status = loop {
        if let Some(status) = lp.script.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the loop did not end within {LOOP_LIMIT:?}:\n{}", output());
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let out = output();
    assert!(status.success(), "dogfood/run.sh failed ({status}):\n{out}");
    eprintln!("dogfood/run.sh said:\n{out}");
    for step in
        ["1. a three-node cluster", "2. push", "3. the push runs", "4. the release", "5. the nodes roll", "6. summary"]
    {
        assert!(out.contains(&format!("== {step}")), "no step {step:?}:\n{out}");
    }

    // The run: every job succeeded, the release is a blob recorded with the pushed commit.
    let commit =
        String::from_utf8(Command::new("git").args(["rev-parse", "HEAD"]).current_dir(&repo).output().unwrap().stdout)
            .unwrap();
    let runs = aspen_json(&ticket, &["ci", "runs", "--repo", "aspen"]);
    let run = runs[0]["run"].as_u64().unwrap();
    let shown = aspen_json(&ticket, &["ci", "show", &run.to_string()]);
    assert_eq!(shown["state"], "success", "{shown}");
    assert_eq!(shown["commit"], commit.trim());
    let jobs = shown["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 4, "{shown}");
    assert!(jobs.iter().all(|j| j["state"] == "success"), "{shown}");
    let release = jobs.iter().find(|j| j["name"] == "release").unwrap();
    let blob = release["artifacts"][0]["blob"].as_str().unwrap().to_string();

    // Every node runs exactly that binary.
    let builds = aspen_json(&ticket, &["cluster", "builds"]);
    let hashes: Vec<&str> =
        builds["nodes"].as_array().unwrap().iter().map(|n| n["exe_blake3"].as_str().unwrap()).collect();
    assert_eq!(hashes, vec![blob.as_str(); 3], "{builds}");
    assert!(out.contains("every node runs"), "{out}");

    // The release is in the cluster's cache as a store path, with the binary in its closure.
    let cached: Vec<&str> = out.lines().filter_map(|l| l.trim().strip_prefix("in the cache: ")).collect();
    assert!(!cached.is_empty(), "no store path reached the cache:\n{out}");
    let release_path = cached[0].split_whitespace().next().unwrap();
    let release_text = std::fs::read_to_string(release_path).unwrap();
    assert!(release_text.contains(&format!("commit={}", commit.trim())), "{release_text}");
    let binary = release_text.lines().find_map(|l| l.strip_prefix("binary=")).unwrap();
    let hash = &Path::new(binary).file_name().unwrap().to_str().unwrap()[..32];
    let narinfo = Command::new("curl")
        .args(["-fsS", &format!("http://127.0.0.1:{base}/dogfood/{hash}.narinfo")])
        .output()
        .unwrap();
    let narinfo = String::from_utf8_lossy(&narinfo.stdout);
    assert!(narinfo.contains(&format!("StorePath: {binary}")), "the binary is in the cache: {narinfo}");
    let vm_log = String::from_utf8(
        Command::new(aspen_bin())
            .args(["ci", "logs", &run.to_string(), "vm-check"])
            .env("ASPEN_TICKET_FILE", &ticket)
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert!(vm_log.contains("checks passed on"), "the vm job ran the checks in the guest: {vm_log}");

    // Not one acknowledged write was lost, and writes went on to the end.
    let acked_before = writer.acked();
    writer.acked_at_least(acked_before + 10).await;
    let (acked, reads) = writer.finish().await;
    assert!(reads > 0 && !acked.is_empty());
    let client = Client::from_ticket_str(&text).await.unwrap();
    assert_all_present(&client, &acked).await;
    client.close().await;
    drop(lp);
}
