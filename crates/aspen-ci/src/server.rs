//! Serving CI's protocol ([`crate::protocol`]) on a node, over [`CiService`].

use std::sync::Arc;
use std::time::Duration;

use aspen_app::{AppHandler, BoxFuture, Caller};
use aspen_blob::LocalBlobs;
use aspen_core::AspenError;
use aspen_core::capability::Capability;
use aspen_kv::{KvExt as _, ReadConsistency, SharedKv};
use futures::StreamExt;
use iroh::endpoint::{RecvStream, SendStream};
use tokio_util::sync::CancellationToken;

use crate::protocol::{CiRequest, CiResponse, RunInfo};
use crate::records::{self, JobRecord, State};
use crate::rights::{self, ADMIN, READ, RUN, SECRETS};
use crate::service::{CiService, NewRun, RunView};

/// Longest a followed log waits between looks when no change wakes it.
const FOLLOW_IDLE: Duration = Duration::from_secs(2);

/// CI, started on one node.
pub struct CiHandler {
    pub(crate) service: Arc<CiService>,
    pub(crate) kv: SharedKv,
    pub(crate) blobs: Option<Arc<LocalBlobs>>,
    pub(crate) secrets: Option<Arc<aspen_app::SecretBox>>,
    pub(crate) stop: CancellationToken,
}

fn info(view: RunView) -> RunInfo {
    RunInfo { number: view.number, run: view.run, jobs: view.jobs.into_iter().collect() }
}

fn no_run(run: u64) -> AspenError {
    AspenError::invalid(format!("there is no run {run}"))
}

impl AppHandler for CiHandler {
    fn shutdown(&self) -> BoxFuture<'static, ()> {
        self.stop.cancel();
        Box::pin(async {})
    }

    fn serve(self: Arc<Self>, caller: Caller, mut send: SendStream, mut recv: RecvStream) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            let request = match aspen_net::read_frame::<CiRequest>(&mut recv).await {
                Ok(Some(r)) => r,
                Ok(None) => return,
                Err(e) => {
                    let error = AspenError::UnknownRequest { detail: format!("ci request: {e}") };
                    let _ = aspen_net::write_frame(&mut send, &CiResponse::Error(error)).await;
                    let _ = send.finish();
                    return;
                }
            };
            let caps = match caller.capabilities() {
                Ok(caps) => caps,
                Err(e) => {
                    let _ = aspen_net::write_frame(&mut send, &CiResponse::Error(e)).await;
                    let _ = send.finish();
                    return;
                }
            };
            let who = records::hex(&caller.remote_key());
            if let CiRequest::FollowLog { run, job } = &request {
                if let Err(e) = self.follow_log(&caps, *run, job, &mut send).await {
                    let _ = aspen_net::write_frame(&mut send, &CiResponse::Error(e)).await;
                }
                let _ = send.finish();
                return;
            }
            let response = self.handle(&caps, &who, request).await.unwrap_or_else(CiResponse::Error);
            let _ = aspen_net::write_frame(&mut send, &response).await;
            let _ = send.finish();
        })
    }
}

impl CiHandler {
    async fn readable_run(&self, caps: &[Capability], run: u64) -> Result<RunView, AspenError> {
        let view = self.service.show(run).await?.ok_or_else(|| no_run(run))?;
        rights::require(caps, READ, &view.run.repo)?;
        Ok(view)
    }

