//! [`CiClient`]: CI's protocol from a client, over an `aspen_client::Client`.

use aspen_client::{AppChannel, Client, ClientError};

use crate::protocol::{CI_ALPN, CiRequest, CiResponse, RunInfo};
use crate::records::{RepoConfig, State};

/// CI, as a client sees it. Cheap to clone.
#[derive(Debug, Clone)]
pub struct CiClient {
    channel: AppChannel,
}

fn unexpected(request: &'static str, response: &CiResponse) -> ClientError {
    let mut text = format!("{response:?}");
    text.truncate(200);
    ClientError::UnexpectedResponse { request, response: text }
}

impl CiClient {
    pub fn new(client: &Client) -> Self {
        CiClient { channel: client.app(CI_ALPN) }
    }

    async fn call(&self, request: CiRequest) -> Result<CiResponse, ClientError> {
        match self.channel.call(request.name(), &request, request.is_repeatable()).await? {
            CiResponse::Error(e) => Err(ClientError::Aspen(e)),
            other => Ok(other),
        }
    }

    pub async fn enable(&self, repo: &str) -> Result<RepoConfig, ClientError> {
        match self.call(CiRequest::Enable { repo: repo.into() }).await? {
            CiResponse::Repo(config) => Ok(config),
            other => Err(unexpected("ci_enable", &other)),
        }
    }

    pub async fn disable(&self, repo: &str) -> Result<(), ClientError> {
        match self.call(CiRequest::Disable { repo: repo.into() }).await? {
            CiResponse::Done => Ok(()),
            other => Err(unexpected("ci_disable", &other)),
        }
    }

    pub async fn runs(&self, repo: Option<&str>, before: Option<u64>, limit: u32) -> Result<Vec<RunInfo>, ClientError> {
        match self.call(CiRequest::ListRuns { repo: repo.map(str::to_string), before, limit }).await? {
            CiResponse::Runs(runs) => Ok(runs),
            other => Err(unexpected("ci_runs", &other)),
        }
    }

    pub async fn show(&self, run: u64) -> Result<RunInfo, ClientError> {
        match self.call(CiRequest::ShowRun { run }).await? {
            CiResponse::Run(info) => Ok(info),
            other => Err(unexpected("ci_show", &other)),
        }
    }

    /// Starts a run of `ref_name` of `repo`; returns its number.
    pub async fn trigger(&self, repo: &str, ref_name: &str, force: bool) -> Result<u64, ClientError> {
        match self.call(CiRequest::Trigger { repo: repo.into(), ref_name: ref_name.into(), force }).await? {
            CiResponse::Started { run, .. } => Ok(run),
            other => Err(unexpected("ci_run", &other)),
        }
    }

    pub async fn cancel(&self, run: u64) -> Result<RunInfo, ClientError> {
        match self.call(CiRequest::Cancel { run }).await? {
            CiResponse::Run(info) => Ok(info),
            other => Err(unexpected("ci_cancel", &other)),
        }
    }

    /// Retries run `run` (or one job of it and what failed after it); returns the new run.
    pub async fn retry(&self, run: u64, job: Option<&str>) -> Result<u64, ClientError> {
        match self.call(CiRequest::Retry { run, job: job.map(str::to_string) }).await? {
            CiResponse::Started { run, .. } => Ok(run),
            other => Err(unexpected("ci_retry", &other)),
        }
    }

    /// Job `job`'s log as it is now (at most `MAX_READ_LOG` bytes).
    pub async fn read_log(&self, run: u64, job: &str) -> Result<Vec<u8>, ClientError> {
        match self.call(CiRequest::ReadLog { run, job: job.into() }).await? {
            CiResponse::Log(bytes) => Ok(bytes),
            other => Err(unexpected("ci_log", &other)),
        }
    }

