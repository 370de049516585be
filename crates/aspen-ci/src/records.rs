//! What CI keeps in the KV, under its own prefix `_aspen/ci/`:
//!
//! - `repo/<repo>`: a [`RepoConfig`], present while pushes to the repository start runs;
//! - `next-run`: the number the next run gets (8-byte big-endian), moved in the same
//!   transaction that creates the run, so run numbers are dense and never reused;
//! - `run/<number, 12 digits>`: a [`RunRecord`];
//! - `by-repo/<repo>:<number>`: empty, the index `aspen ci runs --repo` reads;
//! - `active/<number>`: empty, present while the run is not finished or its end is not yet
//!   reported as the commit's status (what the scheduler sweeps after a restart);
//! - `trigger/<source>`: the number of the run a source started (`push/<event id>`,
//!   `patch/<change id>`, `manual/<nonce>`), created with the run, so one source starts at
//!   most one run, also when a scheduler retries after a leader change;
//! - `job/<number>/<job>`: a [`JobRecord`];
//! - `log/<number>/<job>/<attempt, 4 digits>/<sequence, 8 digits>`: one piece of a job's live
//!   log, written by the worker that holds the job (fenced by its claim);
//! - `done/<input hash hex>`: a [`Reuse`]: a job with these inputs succeeded, so an unforced
//!   job with the same inputs links that result instead of running;
//! - `cursor/push`, `cursor/patch`: the KV revision up to which the forge's push and patch
//!   revision events were handled;
//! - `trust/<repo>:<key hex>`: empty; patch revisions signed by this key are trusted (their
//!   runs get secrets and run every executor);
//! - `secret/<repo>:<NAME>`: a job secret's value, sealed with the cluster's secrets key
//!   (`aspen_app::secrets`, the key as associated data); only a node opens it, for a worker
//!   running a trusted job that names it;
//! - `worker/<id>`: a [`WorkerProfile`], what a live worker offers, on its session lease (it
//!   goes when the worker does); `ci show` says of a queued job that no live worker takes.
//!
//! Jobs wait in the coordination work pool [`POOL`] (`_aspen/coord/work/ci/`) as tasks whose
//! payload is a [`TaskSpec`]. Every record here is postcard and frozen: fields are only added
//! through new record versions, enum variants only appended (`tests/golden.rs`).

use aspen_ci_pipeline::ExecutorKind;
use aspen_core::AspenError;
use serde::{Deserialize, Serialize};

/// Prefix of every CI record.
pub const CI_PREFIX: &str = "_aspen/ci/";
/// The work pool CI's tasks wait in.
pub const POOL: &str = "ci";
/// Blob pins of logs and artifacts are named under this scope.
pub const PIN_SCOPE: &str = "ci/";
/// Where the pipeline lives in a repository.
pub const PIPELINE_PATH: &str = ".aspen/ci.ncl";

pub fn repo_key(repo: &str) -> Vec<u8> {
    format!("{CI_PREFIX}repo/{repo}").into_bytes()
}
pub fn repo_prefix() -> Vec<u8> {
    format!("{CI_PREFIX}repo/").into_bytes()
}
pub fn next_run_key() -> Vec<u8> {
    format!("{CI_PREFIX}next-run").into_bytes()
}
pub fn run_key(run: u64) -> Vec<u8> {
    format!("{CI_PREFIX}run/{run:012}").into_bytes()
}
pub fn run_prefix() -> Vec<u8> {
    format!("{CI_PREFIX}run/").into_bytes()
}
/// The run number a `run/` key names.
pub fn run_of_key(key: &[u8]) -> Option<u64> {
    std::str::from_utf8(key.strip_prefix(run_prefix().as_slice())?).ok()?.parse().ok()
}
pub fn by_repo_key(repo: &str, run: u64) -> Vec<u8> {
    format!("{CI_PREFIX}by-repo/{repo}:{run:012}").into_bytes()
}
pub fn by_repo_prefix(repo: &str) -> Vec<u8> {
    format!("{CI_PREFIX}by-repo/{repo}:").into_bytes()
}
pub fn active_key(run: u64) -> Vec<u8> {
    format!("{CI_PREFIX}active/{run:012}").into_bytes()
}
pub fn active_prefix() -> Vec<u8> {
    format!("{CI_PREFIX}active/").into_bytes()
}
pub fn trigger_key(source: &str) -> Vec<u8> {
    format!("{CI_PREFIX}trigger/{source}").into_bytes()
}
pub fn job_key(run: u64, job: &str) -> Vec<u8> {
    format!("{CI_PREFIX}job/{run:012}/{job}").into_bytes()
}
pub fn jobs_prefix(run: u64) -> Vec<u8> {
    format!("{CI_PREFIX}job/{run:012}/").into_bytes()
}
pub fn all_jobs_prefix() -> Vec<u8> {
    format!("{CI_PREFIX}job/").into_bytes()
}
/// The run number a `job/` key belongs to.
pub fn run_of_job_key(key: &[u8]) -> Option<u64> {
    let rest = key.strip_prefix(all_jobs_prefix().as_slice())?;
    std::str::from_utf8(rest.get(..12)?).ok()?.parse().ok()
}
pub fn log_prefix(run: u64, job: &str, attempt: u32) -> Vec<u8> {
    format!("{CI_PREFIX}log/{run:012}/{job}/{attempt:04}/").into_bytes()
}
pub fn log_key(run: u64, job: &str, attempt: u32, seq: u32) -> Vec<u8> {
    format!("{CI_PREFIX}log/{run:012}/{job}/{attempt:04}/{seq:08}").into_bytes()
}
pub fn reuse_key(input_hash: &[u8; 32]) -> Vec<u8> {
    format!("{CI_PREFIX}done/{}", hex(input_hash)).into_bytes()
}
pub fn cursor_key(stream: &str) -> Vec<u8> {
    format!("{CI_PREFIX}cursor/{stream}").into_bytes()
}
pub fn trust_key(repo: &str, key_hex: &str) -> Vec<u8> {
    format!("{CI_PREFIX}trust/{repo}:{key_hex}").into_bytes()
}
pub fn trust_prefix(repo: &str) -> Vec<u8> {
    format!("{CI_PREFIX}trust/{repo}:").into_bytes()
}
pub fn secret_key(repo: &str, name: &str) -> Vec<u8> {
    format!("{CI_PREFIX}secret/{repo}:{name}").into_bytes()
}
pub fn secrets_prefix(repo: &str) -> Vec<u8> {
    format!("{CI_PREFIX}secret/{repo}:").into_bytes()
}
pub fn worker_key(id: &str) -> Vec<u8> {
    format!("{CI_PREFIX}worker/{id}").into_bytes()
}
pub fn worker_prefix() -> Vec<u8> {
    format!("{CI_PREFIX}worker/").into_bytes()
}
/// Longest secret value, in bytes.
pub const MAX_SECRET_BYTES: usize = 64 * 1024;

