//! CI's client protocol, [`CI_ALPN`]: one request frame and one answer frame per bi-stream,
//! except `FollowLog`, answered with `Log` frames as the log grows and one `LogEnd`. Every
//! enum here is frozen: variants are only appended (`tests/golden.rs`).

use aspen_core::AspenError;
use serde::{Deserialize, Serialize};

use crate::records::{JobRecord, RepoConfig, RunRecord, State};

/// CI's ALPN.
pub const CI_ALPN: &[u8] = b"aspen/ci/1";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CiRequest {
    /// Pushes to `repo` start runs from now on.
    Enable {
        repo: String,
    },
    Disable {
        repo: String,
    },
    /// Runs of `repo` (or of all repositories the caller may read), newest first, numbered
    /// below `before`.
    ListRuns {
        repo: Option<String>,
        before: Option<u64>,
        limit: u32,
    },
    ShowRun {
        run: u64,
    },
    /// Starts a run of `ref_name` (a branch, or a full ref name) as it is now.
    Trigger {
        repo: String,
        ref_name: String,
        force: bool,
    },
    Cancel {
        run: u64,
    },
    /// A new run of the same commit that runs again the jobs that did not succeed, or `job`
    /// and what failed after it.
    Retry {
        run: u64,
        job: Option<String>,
    },
    /// The job's log (its latest attempt) from the start, as it grows, until the job ends.
    FollowLog {
        run: u64,
        job: String,
    },
    /// The job's log (its latest attempt) as it is now: one `Log` answer, at most
    /// [`MAX_READ_LOG`] bytes (the start of a longer log).
    ReadLog {
        run: u64,
        job: String,
    },
    /// Trusts (or stops trusting) patch revisions signed by `key` (hex ed25519 public key):
    /// their runs get secrets and run every executor. Needs `admin`. Answered with
    /// `Trusted`.
    Trust {
        repo: String,
        key: String,
        trusted: bool,
    },
    /// The keys whose patches `repo` trusts. Needs `read`. Answered with `Trusted`.
    ListTrusted {
        repo: String,
    },
    /// Stores a job secret of `repo` (sealed with the cluster's secrets key), replacing one
    /// of the same name. Needs `secrets`. Answered with `Secrets`.
    SetSecret {
        repo: String,
        name: String,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    /// Deletes a job secret. Needs `secrets`. Answered with `Secrets`.
    DeleteSecret {
        repo: String,
        name: String,
    },
    /// The names of `repo`'s secrets (never their values). Needs `secrets`. Answered with
    /// `Secrets`.
    ListSecrets {
        repo: String,
    },
    /// The values of the secrets job `job` of run `run` names, for the worker running it:
    /// only while the job runs, only for a trusted run. Needs `secrets` over the run's
    /// repository. Answered with `SecretValues`.
    JobSecrets {
        run: u64,
        job: String,
    },
    /// Deletes the finished runs of `repo` (or of every repository) past its newest `keep`,
    /// with their jobs, logs and artifacts (what the nodes also do on their own, see
    /// `--ci-keep-runs`). Needs `admin` over `repo` (over every name without it). Answered
    /// with `Pruned`.
    Prune {
        repo: Option<String>,
        keep: u32,
    },
}

/// What one pruning removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PruneReport {
    pub runs: u64,
    pub reuse_records: u64,
}

/// Most bytes one `ReadLog` answer carries.
pub const MAX_READ_LOG: usize = 6 * 1024 * 1024;

impl CiRequest {
    pub fn name(&self) -> &'static str {
        match self {
            CiRequest::Enable { .. } => "ci_enable",
            CiRequest::Disable { .. } => "ci_disable",
            CiRequest::ListRuns { .. } => "ci_runs",
            CiRequest::ShowRun { .. } => "ci_show",
            CiRequest::Trigger { .. } => "ci_run",
            CiRequest::Cancel { .. } => "ci_cancel",
            CiRequest::Retry { .. } => "ci_retry",
            CiRequest::FollowLog { .. } => "ci_logs",
            CiRequest::ReadLog { .. } => "ci_log",
            CiRequest::Trust { .. } => "ci_trust",
            CiRequest::ListTrusted { .. } => "ci_trusted",
            CiRequest::SetSecret { .. } => "ci_secret_set",
            CiRequest::DeleteSecret { .. } => "ci_secret_delete",
            CiRequest::ListSecrets { .. } => "ci_secrets",
            CiRequest::JobSecrets { .. } => "ci_job_secrets",
            CiRequest::Prune { .. } => "ci_prune",
        }
    }

    /// Whether sending it again after a lost answer is harmless.
    pub fn is_repeatable(&self) -> bool {
        !matches!(self, CiRequest::Trigger { .. } | CiRequest::Retry { .. })
    }
}

/// A run as the protocol shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunInfo {
    pub number: u64,
    pub run: RunRecord,
    pub jobs: Vec<(String, JobRecord)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CiResponse {
    Error(AspenError),
    Done,
    Repo(RepoConfig),
    Run(RunInfo),
    Runs(Vec<RunInfo>),
    /// A run was started (`created` false: the same request had started it already).
    Started {
        run: u64,
        created: bool,
    },
    /// The next bytes of a followed log.
    Log(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The followed job ended.
    LogEnd {
        state: State,
        message: Option<String>,
    },
    /// The keys (hex) whose patches a repository trusts.
    Trusted(Vec<String>),
    /// The names of a repository's secrets.
    Secrets(Vec<String>),
    /// Secret values, by name, for a running job.
    SecretValues(Vec<(String, serde_bytes::ByteBuf)>),
    Pruned(PruneReport),
}

impl aspen_client::Answer for CiResponse {
    fn error(&self) -> Option<&AspenError> {
        match self {
            CiResponse::Error(e) => Some(e),
            _ => None,
        }
    }
    fn into_error(self) -> Result<Self, AspenError> {
        match self {
            CiResponse::Error(e) => Err(e),
            other => Ok(other),
        }
    }
}
