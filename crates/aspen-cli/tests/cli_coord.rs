//! The coordination commands end to end (`aspen rwlock`, `semaphore`, `election`, `counter`,
//! `sequence`): the real binary against a local cluster started with `aspen cluster up`,
//! checking what a user sees (stdout, stderr, exit status).
//!
//! Nothing here waits a fixed time. A command run under a hold appends `start TAG` to a log
//! once it holds, then holds until the test closes its stdin, then appends `end TAG`; so the
//! test decides when each hold ends, and checks who held when from the log. Every wait is
//! bounded by [`PATIENCE`]. Every process is started in its own process group and killed
//! with it when the test ends, passes or panics.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// Bound on every wait in these tests.
const PATIENCE: Duration = Duration::from_secs(90);
/// How often a wait looks again.
const POLL: Duration = Duration::from_millis(50);
/// Attempts to start a cluster, each on other ports (another test may take ours).
const CLUSTER_START_ATTEMPTS: usize = 5;

/// `aspen ARGS...` in `dir`, with no ticket, token or identity from this environment.
fn aspen(dir: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_aspen"));
    cmd.args(args).current_dir(dir).stdin(Stdio::null());
    for var in ["ASPEN_TICKET", "ASPEN_TICKET_FILE", "ASPEN_TOKEN", "ASPEN_TOKEN_FILE", "ASPEN_IDENTITY_FILE"] {
        cmd.env_remove(var);
    }
    cmd
}

fn output(dir: &Path, args: &[&str]) -> Output {
    aspen(dir, args).output().expect("run aspen")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs a command that must succeed; returns its stdout.
fn succeeds(dir: &Path, args: &[&str]) -> String {
    let out = output(dir, args);
    assert!(out.status.success(), "{args:?} failed ({}): {}", out.status, stderr(&out));
    String::from_utf8(out.stdout).expect("utf-8 stdout")
}

/// Runs a command that must exit with `code`; returns its output.
fn exits_with(dir: &Path, code: i32, args: &[&str]) -> Output {
    let out = output(dir, args);
    assert_eq!(out.status.code(), Some(code), "{args:?}: {}", stderr(&out));
    out
}

fn json(dir: &Path, args: &[&str]) -> serde_json::Value {
    let all: Vec<&str> = ["--json"].iter().chain(args).copied().collect();
    serde_json::from_str(&succeeds(dir, &all)).expect("valid JSON")
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(POLL);
    }
}

/// A process started by a test, leading its own process group; on drop, the group is
/// killed unless the process already exited.
struct Spawned {
    child: Child,
    stdin: Option<ChildStdin>,
    exited: Option<ExitStatus>,
}

impl Spawned {
    fn start(mut cmd: Command) -> Spawned {
        let mut child = cmd.process_group(0).spawn().expect("spawn aspen");
        let stdin = child.stdin.take();
        Spawned { child, stdin, exited: None }
    }

    fn signal(&self, signal: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid");
        // SAFETY: kill(2) on the process group of a child we spawned and have not reaped.
        unsafe {
            libc::kill(-pid, signal);
        }
    }

    fn try_exited(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().expect("try_wait");
        }
        self.exited
    }

    /// Waits (bounded) for the process to exit.
    fn exit_status(&mut self, what: &str) -> ExitStatus {
        let mut status = None;
        wait_until(what, || {
            status = self.try_exited();
            status.is_some()
        });
        status.expect("exited")
    }

    /// Ends a hold: the command under it reads to the end of its stdin.
    fn close_stdin(&mut self) {
        self.stdin = None;
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        self.stdin = None;
        if self.try_exited().is_none() {
            self.signal(libc::SIGKILL);
            let _ = self.child.wait();
        }
    }
}

/// `aspen cluster up` in a scratch directory; stopped with Ctrl-C (SIGINT) on drop.
struct LocalCluster {
    up: Spawned,
    dir: tempfile::TempDir,
}

