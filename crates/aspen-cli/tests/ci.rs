//! CI against real node processes, each run started by a real `git push` through
//! `git-remote-aspen`, its jobs run by real `aspen ci worker` processes: a two-job DAG, an
//! unchanged job skipped on the next push and run again when forced, a failing job, a time
//! limit, a pipeline that breaks the contract, cancelling a running job, a worker killed
//! mid-job, a vm job, and patches: statuses on commits and patch revisions, secrets masked and
//! given only to trusted runs.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use aspen_ci::CiClient;
use aspen_ci::protocol::RunInfo;
use aspen_ci::records::State;
use aspen_forge::ForgeClient;
use aspen_testkit::git::GitEnv;
use aspen_testkit::harness::TestCluster;

/// Generous bound for a run to end: jobs here take seconds.
const RUN_BOUND: Duration = Duration::from_secs(150);

fn bin_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_git-remote-aspen")).parent().expect("bin dir").to_path_buf()
}

/// The git environment of [`GitEnv`], plus what a CI test does with it.
struct Env {
    git: GitEnv,
}

impl Env {
    fn new(c: &TestCluster) -> Self {
        Env { git: GitEnv::new(c, bin_dir()) }
    }

    /// A repository in the forge named `name` whose `main` holds `pipeline` as
    /// `.aspen/ci.ncl`, pushed; returns the local clone.
    fn push_repo(&self, name: &str, pipeline: &str) -> tempfile::TempDir {
        self.git.push_new_repo(name, &[(".aspen/ci.ncl", pipeline), ("README", &format!("{name}\n"))])
    }

    /// An `aspen ci worker` process, killed (and waited for) when dropped.
    fn worker(&self, id: &str, extra: &[&str]) -> WorkerProcess {
        let work = tempfile::tempdir().expect("work dir");
        let log = std::fs::File::create(work.path().join("worker.log")).expect("log");
        let child = Command::new(env!("CARGO_BIN_EXE_aspen"))
            .args(["--ticket", self.git.ticket(), "--token", self.git.token(), "ci", "worker", "--id", id])
            .args(["--work-dir", &work.path().join("w").display().to_string()])
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start the worker");
        WorkerProcess { child, work }
    }
}

struct WorkerProcess {
    child: Child,
    work: tempfile::TempDir,
}

impl WorkerProcess {
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.work.path().join("worker.log")).unwrap_or_default()
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits until `repo` has a run numbered above `after` that ended; returns it.
async fn ended_run(ci: &CiClient, repo: &str, after: u64, worker: &WorkerProcess) -> RunInfo {
    let deadline = tokio::time::Instant::now() + RUN_BOUND;
    loop {
        let runs = ci.runs(Some(repo), None, 10).await.expect("runs");
        if let Some(run) = runs.into_iter().find(|r| r.number > after && r.run.state.is_final()) {
            return run;
        }
        if tokio::time::Instant::now() >= deadline {
            let all = ci.runs(None, None, 10).await;
            panic!(
                "no run of {repo} after {after} ended within {RUN_BOUND:?}; runs: {all:?}\nworker log:\n{}",
                worker.log()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn job<'a>(run: &'a RunInfo, name: &str) -> &'a aspen_ci::records::JobRecord {
    &run.jobs.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("run {} has no job {name}", run.number)).1
}

async fn enable(c: &TestCluster, repo: &str) {
    let client = c.client().await;
    ForgeClient::new(&client).create_repo(repo, "", "main").await.expect("create repo");
    CiClient::new(&client).enable(repo).await.expect("enable");
}

const DAG: &str = r#"{
  jobs = {
    build = {
      executor = 'shell,
      run = "echo building $ASPEN_CI_COMMIT; echo built > out.txt",
      artifacts = ["out.txt"],
    },
    test = {
      executor = 'shell,
      run = "echo testing $ASPEN_CI_JOB; test \"$CI\" = true; test -z \"${HOME_SECRET:-}\"; test \"$(cat out.txt)\" = built",
      needs = ["build"],
    },
  },
}
"#;

