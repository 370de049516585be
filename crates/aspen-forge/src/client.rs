//! [`ForgeClient`]: the forge's protocol from a client, over an `aspen_client::Client`.

use aspen_client::{AppChannel, Client, ClientError};

use crate::protocol::{EventEntry, FORGE_ALPN, ForgeRequest, ForgeResponse, GcReport, RepoInfo, RepoSummary};
use crate::records::ObjectId;
use crate::status::{CommitStatus, StatusEntry};

/// The forge, as a client sees it. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ForgeClient {
    channel: AppChannel,
}

fn unexpected(request: &'static str, response: &ForgeResponse) -> ClientError {
    let mut text = format!("{response:?}");
    text.truncate(200);
    ClientError::UnexpectedResponse { request, response: text }
}

impl ForgeClient {
    /// The forge on `client`'s cluster, presenting its token.
    pub fn new(client: &Client) -> Self {
        ForgeClient { channel: client.app(FORGE_ALPN) }
    }

    async fn call(&self, request: ForgeRequest) -> Result<ForgeResponse, ClientError> {
        self.channel.call(request.name(), &request, request.is_repeatable()).await
    }

    async fn repo(&self, request: ForgeRequest) -> Result<RepoInfo, ClientError> {
        let name = request.name();
        match self.call(request).await? {
            ForgeResponse::Repo(info) => Ok(info),
            other => Err(unexpected(name, &other)),
        }
    }

    /// Creates an empty repository whose `HEAD` names `default_branch`.
    pub async fn create_repo(
        &self,
        name: &str,
        description: &str,
        default_branch: &str,
    ) -> Result<RepoInfo, ClientError> {
        self.repo(ForgeRequest::CreateRepo {
            name: name.into(),
            description: description.into(),
            default_branch: default_branch.into(),
        })
        .await
    }

    /// A repository and its refs.
    pub async fn show_repo(&self, name: &str) -> Result<RepoInfo, ClientError> {
        self.repo(ForgeRequest::ShowRepo { name: name.into() }).await
    }