impl LocalCluster {
    fn start() -> LocalCluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let ticket = dir.path().join(".aspen/cluster/cluster.ticket");
        for _ in 0..CLUSTER_START_ATTEMPTS {
            let port = aspen_testkit::cluster_up::free_base_port(3).expect("three free consecutive ports").to_string();
            let log = std::fs::File::create(dir.path().join("up.log")).expect("log");
            let mut cmd = aspen(dir.path(), &["cluster", "up", "--base-port", &port]);
            cmd.stdout(log.try_clone().expect("log")).stderr(log);
            let mut up = Spawned::start(cmd);
            wait_until("cluster up writes its ticket or exits", || ticket.is_file() || up.try_exited().is_some());
            if ticket.is_file() {
                return LocalCluster { up, dir };
            }
        }
        let log = std::fs::read_to_string(dir.path().join("up.log")).unwrap_or_default();
        panic!("cluster up failed {CLUSTER_START_ATTEMPTS} times; last log:\n{log}");
    }

    fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir().join(name)
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        // Ctrl-C lets cluster up stop its nodes; Spawned's drop kills it if that hangs.
        self.up.signal(libc::SIGINT);
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.up.try_exited().is_none() && Instant::now() < deadline {
            std::thread::sleep(POLL);
        }
    }
}

/// `aspen ARGS -- sh -c ...`: once it holds, the command appends `start TAG TOKEN` (the
/// lock token or election term it got, if any) to `log`; it holds until its stdin closes,
/// then appends `end TAG`.
fn start_holder(dir: &Path, args: &[&str], tag: &str, log: &Path) -> Spawned {
    const SCRIPT: &str = concat!(
        r#"echo "start $1 ${ASPEN_LOCK_TOKEN:-}${ASPEN_ELECTION_TERM:-}" >> "$2"; "#,
        r#"cat > /dev/null; echo "end $1" >> "$2""#,
    );
    let log = log.to_str().expect("utf-8 path");
    let mut all = args.to_vec();
    all.extend(["--", "sh", "-c", SCRIPT, "sh", tag, log]);
    let mut cmd = aspen(dir, &all);
    let errors = std::fs::File::create(dir.join(format!("{tag}.err"))).expect("stderr file");
    cmd.stdin(Stdio::piped()).stdout(Stdio::null()).stderr(errors);
    Spawned::start(cmd)
}

/// The lines of a holders' log, trimmed.
fn log_lines(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log).unwrap_or_default().lines().map(|l| l.trim().to_string()).collect()
}

fn wait_for_line(log: &Path, prefix: &str) -> String {
    let mut found = None;
    wait_until(&format!("{} has a line starting {prefix:?}", log.display()), || {
        found = log_lines(log).into_iter().find(|l| l.starts_with(prefix));
        found.is_some()
    });
    found.expect("found")
}

/// The number after `start TAG`.
fn token_of(start_line: &str) -> u64 {
    let token = start_line.rsplit(' ').next().expect("a token");
    token.parse().unwrap_or_else(|_| panic!("no token in {start_line:?}"))
}

/// How many contenders queue for a primitive (held or waiting).
fn contenders(dir: &Path, kind: &str, name: &str) -> usize {
    succeeds(dir, &["kv", "scan", &format!("_aspen/coord/{kind}/{name}/")]).lines().count()
}

fn released(holder: &mut Spawned, what: &str) {
    holder.close_stdin();
    let status = holder.exit_status(&format!("{what} exits"));
    assert!(status.success(), "{what}: {status}");
}

/// Two commands under the hold `args` (named `kind/name` in the KV): the second waits in
/// the queue while the first holds, and starts only after the first has ended. Returns
/// both holders' start lines.
fn assert_runs_one_at_a_time(dir: &Path, args: &[&str], kind: &str, name: &str, log: &Path) -> (String, String) {
    let mut first = start_holder(dir, args, "first", log);
    let first_start = wait_for_line(log, "start first");
    let mut second = start_holder(dir, args, "second", log);
    wait_until("the second contender queues", || contenders(dir, kind, name) == 2);
    // Queued behind a holder, the second must not have started: nothing is left to chance.
    assert_eq!(log_lines(log), vec![first_start.clone()], "the second ran while the first held");
    released(&mut first, "the first holder");
    let second_start = wait_for_line(log, "start second");
    released(&mut second, "the second holder");
    assert_eq!(
        log_lines(log),
        vec![first_start.clone(), "end first".into(), second_start.clone(), "end second".into()]
    );
    (first_start, second_start)
}