#[tokio::test(flavor = "multi_thread")]
async fn a_push_runs_a_dag_and_an_unchanged_job_is_skipped_until_forced() {
    let c = TestCluster::start(3).await;
    enable(&c, "team/app").await;
    let env = Env::new(&c);
    let worker = env.worker("w1", &[]);
    let repo = env.push_repo("team/app", DAG);
    let ci = CiClient::new(&c.client().await);

    let first = ended_run(&ci, "team/app", 0, &worker).await;
    assert_eq!(first.run.state, State::Success, "{first:?}\nworker log:\n{}", worker.log());
    let (build, test) = (job(&first, "build"), job(&first, "test"));
    assert_eq!((build.state, test.state), (State::Success, State::Success));
    assert!(test.started_ms >= build.finished_ms, "test started before build ended: {first:?}");
    assert_eq!(build.artifacts.len(), 1, "out.txt is kept");
    assert_eq!(build.artifacts[0].size, 6);
    let log = String::from_utf8(ci.read_log(first.number, "build").await.unwrap()).unwrap();
    let commit = env.git.ok(repo.path(), &["rev-parse", "HEAD"]);
    assert!(log.contains(&format!("building {}", commit.trim())), "build log: {log}");
    let log = String::from_utf8(ci.read_log(first.number, "test").await.unwrap()).unwrap();
    assert!(log.contains("testing test"), "test log: {log}");
    assert!(log.contains("artifact out.txt of job build: 6 bytes in the workspace"), "test log: {log}");

    // The same tree again: both jobs link the first run's success.
    env.git.ok(repo.path(), &["commit", "-q", "--allow-empty", "-m", "nothing changed"]);
    env.git.ok(repo.path(), &["push", "-q", "origin", "main"]);
    let second = ended_run(&ci, "team/app", first.number, &worker).await;
    assert_eq!(second.run.state, State::Success, "{second:?}");
    for name in ["build", "test"] {
        assert_eq!(job(&second, name).reused_from, Some(first.number), "{name} is skipped: {second:?}");
    }
    assert_eq!(job(&second, "build").artifacts, build.artifacts, "a skipped job passes on the artifacts it reused");
    let log = String::from_utf8(ci.read_log(second.number, "build").await.unwrap()).unwrap();
    assert!(log.contains("building"), "a skipped job shows the log it reused: {log}");

    // Forced, they run again.
    let forced = ci.trigger("team/app", "main", true).await.unwrap();
    let third = ended_run(&ci, "team/app", second.number, &worker).await;
    assert_eq!(third.number, forced);
    assert_eq!(third.run.state, State::Success, "{third:?}");
    for name in ["build", "test"] {
        assert_eq!(job(&third, name).reused_from, None, "{name} runs when forced: {third:?}");
    }
    // A push to a branch the pipeline's triggers do not take ends as skipped.
    env.git.ok(repo.path(), &["push", "-q", "origin", "main:side"]);
    let side = ended_run(&ci, "team/app", third.number, &worker).await;
    assert_eq!(side.run.state, State::Skipped, "{side:?}");
    assert!(side.jobs.is_empty());

    // Pruning to the newest two: the first two runs go, with their logs and blob pins; the
    // forced run's success stays what an unchanged job reuses.
    let pins = |run: u64| aspen_blob::records::pin_key(&format!("ci/{run}/"));
    let kv = c.client().await.kv();
    use aspen_kv::KvExt as _;
    let pinned = |run| {
        let kv = kv.clone();
        async move { kv.scan_all(pins(run), aspen_kv::ReadConsistency::Linearizable).await.unwrap().0.len() }
    };
    assert!(pinned(first.number).await >= 2, "the first run's logs and artifact are pinned");
    let report = ci.prune(Some("team/app"), 2).await.unwrap();
    assert_eq!((report.runs, report.reuse_records), (2, 0), "{report:?}");
    let left: Vec<u64> = ci.runs(Some("team/app"), None, 10).await.unwrap().iter().map(|r| r.number).collect();
    assert_eq!(left, [side.number, third.number]);
    assert!(ci.show(first.number).await.unwrap_err().to_string().contains("no run"));
    assert_eq!(pinned(first.number).await, 0, "its pins are gone");
    assert!(pinned(third.number).await >= 2, "the kept run's pins stay");
    assert!(!ci.read_log(third.number, "build").await.unwrap().is_empty());
    // Keeping none: the reuse records go with the runs, so the same tree runs again.
    let report = ci.prune(Some("team/app"), 0).await.unwrap();
    assert_eq!((report.runs, report.reuse_records), (2, 2), "{report:?}");
    env.git.ok(repo.path(), &["commit", "-q", "--allow-empty", "-m", "after pruning"]);
    env.git.ok(repo.path(), &["push", "-q", "origin", "main"]);
    let fourth = ended_run(&ci, "team/app", side.number, &worker).await;
    assert_eq!(fourth.run.state, State::Success, "{fourth:?}");
    assert_eq!(job(&fourth, "build").reused_from, None, "nothing is left to reuse: {fourth:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn failures_time_limits_bad_pipelines_and_cancelling_end_runs_as_they_should() {
    let c = TestCluster::start(3).await;
    for repo in ["t/fail", "t/slow", "t/bad", "t/cancel", "t/loop", "t/big"] {
        enable(&c, repo).await;
    }
    let env = Env::new(&c);
    let worker = env.worker("w1", &["--capacity", "4", "--eval-limit-secs", "5"]);
    let ci = CiClient::new(&c.client().await);

    let _fail = env.push_repo(
        "t/fail",
        r#"{ jobs = {
             a = { executor = 'shell, run = "echo about to fail; exit 3" },
             b = { executor = 'shell, run = "echo never", needs = ["a"] },
        } }"#,
    );
    let _slow =
        env.push_repo("t/slow", r#"{ jobs = { hang = { executor = 'shell, run = "sleep 600", timeout_secs = 2 } } }"#);
    let _bad =
        env.push_repo("t/bad", "{\n  jobs = {\n    x = { executor = 'shell, run = \"true\", timeout = 5 },\n  },\n}\n");
    let _cancel = env.push_repo(
        "t/cancel",
        r#"{ jobs = { long = { executor = 'shell, run = "echo started; sleep 600.25; echo not reached" } } }"#,
    );

    let fail = ended_run(&ci, "t/fail", 0, &worker).await;
    assert_eq!(fail.run.state, State::Failure, "{fail:?}");
    assert_eq!((job(&fail, "a").state, job(&fail, "a").exit_code), (State::Failure, Some(3)));
    assert_eq!(job(&fail, "b").state, State::Skipped);
    assert!(job(&fail, "b").message.as_deref().unwrap_or("").contains("needs a"), "{fail:?}");

    let slow = ended_run(&ci, "t/slow", 0, &worker).await;
    assert_eq!(slow.run.state, State::Failure, "{slow:?}");
    assert_eq!(job(&slow, "hang").state, State::TimedOut, "{slow:?}");

    let bad = ended_run(&ci, "t/bad", 0, &worker).await;
    assert_eq!(bad.run.state, State::Error, "{bad:?}");
    let message = bad.run.message.clone().unwrap_or_default();
    assert!(
        message.contains(".aspen/ci.ncl") && message.contains("timeout"),
        "Nickel's error names the file and field: {message}"
    );
    assert!(bad.jobs.is_empty(), "no job starts");

    // A pipeline that never ends evaluating is killed at the worker's limit; the worker
    // goes on (it evaluates in a child process), and the child is gone.
    let _loop = env.push_repo("t/loop", "let rec f = fun x => f (x + 1) in { jobs = f 0 }\n");
    let looping = ended_run(&ci, "t/loop", 0, &worker).await;
    assert_eq!(looping.run.state, State::Error, "{looping:?}");
    let message = looping.run.message.clone().unwrap_or_default();
    assert!(message.contains("did not evaluate within 5 s"), "{message}");
    let evaluators = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|p| std::fs::read_link(p.path().join("cwd")).is_ok_and(|cwd| cwd.starts_with(worker.work.path())))
        .filter(|p| {
            std::fs::read(p.path().join("cmdline")).is_ok_and(|c| String::from_utf8_lossy(&c).contains("validate"))
        })
        .count();
    assert_eq!(evaluators, 0, "the evaluation's process is gone");

    // Cancelling a running job kills it within seconds.
    let run = tokio::time::timeout(RUN_BOUND, async {
        loop {
            if let Some(r) = ci.runs(Some("t/cancel"), None, 1).await.unwrap().into_iter().next()
                && let Ok(log) = ci.read_log(r.number, "long").await
                && String::from_utf8_lossy(&log).contains("started")
            {
                return r.number;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("the long job started");
    assert!(sleeping("600.25"), "the job's process runs");
    let asked = std::time::Instant::now();
    ci.cancel(run).await.unwrap();
    let cancelled = ended_run(&ci, "t/cancel", run - 1, &worker).await;
    assert_eq!(cancelled.run.state, State::Cancelled, "{cancelled:?}");
    assert_eq!(job(&cancelled, "long").state, State::Cancelled);
    assert!(asked.elapsed() < Duration::from_secs(30), "cancelled in {:?}", asked.elapsed());
    let gone = tokio::time::timeout(Duration::from_secs(30), async {
        while sleeping("600.25") {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(gone.is_ok(), "the cancelled job's process is gone");
    let log = String::from_utf8(ci.read_log(run, "long").await.unwrap()).unwrap();
    assert!(!log.contains("not reached"), "{log}");

    // A job that asks more than any live worker offers waits, and says so.
    let _big = env
        .push_repo("t/big", r#"{ jobs = { huge = { executor = 'shell, run = "true", resources = { cpus = 64 } } } }"#);
    let (run, message) = tokio::time::timeout(RUN_BOUND, async {
        loop {
            if let Some(r) = ci.runs(Some("t/big"), None, 1).await.unwrap().into_iter().next()
                && let Some((_, huge)) = r.jobs.iter().find(|(n, _)| n == "huge")
                && huge.state == State::Queued
                && let Some(message) = &huge.message
            {
                return (r.number, message.clone());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("the job is queued, with a note");
    assert!(message.contains("no live worker takes a shell job with 64 cpus"), "{message}");
    assert!(message.contains("w1: shell"), "the note says what the live worker offers: {message}");
    ci.cancel(run).await.unwrap();
    let big = ended_run(&ci, "t/big", run - 1, &worker).await;
    assert_eq!(job(&big, "huge").state, State::Cancelled, "{big:?}");
}

/// Whether a `sleep ARG` process runs on this machine.
fn sleeping(arg: &str) -> bool {
    let Ok(dir) = std::fs::read_dir("/proc") else { return false };
    dir.flatten().any(|e| {
        std::fs::read(e.path().join("cmdline"))
            .map(|c| c.split(|b| *b == 0).map(|s| String::from_utf8_lossy(s).into_owned()).collect::<Vec<_>>())
            .is_ok_and(|argv| argv.len() >= 2 && argv[0].ends_with("sleep") && argv[1] == arg)
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_whose_worker_dies_is_run_again_by_another_and_recorded_once() {
    let mut c = TestCluster::start(3).await;
    enable(&c, "t/die").await;
    let env = Env::new(&c);
    let marks = tempfile::tempdir().unwrap();
    let marker = marks.path().join("marks");
    let pipeline = format!(
        r#"{{ jobs = {{ work = {{ executor = 'shell, env = {{ MARKS = "{}" }},
             run = "echo start >> $MARKS; echo working; sleep 4; echo done >> $MARKS" }} }} }}"#,
        marker.display()
    );
    let mut first = env.worker("w1", &["--session-ttl-secs", "3"]);
    let _repo = env.push_repo("t/die", &pipeline);
    let ci = CiClient::new(&c.client().await);
    tokio::time::timeout(RUN_BOUND, async {
        while !std::fs::read_to_string(&marker).unwrap_or_default().contains("start") {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the job started on w1");
    // The worker and a node die mid-job.
    first.kill();
    c.nodes.kill(2).unwrap();
    let second = env.worker("w2", &["--session-ttl-secs", "3"]);
    let run = ended_run(&ci, "t/die", 0, &second).await;
    assert_eq!(run.run.state, State::Success, "{run:?}\nw2 log:\n{}", second.log());
    let work = job(&run, "work");
    assert_eq!(work.worker.as_deref(), Some("w2"), "{run:?}");
    assert_eq!(work.attempt, 1, "a lost worker is not a failed attempt");
    let marks = std::fs::read_to_string(&marker).unwrap();
    assert_eq!(marks.matches("done").count(), 1, "the job finished once: {marks}");
    assert_eq!(marks.matches("start").count(), 2, "started on w1, then again on w2: {marks}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_vm_job_runs_in_a_microvm_with_its_workspace_shared() {
    let Some(image) = tokio::task::spawn_blocking(|| aspen_testkit::vm::test_image().expect("building the test image"))
        .await
        .unwrap()
    else {
        return;
    };
    let image_dir = image.kernel.parent().expect("image dir").display().to_string();
    let c = TestCluster::start(3).await;
    enable(&c, "t/vm").await;
    let env = Env::new(&c);
    let worker = env.worker("vm1", &["--executors", "vm", "--vm-image", &image_dir, "--hypervisor", "qemu-tcg"]);
    let pipeline = r#"{ jobs = { guest = {
        executor = 'vm,
        run = "cat /workspace/README; echo from-guest > /workspace/result.txt; cat /workspace/result.txt; test \"$ASPEN_CI_JOB\" = guest",
        resources = { cpus = 1, memory_mib = 256 },
        timeout_secs = 300,
    } } }"#;
    let _repo = env.push_repo("t/vm", pipeline);
    let ci = CiClient::new(&c.client().await);
    let run = ended_run(&ci, "t/vm", 0, &worker).await;
    let log = String::from_utf8(ci.read_log(run.number, "guest").await.unwrap()).unwrap();
    assert_eq!(run.run.state, State::Success, "{run:?}\nlog:\n{log}\nworker log:\n{}", worker.log());
    assert!(log.contains("guest up (kernel"), "the job ran in a guest: {log}");
    assert!(log.contains("t/vm") && log.contains("from-guest"), "it read and wrote its workspace: {log}");
}

/// Waits until the `context` status of `commit` in `repo` is `state`; returns its description.
async fn status_becomes(
    forge: &ForgeClient,
    repo: &str,
    commit: [u8; 20],
    context: &str,
    state: aspen_forge::status::StatusState,
) -> String {
    let deadline = tokio::time::Instant::now() + RUN_BOUND;
    loop {
        let statuses = forge.statuses(repo, commit).await.expect("statuses");
        if let Some(s) = statuses.iter().find(|s| s.context == context && s.status.state == state) {
            return s.status.description.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the {context} status of {} never became {}: {statuses:?}",
            aspen_forge::records::hex(&commit),
            state.name()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn aspen_cli(env: &Env, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_aspen"))
        .args(["--ticket", env.git.ticket(), "--token", env.git.token()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run aspen");
    assert!(out.status.success(), "aspen {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8")
}

const SECRET: &str = "hunter2-not-for-logs";

const WITH_SECRET: &str = r#"{
  jobs = {
    deploy = {
      executor = 'shell,
      run = "echo token=$TOKEN; test \"$TOKEN\" = hunter2-not-for-logs",
      secrets = ["TOKEN"],
    },
  },
}
"#;

#[tokio::test(flavor = "multi_thread")]
async fn statuses_show_on_commits_and_patches_and_secrets_reach_only_trusted_runs() {
    use aspen_forge::cob::{Action, Change, CobKind};
    use aspen_forge::status::StatusState;

    let c = TestCluster::start(3).await;
    enable(&c, "team/patch").await;
    let client = c.client().await;
    let (ci, forge) = (CiClient::new(&client), ForgeClient::new(&client));
    assert!(ci.set_secret("team/patch", "BAD NAME", b"x").await.unwrap_err().to_string().contains("BAD NAME"));
    assert_eq!(ci.set_secret("team/patch", "TOKEN", SECRET.as_bytes()).await.unwrap(), ["TOKEN"]);
    let env = Env::new(&c);
    let worker = env.worker("w1", &[]);
    let repo = env.push_repo("team/patch", WITH_SECRET);
    let main_head =
        aspen_forge::records::parse_object_id(env.git.ok(repo.path(), &["rev-parse", "HEAD"]).trim()).unwrap();

    // A push: the job gets its secret, its log masks it, and the commit shows the run.
    let first = ended_run(&ci, "team/patch", 0, &worker).await;
    assert_eq!(first.run.state, State::Success, "{first:?}\nworker log:\n{}", worker.log());
    let log = String::from_utf8(ci.read_log(first.number, "deploy").await.unwrap()).unwrap();
    assert!(log.contains("token=***") && !log.contains(SECRET), "the secret is masked: {log}");
    // `aspen ci wait` on an ended run: at once, exit 0 for a success.
    let waited = aspen_cli(&env, &["ci", "wait", &first.number.to_string(), "--within-secs", "60"]);
    assert!(waited.contains("success"), "{waited}");
    let said = status_becomes(&forge, "team/patch", main_head, "ci", StatusState::Success).await;
    assert_eq!(said, "all 1 jobs passed");
    let shown = aspen_cli(&env, &["forge", "show", "team/patch"]);
    assert!(shown.contains(&format!("ci: success all 1 jobs passed (aspen ci show {})", first.number)), "{shown}");

    // A patch from an author CI does not trust: its run gets no secret and runs no shell job.
    env.git.ok(repo.path(), &["checkout", "-q", "-b", "feature"]);
    std::fs::write(repo.path().join("change.txt"), "one\n").unwrap();
    env.git.ok(repo.path(), &["add", "-A"]);
    env.git.ok(repo.path(), &["commit", "-qm", "a change"]);
    env.git.ok(repo.path(), &["push", "-q", "origin", "feature"]);
    let head = |dir: &std::path::Path| {
        aspen_forge::records::parse_object_id(env.git.ok(dir, &["rev-parse", "HEAD"]).trim()).unwrap()
    };
    let first_head = head(repo.path());
    let author = iroh::SecretKey::from_bytes(&[42; 32]);
    let open = Action::OpenPatch {
        title: "a change".into(),
        description: String::new(),
        target: "main".into(),
        base: main_head,
        head: first_head,
    };
    let root = Change::root(CobKind::Patch, &author.public(), aspen_net::now_ms(), open).sign(&author).unwrap();
    let patch = root.id();
    forge.append_change("team/patch", &root).await.expect("open the patch");
    // The branch push itself starts a run the triggers skip (only main is built on push).
    let mut untrusted = None;
    let deadline = tokio::time::Instant::now() + RUN_BOUND;
    while untrusted.is_none() {
        let runs = ci.runs(Some("team/patch"), None, 10).await.unwrap();
        untrusted = runs.into_iter().find(|r| {
            matches!(r.run.trigger, aspen_ci::records::Trigger::Patch { revision: 1, .. }) && r.run.state.is_final()
        });
        assert!(tokio::time::Instant::now() < deadline, "the patch's run never ended\n{}", worker.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let untrusted = untrusted.unwrap();
    assert!(!untrusted.run.trusted);
    assert_eq!(untrusted.run.commit, first_head);
    assert_eq!(untrusted.run.state, State::Skipped, "{untrusted:?}");
    let deploy = job(&untrusted, "deploy");
    assert_eq!(deploy.state, State::Skipped);
    assert!(deploy.message.as_deref().unwrap().starts_with(aspen_ci::plan::UNTRUSTED), "{deploy:?}");
    assert_eq!(deploy.started_ms, None, "it never ran");
    status_becomes(&forge, "team/patch", first_head, "ci/untrusted", StatusState::Skipped).await;

    // Trusted, the author's next revision runs with the secret.
    let refused = ci.trust("team/patch", &"ab".repeat(20), true).await.unwrap_err().to_string();
    assert!(refused.contains("not a public key"), "a 20-byte id is not a key: {refused}");
    let author_hex: String = author.public().as_bytes().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(ci.trust("team/patch", &author_hex, true).await.unwrap(), vec![author_hex.clone()]);
    std::fs::write(repo.path().join("change.txt"), "two\n").unwrap();
    env.git.ok(repo.path(), &["commit", "-qam", "a better change"]);
    env.git.ok(repo.path(), &["push", "-q", "origin", "feature"]);
    let second_head = head(repo.path());
    let revise = Change::child(
        CobKind::Patch,
        patch,
        vec![patch],
        &author.public(),
        aspen_net::now_ms(),
        vec![Action::Revise { base: main_head, head: second_head, note: "better".into() }],
    )
    .sign(&author)
    .unwrap();
    forge.append_change("team/patch", &revise).await.expect("revise the patch");
    status_becomes(&forge, "team/patch", second_head, "ci", StatusState::Success).await;
    let runs = ci.runs(Some("team/patch"), None, 20).await.unwrap();
    let trusted = runs
        .iter()
        .find(|r| matches!(r.run.trigger, aspen_ci::records::Trigger::Patch { revision: 2, .. }))
        .expect("the second revision's run");
    assert!(trusted.run.trusted && trusted.run.state == State::Success, "{trusted:?}");
    let log = String::from_utf8(ci.read_log(trusted.number, "deploy").await.unwrap()).unwrap();
    assert!(log.contains("token=***") && !log.contains(SECRET), "{log}");

    // `aspen patch show` shows each revision's statuses.
    let shown = aspen_cli(&env, &["patch", "show", "team/patch", &aspen_forge::cob::hex(&patch)]);
    assert!(shown.contains("ci/untrusted: skipped"), "{shown}");
    assert!(shown.contains("ci: success all 1 jobs passed"), "{shown}");
    drop(worker);
}
