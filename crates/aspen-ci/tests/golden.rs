//! Golden bytes of CI's formats: its protocol (`aspen/ci/1`), the records it keeps in the KV
//! and the task payloads in the work pool. See `aspen_core::golden`.

use std::path::PathBuf;

use aspen_ci::protocol::{CiRequest, CiResponse, RunInfo};
use aspen_ci::records::{
    self, Artifact, JobRecord, RepoConfig, Reuse, RunRecord, State, TaskSpec, Trigger, WorkerProfile,
};
use aspen_ci_pipeline::ExecutorKind;
use aspen_core::AspenError;
use aspen_core::golden::{check_file, sample};

fn fixture(name: &str) -> PathBuf {
    aspen_core::golden::crate_dir(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(name)
}

fn run() -> RunRecord {
    RunRecord {
        repo: "team/app".into(),
        ref_name: "refs/heads/main".into(),
        commit: [0xab; 20],
        trigger: Trigger::Push { event: "0000018bcfe56800-0000000000000001".into(), pusher: "ab12".into() },
        state: State::Running,
        message: Some("why".into()),
        created_ms: 1_700_000_000_000,
        finished_ms: None,
        jobs: vec!["build".into(), "test".into()],
        cancel_requested: false,
        forced: true,
        trusted: true,
    }
}

fn job() -> JobRecord {
    JobRecord {
        def_json: r#"{"executor":"shell","run":"make"}"#.into(),
        executor: ExecutorKind::Nix,
        needs: vec!["build".into()],
        state: State::Success,
        attempt: 2,
        worker: Some("w1".into()),
        queued_ms: Some(1),
        started_ms: Some(2),
        finished_ms: Some(3),
        exit_code: Some(0),
        message: None,
        log_blob: Some([3; 32]),
        log_bytes: 42,
        artifacts: vec![Artifact { path: "out.txt".into(), blob: [4; 32], size: 6 }],
        input_hash: Some([5; 32]),
        reused_from: Some(7),
    }
}

fn requests() -> Vec<(&'static str, CiRequest)> {
    vec![
        ("Enable", CiRequest::Enable { repo: "team/app".into() }),
        ("Disable", CiRequest::Disable { repo: "team/app".into() }),
        ("ListRuns", CiRequest::ListRuns { repo: Some("team/app".into()), before: Some(9), limit: 20 }),
        ("ShowRun", CiRequest::ShowRun { run: 3 }),
        ("Trigger", CiRequest::Trigger { repo: "team/app".into(), ref_name: "main".into(), force: true }),
        ("Cancel", CiRequest::Cancel { run: 3 }),
        ("Retry", CiRequest::Retry { run: 3, job: Some("test".into()) }),
        ("FollowLog", CiRequest::FollowLog { run: 3, job: "test".into() }),
        ("ReadLog", CiRequest::ReadLog { run: 3, job: "test".into() }),
        ("Trust", CiRequest::Trust { repo: "team/app".into(), key: "ab".repeat(32), trusted: true }),
        ("ListTrusted", CiRequest::ListTrusted { repo: "team/app".into() }),
        (
            "SetSecret",
            CiRequest::SetSecret { repo: "team/app".into(), name: "TOKEN".into(), value: b"s3cret".to_vec() },
        ),
        ("DeleteSecret", CiRequest::DeleteSecret { repo: "team/app".into(), name: "TOKEN".into() }),
        ("ListSecrets", CiRequest::ListSecrets { repo: "team/app".into() }),
        ("JobSecrets", CiRequest::JobSecrets { run: 3, job: "deploy".into() }),
        ("Prune", CiRequest::Prune { repo: Some("team/app".into()), keep: 100 }),
    ]
}

fn responses() -> Vec<(&'static str, CiResponse)> {
    let info = RunInfo { number: 3, run: run(), jobs: vec![("test".into(), job())] };
    vec![
        ("Error", CiResponse::Error(AspenError::invalid("no"))),
        ("Done", CiResponse::Done),
        ("Repo", CiResponse::Repo(RepoConfig { enabled_ms: 1, enabled_by: "ab".into() })),
        ("Run", CiResponse::Run(info.clone())),
        ("Runs", CiResponse::Runs(vec![info])),
        ("Started", CiResponse::Started { run: 4, created: true }),
        ("Log", CiResponse::Log(b"hello\n".to_vec())),
        ("LogEnd", CiResponse::LogEnd { state: State::TimedOut, message: Some("killed".into()) }),
        ("Trusted", CiResponse::Trusted(vec!["ab".repeat(32)])),
        ("Secrets", CiResponse::Secrets(vec!["TOKEN".into()])),
        (
            "SecretValues",
            CiResponse::SecretValues(vec![("TOKEN".into(), serde_bytes::ByteBuf::from(b"s3cret".to_vec()))]),
        ),
        ("Pruned", CiResponse::Pruned(aspen_ci::protocol::PruneReport { runs: 3, reuse_records: 1 })),
    ]
}

fn request_variant(r: &CiRequest) -> &'static str {
    match r {
        CiRequest::Enable { .. } => "Enable",
        CiRequest::Disable { .. } => "Disable",
        CiRequest::ListRuns { .. } => "ListRuns",
        CiRequest::ShowRun { .. } => "ShowRun",
        CiRequest::Trigger { .. } => "Trigger",
        CiRequest::Cancel { .. } => "Cancel",
        CiRequest::Retry { .. } => "Retry",
        CiRequest::FollowLog { .. } => "FollowLog",
        CiRequest::ReadLog { .. } => "ReadLog",
        CiRequest::Trust { .. } => "Trust",
        CiRequest::ListTrusted { .. } => "ListTrusted",
        CiRequest::SetSecret { .. } => "SetSecret",
        CiRequest::DeleteSecret { .. } => "DeleteSecret",
        CiRequest::ListSecrets { .. } => "ListSecrets",
        CiRequest::JobSecrets { .. } => "JobSecrets",
        CiRequest::Prune { .. } => "Prune",
    }
}