    /// Follows job `job` of run `run`: `out` gets the log as it grows; returns how the job
    /// ended.
    pub async fn follow_log(
        &self,
        run: u64,
        job: &str,
        mut out: impl FnMut(&[u8]),
    ) -> Result<(State, Option<String>), ClientError> {
        let mut stream = self.channel.open_stream().await?;
        let node = stream.node.clone();
        let lost = |e: aspen_net::FrameError| ClientError::Connection {
            node: node.clone(),
            reason: format!("log stream: {e}"),
        };
        let request = CiRequest::FollowLog { run, job: job.into() };
        aspen_net::write_frame(&mut stream.send, &request).await.map_err(lost)?;
        loop {
            match aspen_net::read_frame::<CiResponse>(&mut stream.recv).await.map_err(lost)? {
                Some(CiResponse::Log(bytes)) => out(&bytes),
                Some(CiResponse::LogEnd { state, message }) => return Ok((state, message)),
                Some(CiResponse::Error(e)) => return Err(ClientError::Aspen(e)),
                Some(other) => return Err(unexpected("ci_logs", &other)),
                None => {
                    return Err(ClientError::Connection {
                        node: stream.node.clone(),
                        reason: "the node ended the log stream".into(),
                    });
                }
            }
        }
    }

    /// Trusts (or stops trusting) the patches `key` signs; answers the keys trusted after.
    pub async fn trust(&self, repo: &str, key: &str, trusted: bool) -> Result<Vec<String>, ClientError> {
        match self.call(CiRequest::Trust { repo: repo.into(), key: key.into(), trusted }).await? {
            CiResponse::Trusted(keys) => Ok(keys),
            other => Err(unexpected("ci_trust", &other)),
        }
    }

    pub async fn trusted(&self, repo: &str) -> Result<Vec<String>, ClientError> {
        match self.call(CiRequest::ListTrusted { repo: repo.into() }).await? {
            CiResponse::Trusted(keys) => Ok(keys),
            other => Err(unexpected("ci_trusted", &other)),
        }
    }

    /// Stores a secret; answers the repository's secret names after.
    pub async fn set_secret(&self, repo: &str, name: &str, value: &[u8]) -> Result<Vec<String>, ClientError> {
        match self.call(CiRequest::SetSecret { repo: repo.into(), name: name.into(), value: value.to_vec() }).await? {
            CiResponse::Secrets(names) => Ok(names),
            other => Err(unexpected("ci_secret_set", &other)),
        }
    }

    pub async fn delete_secret(&self, repo: &str, name: &str) -> Result<Vec<String>, ClientError> {
        match self.call(CiRequest::DeleteSecret { repo: repo.into(), name: name.into() }).await? {
            CiResponse::Secrets(names) => Ok(names),
            other => Err(unexpected("ci_secret_delete", &other)),
        }
    }

    pub async fn secrets(&self, repo: &str) -> Result<Vec<String>, ClientError> {
        match self.call(CiRequest::ListSecrets { repo: repo.into() }).await? {
            CiResponse::Secrets(names) => Ok(names),
            other => Err(unexpected("ci_secrets", &other)),
        }
    }

    /// The secrets of a job this worker runs, by name.
    pub async fn job_secrets(&self, run: u64, job: &str) -> Result<Vec<(String, Vec<u8>)>, ClientError> {
        match self.call(CiRequest::JobSecrets { run, job: job.into() }).await? {
            CiResponse::SecretValues(values) => Ok(values.into_iter().map(|(n, v)| (n, v.into_vec())).collect()),
            other => Err(unexpected("ci_job_secrets", &other)),
        }
    }

    /// Deletes finished runs past the newest `keep` of `repo` (or of every repository).
    pub async fn prune(&self, repo: Option<&str>, keep: u32) -> Result<crate::protocol::PruneReport, ClientError> {
        match self.call(CiRequest::Prune { repo: repo.map(str::to_string), keep }).await? {
            CiResponse::Pruned(report) => Ok(report),
            other => Err(unexpected("ci_prune", &other)),
        }
    }
}
