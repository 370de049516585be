//! The `aspen` binary end to end: `cluster up` in a scratch directory, then the documented
//! commands against it, checking what a user sees (stdout, stderr, exit status).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Bound on every wait in this test.
const PATIENCE: Duration = Duration::from_secs(90);

fn aspen() -> &'static str {
    env!("CARGO_BIN_EXE_aspen")
}

/// `aspen ARGS...` run in `dir`, with no ticket from the environment.
fn command(dir: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(aspen());
    cmd.args(args)
        .current_dir(dir)
        .env_remove("ASPEN_TICKET")
        .env_remove("ASPEN_TICKET_FILE")
        .env_remove("ASPEN_TOKEN")
        .env_remove("ASPEN_TOKEN_FILE")
        .env_remove("ASPEN_IDENTITY_FILE");
    cmd
}

fn run(dir: &Path, args: &[&str]) -> Output {
    command(dir, args).stdin(Stdio::null()).output().expect("run aspen")
}

fn run_with_stdin(dir: &Path, args: &[&str], input: &[u8]) -> Output {
    use std::io::Write;
    let mut child = command(dir, args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn aspen");
    child.stdin.take().expect("stdin").write_all(input).expect("write stdin");
    child.wait_with_output().expect("wait aspen")
}

/// Runs a command that must succeed; returns its stdout.
fn ok(dir: &Path, args: &[&str]) -> String {
    let out = run(dir, args);
    assert!(out.status.success(), "{args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8 stdout")
}

/// Runs a command that must fail with status 1; returns its stderr.
fn fails(dir: &Path, args: &[&str]) -> String {
    let out = run(dir, args);
    assert_eq!(out.status.code(), Some(1), "{args:?}: {}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8(out.stderr).expect("utf-8 stderr")
}

fn json(dir: &Path, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    serde_json::from_str(&ok(dir, &all)).expect("valid JSON")
}

fn signal(child: &Child, sig: libc::c_int) {
    let pid = libc::pid_t::try_from(child.id()).expect("pid");
    // SAFETY: signalling a child we spawned and have not reaped.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// Waits for `child` to exit, up to `limit`.
fn wait_exit(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `aspen cluster up` running in a scratch directory; stopped (SIGINT) on drop.
struct ClusterUp {
    child: Child,
    dir: tempfile::TempDir,
}

impl ClusterUp {
    fn start() -> ClusterUp {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = aspen_testkit::cluster_up::free_base_port(3).expect("three free consecutive ports").to_string();
        let log = std::fs::File::create(dir.path().join("up.log")).expect("log");
        let child = command(dir.path(), &["cluster", "up", "--base-port", &port])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn cluster up");
        let up = ClusterUp { child, dir };
        let ticket = up.ticket_file();
        wait_until("cluster up writes the cluster ticket", || ticket.is_file());
        up
    }

    fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn ticket_file(&self) -> PathBuf {
        self.dir().join(".aspen/cluster/cluster.ticket")
    }

    /// Stops the cluster as Ctrl-C would and returns whether `cluster up` exited cleanly.
    fn stop(&mut self) -> bool {
        signal(&self.child, libc::SIGINT);
        let status = wait_exit(&mut self.child, Duration::from_secs(30));
        status.is_some_and(|s| s.success())
    }
}

impl Drop for ClusterUp {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() && !self.stop() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[test]
fn the_documented_commands_work_against_a_local_cluster() {
    let mut up = ClusterUp::start();
    let dir = up.dir().to_path_buf();

    // Put and get, through the ticket `cluster up` left in ./.aspen/cluster.
    assert!(ok(&dir, &["kv", "put", "app/config", "hello"]).starts_with("OK revision="));
    assert_eq!(ok(&dir, &["kv", "get", "app/config"]), "hello", "raw bytes, no newline off a terminal");
    let got = json(&dir, &["kv", "get", "app/config"]);
    assert_eq!(
        (got["key"].as_str(), got["value"].as_str(), got["version"].as_u64()),
        (Some("app/config"), Some("hello"), Some(1))
    );
    let missing = fails(&dir, &["kv", "get", "app/missing"]);
    assert!(missing.contains("error: key not found: app/missing"), "{missing}");

    // Values from stdin and binary values.
    let out = run_with_stdin(&dir, &["kv", "put", "app/bin"], &[0xff, 0x00, b'x']);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(run(&dir, &["kv", "get", "app/bin"]).stdout, vec![0xff, 0x00, b'x']);
    assert_eq!(json(&dir, &["kv", "get", "app/bin"])["value_base64"], "/wB4");

    // Scan pages and says how to continue.
    let page = run(&dir, &["kv", "scan", "app/", "--limit", "1"]);
    assert_eq!(String::from_utf8_lossy(&page.stdout), "app/bin=\\xff\\x00x\n");
    assert!(String::from_utf8_lossy(&page.stderr).contains("--from app/config"));
    assert_eq!(ok(&dir, &["kv", "scan", "app/", "--from", "app/config"]), "app/config=hello\n");
    assert_eq!(ok(&dir, &["kv", "scan", "app/", "--keys-only"]), "app/bin\napp/config\n");
    // Eight 900 KB values do not fit one answer: the scan reads them in pages, at one revision.
    let big = vec![b'v'; 900_000];
    for i in 0..8 {
        let out = run_with_stdin(&dir, &["kv", "put", &format!("big/{i}")], &big);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let all = ok(&dir, &["kv", "scan", "big/", "--keys-only"]);
    assert_eq!(all.lines().count(), 8, "{all}");
    assert_eq!(json(&dir, &["kv", "scan", "big/"])["kvs"].as_array().map(Vec::len), Some(8));
    ok(&dir, &["kv", "delete", "--prefix", "big/"]);

    // Compare-and-swap: exit status 1 when the compare fails.
    assert!(ok(&dir, &["kv", "cas", "app/config", "--expect", "hello", "world"]).starts_with("OK"));
    let failed = fails(&dir, &["kv", "cas", "app/config", "--expect", "hello", "again"]);
    assert!(failed.contains("compare failed") && failed.contains("world"), "{failed}");
    assert!(ok(&dir, &["kv", "cas", "app/new", "--expect-absent", "first"]).starts_with("OK"));

    // Transactions.
    let rev = json(&dir, &["kv", "get", "app/config"])["mod_revision"].as_u64().expect("mod_revision");
    let compare = format!("mod_rev(app/config) == {rev}");
    let txn = ok(&dir, &["kv", "txn", "--if", &compare, "--then", "put app/x 1", "--else", "get app/x"]);
    assert!(txn.starts_with("SUCCEEDED"), "{txn}");
    let txn =
        ok(&dir, &["kv", "txn", "--if", "mod_rev(app/config) == 1", "--then", "put app/x 2", "--else", "get app/x"]);
    assert!(txn.starts_with("FAILED") && txn.contains("get app/x=1"), "{txn}");
    let bad = fails(&dir, &["kv", "txn", "--if", "size(app/x) == 1"]);
    assert!(bad.contains("unknown field `size`"), "{bad}");

    // Leases: keys go with their lease.
    let lease = json(&dir, &["lease", "grant", "30s"])["id"].as_u64().expect("lease id").to_string();
    ok(&dir, &["kv", "put", "--lease", &lease, "app/leased", "v"]);
    assert!(ok(&dir, &["lease", "keepalive", &lease]).contains("kept alive"));
    assert!(ok(&dir, &["lease", "list"]).contains(&format!("{lease} ttl=30s")));
    assert!(ok(&dir, &["lease", "revoke", &lease]).contains("1 keys deleted"));
    fails(&dir, &["kv", "get", "app/leased"]);
    let too_short = fails(&dir, &["lease", "grant", "10ms"]);
    assert!(too_short.contains("lease TTL 10 ms is outside"), "{too_short}");

    // Watch replays history from a revision.
    let watch_out = dir.join("watch.out");
    let mut watch = command(&dir, &["watch", "app/", "--from-revision", "1"])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&watch_out).expect("watch out"))
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn watch");
    ok(&dir, &["kv", "delete", "app/x"]);
    wait_until("the watch shows the delete", || {
        std::fs::read_to_string(&watch_out).is_ok_and(|s| s.contains("DELETE app/x rev="))
    });
    let events = std::fs::read_to_string(&watch_out).expect("watch output");
    assert!(events.starts_with("PUT app/config=hello rev=1\n"), "{events}");
    signal(&watch, libc::SIGINT);
    assert!(wait_exit(&mut watch, Duration::from_secs(10)).is_some_and(|s| s.success()));

    // Deleting a prefix.
    assert!(ok(&dir, &["kv", "delete", "--prefix", "app/"]).starts_with("deleted 3 "));

    // Cluster administration.
    let status = json(&dir, &["cluster", "status"]);
    assert!(status["leader"].as_u64().is_some(), "{status}");
    assert_eq!(status["members"].as_array().map(Vec::len), Some(3));
    assert!(ok(&dir, &["cluster", "ticket"]).starts_with("aspen"));

    // A short benchmark runs and reports.
    let bench = ok(&dir, &["bench", "kv", "--clients", "4", "--seconds", "1", "--connections", "2"]);
    assert!(bench.starts_with("op=put clients=4 ops_per_s="), "{bench}");
    assert!(bench.contains("errors=0"), "{bench}");

    // A command runs under a lock, with its fencing token; tokens grow.
    let first: u64 = ok(&dir, &["lock", "deploy"]).trim().parse().expect("a fencing token");
    let out = ok(&dir, &["lock", "deploy", "--", "sh", "-c", "echo token=$ASPEN_LOCK_TOKEN"]);
    let second: u64 = out.trim().strip_prefix("token=").and_then(|t| t.parse().ok()).expect("token in the env");
    assert!(second > first, "{first} then {second}");
    let failed = fails(&dir, &["lock", "deploy", "--", "false"]);
    assert!(failed.contains("the command exited with"), "{failed}");
    assert!(ok(&dir, &["lock", "deploy"]).trim().parse::<u64>().is_ok(), "the lock was released after the failure");

    // Tokens: the local ticket carries the root token; narrower ones are made from it,
    // allow only their prefixes, and stop working once revoked.
    let ticket_mode = std::fs::metadata(up.ticket_file()).expect("ticket").permissions();
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&ticket_mode) & 0o777, 0o600, "the ticket holds a secret");
    let token = ok(&dir, &["token", "create", "--read", "jobs/", "--write", "jobs/", "--ttl", "1h"]).trim().to_string();
    assert!(token.starts_with("aspentok"), "{token}");
    let shown = ok(&dir, &["token", "inspect", &token]);
    assert!(shown.contains("read \"jobs/\"") && shown.contains("write \"jobs/\""), "{shown}");
    assert!(ok(&dir, &["--token", &token, "kv", "put", "jobs/1", "x"]).starts_with("OK"));
    let denied = fails(&dir, &["--token", &token, "kv", "put", "jobs2/1", "x"]);
    assert!(denied.contains("permission denied") && denied.contains("write \"jobs2/1\""), "{denied}");
    let denied = fails(&dir, &["--token", &token, "cluster", "snapshot"]);
    assert!(denied.contains("permission denied"), "{denied}");
    let widen = fails(&dir, &["--token", &token, "token", "create", "--read", "job", "--ttl", "1m"]);
    assert!(widen.contains("grants more than its parent"), "{widen}");
    let garbage = fails(&dir, &["--token", "aspentokxyz", "kv", "get", "jobs/1"]);
    assert!(garbage.contains("bad token in --token"), "{garbage}");
    ok(&dir, &["token", "revoke", &token]);
    wait_until("the revoked token is refused", || {
        let out = run(&dir, &["--token", &token, "kv", "get", "jobs/1"]);
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("revoked")
    });

    // Blobs: a file in, the same bytes out (written only once verified), bad hashes named.
    let blob: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(dir.join("in.bin"), &blob).expect("write in.bin");
    let hash = ok(&dir, &["blob", "add", "in.bin"]).trim().to_string();
    assert_eq!(hash.len(), 64, "{hash}");
    assert_eq!(run_with_stdin(&dir, &["blob", "add", "-"], &blob).stdout, format!("{hash}\n").into_bytes());
    ok(&dir, &["blob", "get", &hash, "-o", "out.bin"]);
    assert_eq!(std::fs::read(dir.join("out.bin")).expect("out.bin"), blob);
    assert_eq!(run(&dir, &["blob", "get", &hash]).stdout, blob);
    assert_eq!(ok(&dir, &["blob", "has", &hash]), "present, 300000 bytes\n");
    assert!(ok(&dir, &["blob", "list"]).contains(&format!("{hash} 300000")));
    let bad = String::from_utf8_lossy(&run(&dir, &["blob", "get", "xyz"]).stderr).into_owned();
    assert!(bad.contains("not hex"), "{bad}");
    let absent = fails(&dir, &["blob", "get", &"ab".repeat(32), "-o", "nothing.bin"]);
    assert!(absent.contains("no member provided it"), "{absent}");
    assert!(!dir.join("nothing.bin").exists(), "a failed get leaves no file");
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .expect("read dir")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("aspen-partial"))
        .collect();
    assert!(leftovers.is_empty(), "scratch files left behind: {leftovers:?}");
    // Pins and status: `cluster up` runs three nodes, and an add waits for a majority (a
    // read from the third node would have fetched it there too).
    let status = ok(&dir, &["blob", "status", &hash]);
    assert!(status.matches("holds it (300000 bytes)").count() >= 2, "{status}");
    assert_eq!(status.lines().count(), 3, "one line per member: {status}");
    ok(&dir, &["blob", "pin", "release/v1", &hash]);
    assert_eq!(ok(&dir, &["blob", "pins"]), format!("release/v1 {hash}\n"));
    let bad_name = fails(&dir, &["blob", "pin", "no spaces", &hash]);
    assert!(bad_name.contains("pin name \"no spaces\""), "{bad_name}");
    let unknown = fails(&dir, &["blob", "pin", "ghost", &"cd".repeat(32)]);
    assert!(unknown.contains("no member provided it"), "{unknown}");
    ok(&dir, &["blob", "unpin", "release/v1"]);
    let again = fails(&dir, &["blob", "unpin", "release/v1"]);
    assert!(again.contains("no pin named \"release/v1\""), "{again}");
    assert_eq!(ok(&dir, &["blob", "pins"]), "");

    // An expected hash, a batch, a range, pins by prefix, and a token scoped to some pins.
    let wrong = fails(&dir, &["blob", "add", "--expect", &"ab".repeat(32), "in.bin"]);
    assert!(wrong.contains("not to the expected"), "{wrong}");
    assert_eq!(ok(&dir, &["blob", "add", "--expect", &hash, "in.bin"]).trim(), hash);
    std::fs::write(dir.join("a.txt"), "first").expect("a.txt");
    std::fs::write(dir.join("b.txt"), "second").expect("b.txt");
    let batch = ok(&dir, &["blob", "add", "a.txt", "b.txt"]);
    let hashes: Vec<&str> = batch.lines().collect();
    assert_eq!(hashes.len(), 2, "{batch}");
    assert_eq!(run(&dir, &["blob", "get", &hash, "--range", "1000:5"]).stdout, &blob[1000..1005]);
    ok(&dir, &["blob", "pin", "team-a/first", hashes[0]]);
    ok(&dir, &["blob", "pin", "team-b/second", hashes[1]]);
    assert_eq!(ok(&dir, &["blob", "pins", "--prefix", "team-a/"]), format!("team-a/first {}\n", hashes[0]));
    let scoped = ok(&dir, &["token", "create", "--app", "blob:read:team-a/", "--app", "blob:write:team-a/"]);
    let scoped = scoped.trim();
    assert_eq!(run(&dir, &["--token", scoped, "blob", "get", hashes[0]]).stdout, b"first");
    let denied = fails(&dir, &["--token", scoped, "blob", "get", hashes[1]]);
    assert!(denied.contains("permission denied"), "{denied}");
    let denied = fails(&dir, &["--token", scoped, "blob", "unpin", "team-b/second"]);
    assert!(denied.contains("permission denied"), "{denied}");
    let unknown_app = fails(&dir, &["token", "create", "--app", "wiki:edit:pages/"]);
    assert!(unknown_app.contains("serves no app \"wiki\""), "{unknown_app}");
    let unknown_right = fails(&dir, &["token", "create", "--app", "blob:push:x/"]);
    assert!(unknown_right.contains("no right \"push\""), "{unknown_right}");

    // Without a ticket, the error says how to give one.
    let elsewhere = tempfile::tempdir().expect("tempdir");
    let none = fails(elsewhere.path(), &["kv", "get", "k"]);
    assert!(none.contains("no cluster ticket") && none.contains("ASPEN_TICKET"), "{none}");

    assert!(up.stop(), "cluster up must exit 0 after Ctrl-C");
    assert!(std::fs::read_dir(dir.join(".aspen/cluster")).is_ok());
}