    async fn handle(&self, caps: &[Capability], who: &str, request: CiRequest) -> Result<CiResponse, AspenError> {
        let service = &self.service;
        Ok(match request {
            CiRequest::Enable { repo } => {
                rights::require(caps, ADMIN, &repo)?;
                if !self.repo_exists(&repo).await? {
                    return Err(AspenError::invalid(format!(
                        "there is no repository {repo:?} in the forge; create it first (`aspen forge repo create {repo}`)"
                    )));
                }
                CiResponse::Repo(service.enable(&repo, who).await?)
            }
            CiRequest::Disable { repo } => {
                rights::require(caps, ADMIN, &repo)?;
                service.disable(&repo).await?;
                CiResponse::Done
            }
            CiRequest::ListRuns { repo, before, limit } => {
                if let Some(repo) = &repo {
                    rights::require(caps, READ, repo)?;
                }
                let mut runs = service.list(repo.as_deref(), before, limit).await?;
                runs.retain(|v| rights::allows(caps, READ, &v.run.repo));
                service.note_waiting(&mut runs).await;
                CiResponse::Runs(runs.into_iter().map(info).collect())
            }
            CiRequest::ShowRun { run } => {
                let mut views = vec![self.readable_run(caps, run).await?];
                service.note_waiting(&mut views).await;
                CiResponse::Run(info(views.remove(0)))
            }
            CiRequest::Trigger { repo, ref_name, force } => {
                rights::require(caps, RUN, &repo)?;
                if service.repo_config(&repo).await?.is_none() {
                    return Err(AspenError::invalid(format!(
                        "CI is not enabled for {repo:?}: `aspen ci enable {repo}` first"
                    )));
                }
                let (full, commit) = self.resolve_ref(&repo, &ref_name).await?;
                let new = NewRun {
                    repo,
                    ref_name: full,
                    commit,
                    trigger: records::Trigger::Manual { by: who.to_string() },
                    forced: force,
                    trusted: true,
                    jobs: None,
                };
                let source = format!("manual/{}", rand::random::<u64>());
                let (run, created) = service.create_run(&source, new).await?;
                CiResponse::Started { run, created }
            }
            CiRequest::Cancel { run } => {
                let view = service.show(run).await?.ok_or_else(|| no_run(run))?;
                rights::require(caps, RUN, &view.run.repo)?;
                service.cancel(run, who).await?;
                CiResponse::Run(info(service.show(run).await?.ok_or_else(|| no_run(run))?))
            }
            CiRequest::Retry { run, job } => {
                let view = service.show(run).await?.ok_or_else(|| no_run(run))?;
                rights::require(caps, RUN, &view.run.repo)?;
                let retried = service.retry(run, job.as_deref(), who).await?;
                CiResponse::Started { run: retried, created: true }
            }
            CiRequest::FollowLog { .. } => return Err(AspenError::internal("a log is followed on its own stream")),
            CiRequest::ReadLog { run, job } => {
                self.readable_run(caps, run).await?;
                CiResponse::Log(self.read_log(run, &job).await?)
            }
            CiRequest::Trust { repo, key, trusted } => {
                aspen_forge::names::validate_repo_name(&repo)?;
                rights::require(caps, ADMIN, &repo)?;
                CiResponse::Trusted(service.trust(&repo, &key, trusted).await?)
            }
            CiRequest::ListTrusted { repo } => {
                rights::require(caps, READ, &repo)?;
                CiResponse::Trusted(service.trusted(&repo).await?)
            }
            CiRequest::SetSecret { repo, name, value } => {
                aspen_forge::names::validate_repo_name(&repo)?;
                rights::require(caps, SECRETS, &repo)?;
                service.set_secret(self.secrets()?, &repo, &name, &value).await?;
                CiResponse::Secrets(service.secret_names(&repo).await?)
            }
            CiRequest::DeleteSecret { repo, name } => {
                rights::require(caps, SECRETS, &repo)?;
                if !service.delete_secret(&repo, &name).await? {
                    return Err(AspenError::invalid(format!("{repo} has no secret {name}")));
                }
                CiResponse::Secrets(service.secret_names(&repo).await?)
            }
            CiRequest::ListSecrets { repo } => {
                rights::require(caps, SECRETS, &repo)?;
                CiResponse::Secrets(service.secret_names(&repo).await?)
            }
            CiRequest::Prune { repo, keep } => {
                rights::require(caps, ADMIN, repo.as_deref().unwrap_or(""))?;
                CiResponse::Pruned(service.prune(repo.as_deref(), keep as usize).await?)
            }
            CiRequest::JobSecrets { run, job } => {
                let view = service.show(run).await?.ok_or_else(|| no_run(run))?;
                rights::require(caps, SECRETS, &view.run.repo)?;
                let values = service.job_secrets(self.secrets()?, run, &job).await?;
                CiResponse::SecretValues(values.into_iter().map(|(n, v)| (n, serde_bytes::ByteBuf::from(v))).collect())
            }
        })
    }