#[test]
fn counters_and_sequences_print_their_values() {
    let cluster = LocalCluster::start();
    let dir = cluster.dir();

    assert_eq!(succeeds(dir, &["counter", "get", "hits"]), "0\n", "a counter starts at 0");
    assert_eq!(succeeds(dir, &["counter", "add", "hits", "5"]), "5\n");
    assert_eq!(succeeds(dir, &["counter", "add", "hits", "-2"]), "3\n", "a negative delta subtracts");
    assert_eq!(json(dir, &["counter", "get", "hits"]), serde_json::json!({"name": "hits", "value": 3}));

    assert_eq!(succeeds(dir, &["counter", "cas", "hits", "3", "10"]), "10\n");
    let mismatch = stderr(&exits_with(dir, 1, &["counter", "cas", "hits", "3", "11"]));
    assert!(mismatch.contains("compare failed: expected counter hits to be 3, but it is 10"), "{mismatch}");
    let mismatch = exits_with(dir, 1, &["--json", "counter", "cas", "hits", "3", "11"]);
    let shown: serde_json::Value = serde_json::from_slice(&mismatch.stdout).expect("JSON");
    assert_eq!(shown, serde_json::json!({"name": "hits", "succeeded": false, "value": 10}));
    assert_eq!(succeeds(dir, &["counter", "get", "hits"]), "10\n", "a failed cas changes nothing");

    let ids = |out: String| -> Vec<u64> { out.lines().map(|l| l.parse().expect("an id per line")).collect() };
    let first = ids(succeeds(dir, &["sequence", "next", "orders", "--count", "3"]));
    let second = ids(succeeds(dir, &["sequence", "next", "orders", "--count", "2"]));
    let third = json(dir, &["sequence", "next", "orders"]);
    let third: Vec<u64> = serde_json::from_value(third["ids"].clone()).expect("ids");
    assert_eq!((first.len(), second.len(), third.len()), (3, 2, 1));
    let all: Vec<u64> = first.iter().chain(&second).chain(&third).copied().collect();
    assert!(all.windows(2).all(|w| w[0] < w[1]), "ids must only grow, across invocations: {all:?}");
}

#[test]
fn a_one_permit_semaphore_and_a_write_lock_each_run_one_command_at_a_time() {
    let cluster = LocalCluster::start();
    let dir = cluster.dir();

    let semaphore = ["semaphore", "slots", "--permits", "1"];
    assert_runs_one_at_a_time(dir, &semaphore, "semaphore", "slots", &cluster.path("semaphore.log"));

    let write = ["rwlock", "write", "table"];
    let (first, second) = assert_runs_one_at_a_time(dir, &write, "rwlock", "table", &cluster.path("write.log"));
    assert!(token_of(&first) < token_of(&second), "fencing tokens grow: {first:?} then {second:?}");

    // Readers share the lock: both start before either ends.
    let log = cluster.path("read.log");
    let mut readers = ["reader-a", "reader-b"].map(|tag| start_holder(dir, &["rwlock", "read", "table"], tag, &log));
    wait_for_line(&log, "start reader-a");
    wait_for_line(&log, "start reader-b");
    for reader in &mut readers {
        released(reader, "a reader");
    }

    // A failing command's exit status is aspen's, and the permit is released after it.
    let failed = exits_with(dir, 3, &["semaphore", "slots", "--permits", "1", "--", "sh", "-c", "exit 3"]);
    assert!(stderr(&failed).contains("the command exited with"), "{}", stderr(&failed));
    succeeds(dir, &["semaphore", "slots", "--permits", "1", "--timeout", "60s", "--", "true"]);
}