fn response_variant(r: &CiResponse) -> &'static str {
    match r {
        CiResponse::Error(_) => "Error",
        CiResponse::Done => "Done",
        CiResponse::Repo(_) => "Repo",
        CiResponse::Run(_) => "Run",
        CiResponse::Runs(_) => "Runs",
        CiResponse::Started { .. } => "Started",
        CiResponse::Log(_) => "Log",
        CiResponse::LogEnd { .. } => "LogEnd",
        CiResponse::Trusted(_) => "Trusted",
        CiResponse::Secrets(_) => "Secrets",
        CiResponse::SecretValues(_) => "SecretValues",
        CiResponse::Pruned(_) => "Pruned",
    }
}

fn state_name(s: State) -> &'static str {
    match s {
        State::Pending => "Pending",
        State::Queued => "Queued",
        State::Running => "Running",
        State::Success => "Success",
        State::Failure => "Failure",
        State::Cancelled => "Cancelled",
        State::TimedOut => "TimedOut",
        State::Error => "Error",
        State::Skipped => "Skipped",
    }
}

fn trigger_name(t: &Trigger) -> &'static str {
    match t {
        Trigger::Push { .. } => "Push",
        Trigger::Patch { .. } => "Patch",
        Trigger::Manual { .. } => "Manual",
        Trigger::Retry { .. } => "Retry",
    }
}

#[test]
fn every_variant_has_a_sample() {
    assert!(requests().iter().all(|(n, r)| *n == request_variant(r)));
    assert!(responses().iter().all(|(n, r)| *n == response_variant(r)));
    assert_eq!(requests().len(), 16);
    assert_eq!(responses().len(), 12);
}

#[test]
fn ci_protocol_frames_keep_their_bytes() {
    let mut samples: Vec<_> = requests().iter().map(|(n, r)| sample(format!("Request.{n}"), r)).collect();
    samples.extend(responses().iter().map(|(n, r)| sample(format!("Response.{n}"), r)));
    check_file(&fixture("protocol.txt"), &samples);
}

#[test]
fn ci_records_keep_their_bytes() {
    let states = [
        State::Pending,
        State::Queued,
        State::Running,
        State::Success,
        State::Failure,
        State::Cancelled,
        State::TimedOut,
        State::Error,
        State::Skipped,
    ];
    let triggers = [
        Trigger::Push { event: "e".into(), pusher: "p".into() },
        Trigger::Patch { patch: "ab".into(), revision: 2 },
        Trigger::Manual { by: "me".into() },
        Trigger::Retry { of: 3, by: "me".into() },
    ];
    let mut samples = vec![
        sample("RunRecord", &run()),
        sample("JobRecord", &job()),
        sample("RepoConfig", &RepoConfig { enabled_ms: 1_700_000_000_000, enabled_by: "ab12".into() }),
        sample("Reuse", &Reuse { run: 3, job: "build".into(), finished_ms: 9, log_blob: Some([1; 32]), log_bytes: 10 }),
        sample("TaskSpec.eval", &TaskSpec { run: 3, job: None, attempt: 1, executor: None, cpus: 1, memory_mib: 0 }),
        sample(
            "TaskSpec.job",
            &TaskSpec {
                run: 3,
                job: Some("b".into()),
                attempt: 2,
                executor: Some(ExecutorKind::Vm),
                cpus: 2,
                memory_mib: 512,
            },
        ),
        sample(
            "WorkerProfile",
            &WorkerProfile {
                executors: vec![ExecutorKind::Shell, ExecutorKind::Vm],
                capacity: 2,
                max_cpus: 4,
                max_memory_mib: 8192,
                started_ms: 1_700_000_000_000,
            },
        ),
    ];
    samples.extend(states.iter().map(|s| sample(format!("State.{}", state_name(*s)), s)));
    samples.extend(triggers.iter().map(|t| sample(format!("Trigger.{}", trigger_name(t)), t)));
    check_file(&fixture("records.txt"), &samples);
}

#[test]
fn ci_keys_keep_their_shape() {
    assert_eq!(records::run_key(42), b"_aspen/ci/run/000000000042");
    assert_eq!(records::job_key(42, "test"), b"_aspen/ci/job/000000000042/test");
    assert_eq!(records::log_key(42, "test", 1, 3), b"_aspen/ci/log/000000000042/test/0001/00000003");
    assert_eq!(records::trigger_key("push/x"), b"_aspen/ci/trigger/push/x");
    assert_eq!(records::by_repo_key("team/app", 42), b"_aspen/ci/by-repo/team/app:000000000042");
    assert_eq!(records::task_id(42, Some("test"), 2), "000000000042.test.2");
    assert_eq!(records::task_id(42, None, 1), "000000000042.eval");
    assert_eq!(records::cursor_key("patch"), b"_aspen/ci/cursor/patch");
    assert_eq!(records::trust_key("team/app", "ab"), b"_aspen/ci/trust/team/app:ab");
    assert_eq!(records::secret_key("team/app", "TOKEN"), b"_aspen/ci/secret/team/app:TOKEN");
    assert_eq!(records::worker_key("w1"), b"_aspen/ci/worker/w1");
}