/// Checks a secret's name: what it is called in the job's environment, 1-128 characters of
/// `[A-Za-z0-9_]`, not starting with a digit.
pub fn validate_secret_name(name: &str) -> Result<(), AspenError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(AspenError::invalid(format!(
            "secret name {name:?} is not an environment variable name (1-128 of A-Z, a-z, 0-9, _; not starting with a digit)"
        )))
    }
}

/// The pin name of a job attempt's archived log.
pub fn log_pin(run: u64, job: &str, attempt: u32) -> String {
    format!("{PIN_SCOPE}{run}/{job}/{attempt}.log")
}
/// The pin name of an artifact.
pub fn artifact_pin(run: u64, job: &str, path: &str) -> String {
    format!("{PIN_SCOPE}{run}/{job}/artifacts/{path}")
}

/// The task id of a job attempt (or of the run's evaluation, `job` = None): sorts by run.
pub fn task_id(run: u64, job: Option<&str>, attempt: u32) -> String {
    match job {
        Some(job) => format!("{run:012}.{job}.{attempt}"),
        None => format!("{run:012}.eval"),
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A 32-byte key from 64 hex digits.
pub fn parse_key_hex(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..32).map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()).collect();
    bytes?.try_into().ok()
}

/// A repository CI builds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoConfig {
    pub enabled_ms: u64,
    /// Who enabled it (the caller's key, hex).
    pub enabled_by: String,
}

/// What started a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Trigger {
    /// A push event of the forge (its key's last part) by `pusher`.
    Push { event: String, pusher: String },
    /// A revision of a patch (the patch's id, hex; the revision's number).
    Patch { patch: String, revision: u32 },
    /// `aspen ci run` by `by`.
    Manual { by: String },
    /// `aspen ci retry` of run `of`, re-running its jobs that did not succeed.
    Retry { of: u64, by: String },
}

/// Where a run or a job stands. Frozen: new states only at the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum State {
    /// Jobs: waiting for what it needs. Runs: the pipeline is being evaluated.
    Pending,
    /// Jobs: in the work pool, waiting for a worker.
    Queued,
    Running,
    Success,
    Failure,
    Cancelled,
    TimedOut,
    /// Something other than the job failed: the evaluation, the checkout, the worker.
    Error,
    /// Jobs: not run, because a job it needs did not succeed. Runs: the pipeline's triggers
    /// do not take this push.
    Skipped,
}

impl State {
    pub fn is_final(self) -> bool {
        !matches!(self, State::Pending | State::Queued | State::Running)
    }

    pub fn name(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Queued => "queued",
            State::Running => "running",
            State::Success => "success",
            State::Failure => "failure",
            State::Cancelled => "cancelled",
            State::TimedOut => "timed-out",
            State::Error => "error",
            State::Skipped => "skipped",
        }
    }
}