#[test]
fn election_leader_shows_the_campaigning_value_and_watch_follows_each_change() {
    let cluster = LocalCluster::start();
    let dir = cluster.dir();
    let watched = cluster.path("watch.out");
    let mut watch_cmd = aspen(dir, &["election", "watch", "primary"]);
    watch_cmd.stdout(std::fs::File::create(&watched).expect("watch output")).stderr(Stdio::null());
    let mut watch = Spawned::start(watch_cmd);
    let watch_shows = |line: &str| {
        wait_until(&format!("election watch prints {line:?}"), || {
            std::fs::read_to_string(&watched).is_ok_and(|s| s.lines().any(|l| l == line))
        });
    };
    watch_shows("no leader");

    let none = stderr(&exits_with(dir, 1, &["election", "leader", "primary"]));
    assert!(none.contains("error: election primary has no leader"), "{none}");

    let log = cluster.path("leaders.log");
    let mut a = start_holder(dir, &["election", "campaign", "primary", "node-a"], "node-a", &log);
    let term_a = token_of(&wait_for_line(&log, "start node-a"));
    assert_eq!(succeeds(dir, &["election", "leader", "primary"]), format!("node-a term={term_a}\n"));
    let shown = json(dir, &["election", "leader", "primary"]);
    assert_eq!(shown, serde_json::json!({"name": "primary", "leader": {"term": term_a, "value": "node-a"}}));
    watch_shows(&format!("node-a term={term_a}"));

    // A second candidate waits while the first leads, and leads once it resigns.
    let mut b = start_holder(dir, &["election", "campaign", "primary", "node-b"], "node-b", &log);
    wait_until("node-b stands", || contenders(dir, "election", "primary") == 2);
    assert_eq!(succeeds(dir, &["election", "leader", "primary"]), format!("node-a term={term_a}\n"));
    released(&mut a, "node-a's campaign");
    let term_b = token_of(&wait_for_line(&log, "start node-b"));
    assert!(term_a < term_b, "terms grow: {term_a} then {term_b}");
    watch_shows(&format!("node-b term={term_b}"));
    released(&mut b, "node-b's campaign");

    wait_until("election watch prints the last resignation", || {
        std::fs::read_to_string(&watched).is_ok_and(|s| s.lines().count() >= 4)
    });
    let followed = std::fs::read_to_string(&watched).expect("watch output");
    assert_eq!(followed, format!("no leader\nnode-a term={term_a}\nnode-b term={term_b}\nno leader\n"));
    watch.signal(libc::SIGINT);
    assert!(watch.exit_status("election watch exits on Ctrl-C").success());
    exits_with(dir, 1, &["election", "leader", "primary"]);

    // Without a command, a campaign prints its term and resigns at once.
    let term: u64 = succeeds(dir, &["election", "campaign", "primary", "node-c"]).trim().parse().expect("a term");
    assert!(term > term_b, "{term_b} then {term}");
    exits_with(dir, 1, &["election", "leader", "primary"]);
}

#[test]
fn bad_input_is_a_usage_error_naming_the_problem() {
    // Checked before any cluster is looked for: this directory has no ticket.
    let nowhere = tempfile::tempdir().expect("tempdir");
    let long_name = "n".repeat(2_000);
    let cases: &[(&[&str], &str)] = &[
        (&["counter", "get", ""], "the name must not be empty"),
        (&["lock", "a/b"], "must not contain '/'"),
        (&["rwlock", "write", "a/b", "--", "true"], "must not contain '/'"),
        (&["election", "campaign", "", "v"], "the name must not be empty"),
        (&["sequence", "next", &long_name], "the name is 2000 bytes, over the limit"),
        (&["semaphore", "slots", "--permits", "0", "--", "true"], "invalid value '0' for '--permits <N>'"),
        (&["semaphore", "slots", "--", "true"], "--permits <N>"),
        (&["semaphore", "slots", "--permits", "2"], "<COMMAND>"),
        (&["counter", "add", "hits", "abc"], "invalid value 'abc' for '<DELTA>'"),
        (&["counter", "cas", "hits", "-1", "2"], "invalid value '-1' for '<EXPECTED>'"),
        (&["sequence", "next", "ids", "--count", "0"], "invalid value '0' for '--count <N>'"),
    ];
    for (args, problem) in cases {
        let out = exits_with(nowhere.path(), 2, args);
        assert!(stderr(&out).contains(problem), "{args:?} should say {problem:?}: {}", stderr(&out));
    }
}