    /// Up to `limit` repositories whose names start with `prefix`, after `after`, and
    /// whether more follow.
    pub async fn list_repos(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<(Vec<RepoSummary>, bool), ClientError> {
        let request = ForgeRequest::ListRepos { prefix: prefix.into(), after: after.map(str::to_string), limit };
        match self.call(request).await? {
            ForgeResponse::Repos { repos, more } => Ok((repos, more)),
            other => Err(unexpected("repo_list", &other)),
        }
    }

    /// Deletes a repository and its refs.
    pub async fn delete_repo(&self, name: &str) -> Result<(), ClientError> {
        match self.call(ForgeRequest::DeleteRepo { name: name.into() }).await? {
            ForgeResponse::Done => Ok(()),
            other => Err(unexpected("repo_delete", &other)),
        }
    }

    /// Protects `branch` (or lifts its protection).
    pub async fn protect(&self, repo: &str, branch: &str, protected: bool) -> Result<RepoInfo, ClientError> {
        self.repo(ForgeRequest::Protect { repo: repo.into(), branch: branch.into(), protected }).await
    }

    /// Creates `name` as a fork of `source`, sharing its objects.
    pub async fn fork_repo(&self, source: &str, name: &str) -> Result<RepoInfo, ClientError> {
        self.repo(ForgeRequest::ForkRepo { source: source.into(), name: name.into() }).await
    }

    /// Collects `repo`'s garbage now; `grace_ms` overrides the node's grace period.
    pub async fn collect_garbage(&self, repo: &str, grace_ms: Option<u64>) -> Result<GcReport, ClientError> {
        match self.call(ForgeRequest::CollectGarbage { repo: repo.into(), grace_ms }).await? {
            ForgeResponse::Collected(report) => Ok(report),
            other => Err(unexpected("repo_gc", &other)),
        }
    }

    /// One page of push events of repositories under `prefix`, from revision `from` on, and
    /// the revision to continue from.
    pub async fn events(&self, prefix: &str, from: u64, limit: u32) -> Result<(Vec<EventEntry>, u64), ClientError> {
        let request = ForgeRequest::Events { prefix: prefix.into(), from_revision: from, limit, follow: false };
        match self.call(request).await? {
            ForgeResponse::Events { events, next_revision } => Ok((events, next_revision)),
            other => Err(unexpected("events", &other)),
        }
    }

    /// Follows push events of repositories under `prefix` from revision `from`: `on_batch`
    /// gets each batch in order, with the revision to continue from, until it returns
    /// false or the stream ends (then an error says why; follow again from the last
    /// revision it was given).
    pub async fn follow_events(
        &self,
        prefix: &str,
        from: u64,
        mut on_batch: impl FnMut(Vec<EventEntry>, u64) -> bool,
    ) -> Result<(), ClientError> {
        let mut stream = self.channel.open_stream().await?;
        let request = ForgeRequest::Events { prefix: prefix.into(), from_revision: from, limit: 0, follow: true };
        let node = stream.node.clone();
        let lost = |e: aspen_net::FrameError| ClientError::Connection {
            node: node.clone(),
            reason: format!("event stream: {e}"),
        };
        aspen_net::write_frame(&mut stream.send, &request).await.map_err(lost)?;
        loop {
            match aspen_net::read_frame::<ForgeResponse>(&mut stream.recv).await.map_err(lost)? {
                Some(ForgeResponse::Events { events, next_revision }) => {
                    if !on_batch(events, next_revision) {
                        return Ok(());
                    }
                }
                Some(ForgeResponse::Error(e)) => return Err(ClientError::Aspen(e)),
                Some(other) => return Err(unexpected("events", &other)),
                None => {
                    return Err(ClientError::Connection {
                        node: stream.node.clone(),
                        reason: "the node ended the event stream".into(),
                    });
                }
            }
        }
    }

    /// Appends a signed change to an issue or patch (or opens one with a root change).
    pub async fn append_change(
        &self,
        repo: &str,
        change: &crate::cob::SignedChange,
    ) -> Result<crate::cob::CobState, ClientError> {
        let kind = change.verify().map_err(ClientError::Aspen)?.kind;
        let request = ForgeRequest::AppendChange { repo: repo.into(), kind, change: change.encode() };
        match self.call(request).await? {
            ForgeResponse::Cob(state) => Ok(state),
            other => Err(unexpected("cob_append", &other)),
        }
    }

    /// Merges a patch with a signed change carrying its `Merged` action.
    pub async fn merge_patch(
        &self,
        repo: &str,
        change: &crate::cob::SignedChange,
    ) -> Result<crate::cob::CobState, ClientError> {
        let request = ForgeRequest::MergePatch { repo: repo.into(), change: change.encode() };
        match self.call(request).await? {
            ForgeResponse::Cob(state) => Ok(state),
            other => Err(unexpected("patch_merge", &other)),
        }
    }

    /// Reports `context`'s status of `commit`; answers every context's status after it.
    pub async fn set_status(
        &self,
        repo: &str,
        commit: ObjectId,
        context: &str,
        status: &CommitStatus,
    ) -> Result<Vec<StatusEntry>, ClientError> {
        let request = ForgeRequest::SetStatus {
            repo: repo.into(),
            commit,
            context: context.into(),
            state: status.state,
            description: status.description.clone(),
            target: status.target.clone(),
            seq: status.seq,
        };
        match self.call(request).await? {
            ForgeResponse::Statuses { statuses, .. } => Ok(statuses),
            other => Err(unexpected("status_set", &other)),
        }
    }

    /// Every context's status of `commit`.
    pub async fn statuses(&self, repo: &str, commit: ObjectId) -> Result<Vec<StatusEntry>, ClientError> {
        match self.call(ForgeRequest::ListStatuses { repo: repo.into(), commit }).await? {
            ForgeResponse::Statuses { statuses, .. } => Ok(statuses),
            other => Err(unexpected("status_list", &other)),
        }
    }

    /// An issue or patch by id (or unique prefix): its state, folded again here from its
    /// signed changes, each verified, so the answer does not rest on the node's word.
    pub async fn show_cob(
        &self,
        repo: &str,
        kind: crate::cob::CobKind,
        id: &str,
    ) -> Result<(crate::cob::CobState, Vec<crate::cob::SignedChange>), ClientError> {
        let request = ForgeRequest::ShowCob { repo: repo.into(), kind, id: id.into() };
        match self.call(request).await? {
            ForgeResponse::CobDetail { state, changes } => {
                let mut signed = Vec::with_capacity(changes.len());
                let mut set = Vec::with_capacity(changes.len());
                for bytes in changes {
                    let change = crate::cob::SignedChange::decode(&bytes)?;
                    set.push((change.id(), change.verify()?));
                    signed.push(change);
                }
                let folded = crate::cob::fold(&set)?;
                if folded != state {
                    return Err(ClientError::Protocol {
                        node: String::new(),
                        reason: "the node's state of the object differs from the fold of its changes".into(),
                    });
                }
                Ok((folded, signed))
            }
            other => Err(unexpected("cob_show", &other)),
        }
    }

    /// Summaries of `repo`'s issues or patches after id `after`, and whether more follow.
    pub async fn list_cobs(
        &self,
        repo: &str,
        kind: crate::cob::CobKind,
        after: Option<&str>,
        limit: u32,
    ) -> Result<(Vec<crate::cob_index::CobSummary>, bool), ClientError> {
        let request = ForgeRequest::ListCobs { repo: repo.into(), kind, after: after.map(str::to_string), limit };
        match self.call(request).await? {
            ForgeResponse::Cobs { cobs, more } => Ok((cobs, more)),
            other => Err(unexpected("cob_list", &other)),
        }
    }
}