    fn secrets(&self) -> Result<&aspen_app::SecretBox, AspenError> {
        self.secrets.as_deref().ok_or_else(|| aspen_app::secrets::no_secrets_key(rights::APP))
    }

    async fn repo_exists(&self, repo: &str) -> Result<bool, AspenError> {
        let key = format!("{}{repo}", aspen_forge::records::REPO_PREFIX);
        Ok(self
            .kv
            .get(key, ReadConsistency::Linearizable)
            .await
            .map_err(|e| AspenError::internal(e.to_string()))?
            .is_some())
    }

    /// The full name and commit of `name` in `repo`: a full ref name, or a branch, or a tag.
    async fn resolve_ref(&self, repo: &str, name: &str) -> Result<(String, [u8; 20]), AspenError> {
        let candidates = if name.starts_with("refs/") {
            vec![name.to_string()]
        } else {
            vec![format!("refs/heads/{name}"), format!("refs/tags/{name}")]
        };
        for full in candidates {
            let key = format!("{}{repo}:{full}", aspen_forge::records::REF_PREFIX);
            if let Some(kv) = self
                .kv
                .get(key, ReadConsistency::Linearizable)
                .await
                .map_err(|e| AspenError::internal(e.to_string()))?
            {
                let id: [u8; 20] = kv
                    .value
                    .as_slice()
                    .try_into()
                    .map_err(|_| AspenError::internal(format!("ref {full} of {repo} is not a 20-byte id")))?;
                return Ok((full, id));
            }
        }
        Err(AspenError::invalid(format!("{repo} has no branch or tag {name:?}")))
    }

    /// Sends the job's log as it grows: its stored pieces in order, then new ones as they
    /// come, then the archived rest (past what the KV keeps), then `LogEnd`.
    async fn follow_log(
        &self,
        caps: &[Capability],
        run: u64,
        job: &str,
        send: &mut SendStream,
    ) -> Result<(), AspenError> {
        let view = self.readable_run(caps, run).await?;
        if !view.jobs.contains_key(job) && view.run.state.is_final() {
            return Err(AspenError::invalid(format!("run {run} has no job {job:?}")));
        }
        let lost = |e: aspen_net::FrameError| AspenError::Unavailable { reason: format!("the reader went away: {e}") };
        let mut attempt = 0u32;
        let mut next_seq = 0u32;
        let mut sent = 0u64;
        loop {
            let record = self.job(run, job).await?;
            let run_record = self.service.run(run).await?.map(|(_, r)| r);
            if let Some(record) = &record
                && record.attempt != attempt
            {
                if attempt != 0 {
                    let line = format!("\n--- attempt {} ---\n", record.attempt);
                    aspen_net::write_frame(send, &CiResponse::Log(line.into_bytes())).await.map_err(lost)?;
                }
                attempt = record.attempt;
                next_seq = 0;
                sent = 0;
            }
            // The pieces written so far.
            let prefix = records::log_prefix(run, job, attempt);
            let (kvs, revision) = self
                .kv
                .scan_all(&prefix, ReadConsistency::Linearizable)
                .await
                .map_err(|e| AspenError::internal(e.to_string()))?;
            for kv in kvs {
                let seq: u32 =
                    std::str::from_utf8(&kv.key[prefix.len()..]).ok().and_then(|s| s.parse().ok()).unwrap_or(0);
                if seq < next_seq {
                    continue;
                }
                next_seq = seq + 1;
                sent += kv.value.len() as u64;
                aspen_net::write_frame(send, &CiResponse::Log(kv.value)).await.map_err(lost)?;
            }
            let run_over = run_record.as_ref().is_none_or(|r| r.state.is_final());
            match &record {
                Some(record) if record.state.is_final() => {
                    self.send_archived_rest(record, sent, send).await?;
                    let end = CiResponse::LogEnd { state: record.state, message: record.message.clone() };
                    return aspen_net::write_frame(send, &end).await.map_err(lost);
                }
                None if run_over => {
                    let state = run_record.map(|r| r.state).unwrap_or(State::Error);
                    let end = CiResponse::LogEnd { state, message: Some(format!("run {run} ended without job {job}")) };
                    return aspen_net::write_frame(send, &end).await.map_err(lost);
                }
                _ => {}
            }
            // Wait for a new piece, or a change of the job.
            let mut watch = self.kv.watch(records::CI_PREFIX.as_bytes(), revision + 1);
            let job_key = records::job_key(run, job);
            let run_key = records::run_key(run);
            let wait = async {
                while let Some(Ok(event)) = watch.next().await {
                    if event.kv.key.starts_with(&prefix) || event.kv.key == job_key || event.kv.key == run_key {
                        return;
                    }
                }
            };
            tokio::select! {
                () = self.stop.cancelled() => return Err(AspenError::Unavailable { reason: "the node is stopping".into() }),
                () = wait => {}
                () = tokio::time::sleep(FOLLOW_IDLE) => {}
            }
        }
    }