/// One run of a repository's pipeline at one commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRecord {
    pub repo: String,
    /// The full ref name (`refs/heads/main`), or the patch's target for a patch run.
    pub ref_name: String,
    pub commit: [u8; 20],
    pub trigger: Trigger,
    /// Pending while evaluating, then Running, then final.
    pub state: State,
    /// Why it is in its state, when there is more to say: Nickel's error for a pipeline
    /// that failed to evaluate, which trigger did not match, who cancelled.
    pub message: Option<String>,
    pub created_ms: u64,
    pub finished_ms: Option<u64>,
    /// Its jobs, by name, once evaluated.
    pub jobs: Vec<String>,
    pub cancel_requested: bool,
    /// Run every job even when an earlier job with the same inputs succeeded.
    pub forced: bool,
    /// Secrets are given to this run's jobs (false for patches from outside).
    pub trusted: bool,
}

/// An artifact a job kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Artifact {
    pub path: String,
    pub blob: [u8; 32],
    pub size: u64,
}

/// One job of a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRecord {
    /// Its definition, as the pipeline's JSON (`aspen_ci_pipeline::JobDef`), kept as text so
    /// that definitions with fields added later still read.
    pub def_json: String,
    pub executor: ExecutorKind,
    pub needs: Vec<String>,
    pub state: State,
    /// 1 for the first attempt; retries count up.
    pub attempt: u32,
    pub worker: Option<String>,
    pub queued_ms: Option<u64>,
    pub started_ms: Option<u64>,
    pub finished_ms: Option<u64>,
    pub exit_code: Option<i32>,
    pub message: Option<String>,
    /// The archived log of the last attempt, and its length.
    pub log_blob: Option<[u8; 32]>,
    pub log_bytes: u64,
    pub artifacts: Vec<Artifact>,
    /// BLAKE3 of the checked-out tree, the definition, the executor and its image.
    pub input_hash: Option<[u8; 32]>,
    /// The run whose success this job reused instead of running.
    pub reused_from: Option<u64>,
}

impl JobRecord {
    /// A job as evaluation makes it: pending, first attempt, nothing run yet.
    pub fn new(def_json: String, executor: ExecutorKind, needs: Vec<String>) -> JobRecord {
        JobRecord {
            def_json,
            executor,
            needs,
            state: State::Pending,
            attempt: 1,
            worker: None,
            queued_ms: None,
            started_ms: None,
            finished_ms: None,
            exit_code: None,
            message: None,
            log_blob: None,
            log_bytes: 0,
            artifacts: Vec::new(),
            input_hash: None,
            reused_from: None,
        }
    }

    pub fn def(&self) -> Result<aspen_ci_pipeline::JobDef, AspenError> {
        serde_json::from_str(&self.def_json)
            .map_err(|e| AspenError::internal(format!("a job's stored definition does not read: {e}")))
    }
}

/// An earlier success with the same inputs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reuse {
    pub run: u64,
    pub job: String,
    pub finished_ms: u64,
    pub log_blob: Option<[u8; 32]>,
    pub log_bytes: u64,
}

/// What a task in the work pool asks for: the run's evaluation, or one job attempt, with
/// what a worker needs to have to take it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskSpec {
    pub run: u64,
    /// `None`: evaluate the run's pipeline.
    pub job: Option<String>,
    pub attempt: u32,
    pub executor: Option<ExecutorKind>,
    pub cpus: u32,
    pub memory_mib: u64,
}

/// What a live worker offers the jobs it claims.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerProfile {
    pub executors: Vec<ExecutorKind>,
    /// Jobs at once.
    pub capacity: u32,
    /// The most cpus and memory one job may ask of it.
    pub max_cpus: u32,
    pub max_memory_mib: u64,
    pub started_ms: u64,
}

impl WorkerProfile {
    /// Whether this worker claims a task asking for `spec`.
    pub fn takes(&self, spec: &TaskSpec) -> bool {
        match spec.executor {
            // Evaluating a pipeline needs only git and Nickel: every worker does it.
            None => true,
            Some(kind) => {
                self.executors.contains(&kind) && spec.cpus <= self.max_cpus && spec.memory_mib <= self.max_memory_mib
            }
        }
    }
}

pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, AspenError> {
    postcard::to_allocvec(value).map_err(|e| AspenError::internal(format!("cannot encode a CI record: {e}")))
}

pub fn decode<T: for<'de> Deserialize<'de>>(what: &str, key: &[u8], bytes: &[u8]) -> Result<T, AspenError> {
    postcard::from_bytes(bytes)
        .map_err(|e| AspenError::internal(format!("{what} at {} does not read: {e}", String::from_utf8_lossy(key))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_and_parse_back() {
        assert!(run_key(9) < run_key(10));
        assert_eq!(run_of_key(&run_key(42)), Some(42));
        assert_eq!(run_of_job_key(&job_key(7, "build")), Some(7));
        assert!(log_key(1, "a", 1, 9) < log_key(1, "a", 1, 10));
        assert!(task_id(9, Some("z"), 1) < task_id(10, None, 1));
    }

    #[test]
    fn final_states() {
        assert!(!State::Queued.is_final());
        assert!(State::Skipped.is_final() && State::TimedOut.is_final());
    }
}