#[test]
fn queue_and_ratelimit_commands_work_end_to_end() {
    let cluster = LocalCluster::start();
    let dir = cluster.dir();

    succeeds(dir, &["queue", "create", "jobs", "--max-deliveries", "1"]);
    assert_eq!(succeeds(dir, &["queue", "push", "jobs", "a", "b"]), "1\n2\n");
    assert_eq!(succeeds(dir, &["queue", "push", "jobs", "c", "--dedup-id", "x"]), "3\n");
    let again = succeeds(dir, &["queue", "push", "jobs", "c", "--dedup-id", "x"]);
    assert!(again.starts_with("3 (duplicate"), "{again}");

    assert_eq!(succeeds(dir, &["queue", "pop", "jobs"]), "1.1 a\n", "FIFO, first delivery");
    succeeds(dir, &["queue", "ack", "jobs", "1.1"]);
    let stale = stderr(&exits_with(dir, 1, &["queue", "ack", "jobs", "1.1"]));
    assert!(stale.contains("stale receipts") && stale.contains("1.1"), "{stale}");
    assert_eq!(succeeds(dir, &["queue", "pop", "jobs", "--max", "5"]), "2.1 b\n3.1 c\n");

    // One delivery allowed: after a nack, the next pop moves b to jobs.dlq instead.
    succeeds(dir, &["queue", "nack", "jobs", "2.1"]);
    let empty = stderr(&exits_with(dir, 1, &["queue", "pop", "jobs"]));
    assert!(empty.contains("no visible item"), "{empty}");
    let stats = json(dir, &["queue", "stats", "jobs"]);
    assert_eq!((stats["ready"].as_u64(), stats["in_flight"].as_u64()), (Some(0), Some(1)), "{stats}");
    assert_eq!((stats["dead_lettered"].as_u64(), stats["acked"].as_u64()), (Some(1), Some(1)), "{stats}");
    assert_eq!(succeeds(dir, &["queue", "list", "jobs.dlq"]), "1 ready deliveries=0 b\n");
    assert_eq!(succeeds(dir, &["queue", "redrive", "jobs"]), "moved 1 items from jobs.dlq to jobs\n");
    let popped = json(dir, &["queue", "pop", "jobs"]);
    assert_eq!(popped["items"][0]["payload"], "b", "{popped}");

    let bad = stderr(&exits_with(dir, 1, &["queue", "push", "bad/name", "x"]));
    assert!(bad.contains("queue name"), "{bad}");
    let bad = stderr(&exits_with(dir, 2, &["queue", "ack", "jobs", "seven"]));
    assert!(bad.contains("SEQ.DELIVERY"), "{bad}");
    let bad = stderr(&exits_with(dir, 1, &["queue", "stats", "never-made"]));
    assert!(bad.contains("does not exist"), "{bad}");

    let take = ["ratelimit", "take", "api", "--capacity", "2", "--refill", "1", "--per", "1h"];
    assert_eq!(succeeds(dir, &take), "granted 1; 1 left\n");
    assert_eq!(succeeds(dir, &take), "granted 1; 0 left\n");
    let refused = stderr(&exits_with(dir, 1, &take));
    assert!(refused.contains("holds 0 of the 1 tokens") && refused.contains("retry in"), "{refused}");
    let bad = stderr(&exits_with(dir, 1, &["ratelimit", "take", "api", "--capacity", "0", "--refill", "1"]));
    assert!(bad.contains("capacity"), "{bad}");
}