    /// The job's log now: the archived blob once it ended, else the pieces in the KV.
    async fn read_log(&self, run: u64, job: &str) -> Result<Vec<u8>, AspenError> {
        let record =
            self.job(run, job).await?.ok_or_else(|| AspenError::invalid(format!("run {run} has no job {job:?}")))?;
        let max = crate::protocol::MAX_READ_LOG;
        let mut out = Vec::new();
        if record.state.is_final()
            && let (Some(blob), Some(blobs)) = (record.log_blob, &self.blobs)
        {
            let mut stream = blobs.read_range(blob, 0, record.log_bytes.min(max as u64)).await?;
            while let Some(chunk) = stream.next().await {
                out.extend_from_slice(&chunk?);
            }
            return Ok(out);
        }
        let prefix = records::log_prefix(run, job, record.attempt);
        let (kvs, _) = self
            .kv
            .scan_all(&prefix, ReadConsistency::Linearizable)
            .await
            .map_err(|e| AspenError::internal(e.to_string()))?;
        for kv in kvs {
            if out.len() + kv.value.len() > max {
                break;
            }
            out.extend_from_slice(&kv.value);
        }
        Ok(out)
    }

    async fn job(&self, run: u64, job: &str) -> Result<Option<JobRecord>, AspenError> {
        let key = records::job_key(run, job);
        let kv =
            self.kv.get(&key, ReadConsistency::Linearizable).await.map_err(|e| AspenError::internal(e.to_string()))?;
        kv.map(|kv| records::decode("a job", &key, &kv.value)).transpose()
    }

    /// The archived log past the `sent` bytes the KV held (a long log, or a reused job's).
    async fn send_archived_rest(&self, record: &JobRecord, sent: u64, send: &mut SendStream) -> Result<(), AspenError> {
        let (Some(blob), Some(blobs)) = (record.log_blob, &self.blobs) else { return Ok(()) };
        if record.log_bytes <= sent {
            return Ok(());
        }
        let mut stream = blobs.read_range(blob, sent, record.log_bytes - sent).await?;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            aspen_net::write_frame(send, &CiResponse::Log(chunk.to_vec()))
                .await
                .map_err(|e| AspenError::Unavailable { reason: format!("the reader went away: {e}") })?;
        }
        Ok(())
    }
}
