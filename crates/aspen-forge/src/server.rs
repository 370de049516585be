//! Serving the forge's protocol on a node: repository records and refs, read and written
//! through the KV the node gives the forge (its own prefix only).

use std::collections::BTreeMap;
use std::sync::Arc;

use aspen_app::{AppHandler, BoxFuture, Caller, NodeContext};
use aspen_core::AspenError;
use aspen_core::api::ReadConsistency;
use aspen_core::capability::Capability;
use aspen_core::command::{Compare, CompareOp, CompareTarget, Txn, TxnOp};
use aspen_core::keys::{key_successor, prefix_end};
use aspen_kv::{Kv, KvError, KvExt};
use iroh::endpoint::{RecvStream, SendStream};
use tracing::Instrument;

use crate::names::{validate_ref_name, validate_repo_name};
use crate::protocol::{ForgeRequest, ForgeResponse, GitService, MAX_LIST, RefEntry, RepoInfo, RepoSummary};
use crate::records::{self, ObjectId, PackRecord, RepoRecord};
use crate::rights::{self, ADMIN, PUSH, READ};
use crate::store::PackStore;

/// Attempts of a read-modify-write of a repository record that lost a race.
const RECORD_ATTEMPTS: usize = 8;

/// Deepest chain of forks a repository may sit at the end of.
pub const MAX_FORK_DEPTH: usize = 16;

/// The forge, started on one node.
pub struct ForgeHandler {
    ctx: NodeContext,
    pub(crate) store: PackStore,
}

impl ForgeHandler {
    pub fn new(ctx: NodeContext) -> Result<Self, AspenError> {
        let root = ctx.app_dir(rights::APP).map_err(|e| AspenError::internal(format!("forge directory: {e}")))?;
        let store = PackStore::open(root, ctx.services.clone())?;
        Ok(ForgeHandler { ctx, store })
    }
}

/// One repository as one push or fetch sees it: its record, refs and packs, read once.
#[derive(Debug, Clone)]
pub(crate) struct Snapshot {
    pub repo: String,
    pub record: RepoRecord,
    /// The record's mod revision: a push's transactions require it unchanged.
    pub record_revision: u64,
    pub refs: BTreeMap<String, ObjectId>,
    /// Its own packs, then its ancestors' (a fork reads its parent's objects).
    pub packs: Vec<(String, PackRecord)>,
    /// The tips of its ancestors' refs: objects a push to a fork may delta against.
    pub ancestor_tips: Vec<ObjectId>,
}

pub(crate) fn kv_error(e: KvError) -> AspenError {
    match e {
        KvError::Aspen(e) => e,
        other => AspenError::Unavailable { reason: other.to_string() },
    }
}

impl AppHandler for ForgeHandler {
    fn serve(self: Arc<Self>, caller: Caller, mut send: SendStream, mut recv: RecvStream) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            let request = match aspen_net::read_frame::<ForgeRequest>(&mut recv).await {
                Ok(Some(ForgeRequest::Connect { repo, service, protocol })) => {
                    self.connect(caller, repo, service, protocol, send, recv).await;
                    return;
                }
                Ok(Some(r)) => r,
                Ok(None) => return,
                Err(e) => {
                    let error = AspenError::UnknownRequest { detail: format!("forge request: {e}") };
                    let _ = aspen_net::write_frame(&mut send, &ForgeResponse::Error(error)).await;
                    let _ = send.finish();
                    return;
                }
            };
            let span = tracing::debug_span!("forge", op = request.name());
            let response = async {
                let caps = caller.capabilities()?;
                self.handle(&caps, request).await
            }
            .instrument(span)
            .await
            .unwrap_or_else(ForgeResponse::Error);
            let _ = aspen_net::write_frame(&mut send, &response).await;
            let _ = send.finish();
        })
    }
}

impl ForgeHandler {
    pub(crate) fn kv(&self) -> &dyn Kv {
        &*self.ctx.kv
    }

    /// Serves a `Connect`: checks the right, answers `Connected`, then runs the service.
    async fn connect(
        &self,
        caller: Caller,
        repo: String,
        service: GitService,
        protocol: String,
        mut send: SendStream,
        recv: RecvStream,
    ) {
        let span = tracing::debug_span!("forge", op = service.git_name(), repo = %repo);
        let ready = async {
            validate_repo_name(&repo)?;
            let caps = caller.capabilities()?;
            let right = match service {
                GitService::UploadPack => READ,
                GitService::ReceivePack => PUSH,
            };
            rights::require(&caps, right, &repo)?;
            self.snapshot(&repo).await
        }
        .instrument(span.clone())
        .await;
        let snapshot = match ready {
            Ok(s) => s,
            Err(e) => {
                let _ = aspen_net::write_frame(&mut send, &ForgeResponse::Error(e)).await;
                let _ = send.finish();
                return;
            }
        };
        if aspen_net::write_frame(&mut send, &ForgeResponse::Connected).await.is_err() {
            return;
        }
        let served = match service {
            GitService::UploadPack => self.upload_pack(snapshot, &protocol, send, recv).instrument(span.clone()).await,
            GitService::ReceivePack => self.receive_pack(&caller, snapshot, send, recv).instrument(span.clone()).await,
        };
        if let Err(e) = served {
            tracing::debug!(parent: &span, error = %e, "git service ended with an error");
        }
    }

    /// Reads `repo`'s record, refs and packs, and its ancestors' packs and tips.
    pub(crate) async fn snapshot(&self, repo: &str) -> Result<Snapshot, AspenError> {
        let (record, record_revision) = self.record(repo).await?;
        let refs = self.refs(repo).await?;
        let mut packs = self.packs(repo).await?;
        let mut ancestor_tips = Vec::new();
        let mut parent = record.parent.clone();
        let mut depth = 0;
        while let Some(name) = parent {
            depth += 1;
            if depth > MAX_FORK_DEPTH {
                return Err(AspenError::internal(format!("{repo:?} is more than {MAX_FORK_DEPTH} forks deep")));
            }
            let (ancestor, _) = self.record(&name).await.map_err(|_| {
                AspenError::internal(format!("{repo:?} is a fork of {name:?}, which does not exist any more"))
            })?;
            packs.extend(self.packs(&name).await?);
            ancestor_tips.extend(self.refs(&name).await?.into_values());
            parent = ancestor.parent;
        }
        ancestor_tips.sort();
        ancestor_tips.dedup();
        Ok(Snapshot { repo: repo.to_string(), record, record_revision, refs, packs, ancestor_tips })
    }

    async fn refs(&self, repo: &str) -> Result<BTreeMap<String, ObjectId>, AspenError> {
        let (kvs, _) =
            self.kv().scan_all(records::refs_prefix(repo), ReadConsistency::Linearizable).await.map_err(kv_error)?;
        let mut refs = BTreeMap::new();
        for kv in kvs {
            let Some(name) = records::ref_name(repo, &kv.key) else { continue };
            refs.insert(name.to_string(), records::object_id(&kv.value)?);
        }
        Ok(refs)
    }

    async fn packs(&self, repo: &str) -> Result<Vec<(String, PackRecord)>, AspenError> {
        let (kvs, _) =
            self.kv().scan_all(records::packs_prefix(repo), ReadConsistency::Linearizable).await.map_err(kv_error)?;
        let mut packs = Vec::with_capacity(kvs.len());
        for kv in kvs {
            let Some(name) = records::pack_name(repo, &kv.key) else { continue };
            packs.push((name.to_string(), records::decode(&kv.value, "a pack record")?));
        }
        Ok(packs)
    }

    async fn handle(&self, caps: &[Capability], request: ForgeRequest) -> Result<ForgeResponse, AspenError> {
        match request {
            ForgeRequest::CreateRepo { name, description, default_branch } => {
                validate_repo_name(&name)?;
                validate_ref_name(&crate::names::branch_ref(&default_branch))?;
                rights::require(caps, ADMIN, &name)?;
                self.create(&name, description, default_branch).await?;
                self.show(&name).await.map(ForgeResponse::Repo)
            }
            ForgeRequest::ListRepos { prefix, after, limit } => {
                rights::require(caps, READ, &prefix)?;
                let (repos, more) = self.list(&prefix, after.as_deref(), limit).await?;
                Ok(ForgeResponse::Repos { repos, more })
            }
            ForgeRequest::ShowRepo { name } => {
                validate_repo_name(&name)?;
                rights::require(caps, READ, &name)?;
                self.show(&name).await.map(ForgeResponse::Repo)
            }
            ForgeRequest::DeleteRepo { name } => {
                validate_repo_name(&name)?;
                rights::require(caps, ADMIN, &name)?;
                self.delete(&name).await.map(|()| ForgeResponse::Done)
            }
            ForgeRequest::Protect { repo, branch, protected } => {
                validate_repo_name(&repo)?;
                validate_ref_name(&crate::names::branch_ref(&branch))?;
                rights::require(caps, ADMIN, &repo)?;
                self.protect(&repo, &branch, protected).await?;
                self.show(&repo).await.map(ForgeResponse::Repo)
            }
            ForgeRequest::Connect { .. } => {
                Err(AspenError::UnknownRequest { detail: "git_connect is answered before requests are handled".into() })
            }
        }
    }

    async fn create(&self, name: &str, description: String, default_branch: String) -> Result<(), AspenError> {
        let record = RepoRecord {
            created_ms: aspen_net::now_ms(),
            description,
            default_branch,
            protected: Vec::new(),
            parent: None,
        };
        let key = records::repo_key(name);
        let txn = Txn {
            compare: vec![Compare { key: key.clone(), op: CompareOp::Equal, target: CompareTarget::Version(0) }],
            success: vec![TxnOp::Put { key, value: records::encode(&record)?, lease: None }],
            failure: Vec::new(),
        };
        let done = self.kv().txn(txn).await.map_err(kv_error)?;
        if !done.succeeded {
            return Err(AspenError::invalid(format!("repository {name:?} already exists")));
        }
        Ok(())
    }

    pub(crate) async fn record(&self, name: &str) -> Result<(RepoRecord, u64), AspenError> {
        let kv = self.kv().get(records::repo_key(name), ReadConsistency::Linearizable).await.map_err(kv_error)?;
        let kv = kv.ok_or_else(|| AspenError::invalid(format!("repository {name:?} does not exist")))?;
        Ok((records::decode(&kv.value, "a repository record")?, kv.mod_revision))
    }

    async fn show(&self, name: &str) -> Result<RepoInfo, AspenError> {
        let (record, _) = self.record(name).await?;
        let (kvs, _) =
            self.kv().scan_all(records::refs_prefix(name), ReadConsistency::Linearizable).await.map_err(kv_error)?;
        let mut refs = Vec::with_capacity(kvs.len());
        for kv in kvs {
            let Some(ref_name) = records::ref_name(name, &kv.key) else { continue };
            refs.push(RefEntry { name: ref_name.to_string(), id: records::object_id(&kv.value)? });
        }
        Ok(RepoInfo {
            name: name.to_string(),
            description: record.description,
            default_branch: record.default_branch,
            protected: record.protected,
            parent: record.parent,
            created_ms: record.created_ms,
            refs,
        })
    }

    async fn list(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<(Vec<RepoSummary>, bool), AspenError> {
        let limit = match limit {
            0 => 100,
            l if l > MAX_LIST => return Err(AspenError::invalid(format!("limit {l} is over MAX_LIST = {MAX_LIST}"))),
            l => l,
        };
        let range_start = records::repo_key(prefix);
        let start = match after {
            Some(after) => key_successor(&records::repo_key(after)).max(range_start.clone()),
            None => range_start.clone(),
        };
        let page = self
            .kv()
            .scan(start, prefix_end(&range_start), limit, ReadConsistency::Linearizable)
            .await
            .map_err(kv_error)?;
        let mut repos = Vec::with_capacity(page.kvs.len());
        for kv in &page.kvs {
            let Some(name) = records::repo_name(&kv.key) else { continue };
            let record: RepoRecord = records::decode(&kv.value, "a repository record")?;
            repos.push(RepoSummary { name: name.to_string(), description: record.description });
        }
        Ok((repos, page.more))
    }

    async fn delete(&self, name: &str) -> Result<(), AspenError> {
        let deleted = self.kv().delete(records::repo_key(name)).await.map_err(kv_error)?;
        if deleted.deleted == 0 {
            return Err(AspenError::invalid(format!("repository {name:?} does not exist")));
        }
        // The repository is gone once its record is; its refs follow.
        self.kv().delete_prefix(records::refs_prefix(name)).await.map_err(kv_error)?;
        Ok(())
    }

    async fn protect(&self, repo: &str, branch: &str, protected: bool) -> Result<(), AspenError> {
        for _ in 0..RECORD_ATTEMPTS {
            let (mut record, revision) = self.record(repo).await?;
            let already = record.protected.iter().any(|b| b == branch);
            if already == protected {
                return Ok(());
            }
            if protected {
                record.protected.push(branch.to_string());
                record.protected.sort();
            } else {
                record.protected.retain(|b| b != branch);
            }
            let key = records::repo_key(repo);
            let txn = Txn {
                compare: vec![Compare {
                    key: key.clone(),
                    op: CompareOp::Equal,
                    target: CompareTarget::ModRevision(revision),
                }],
                success: vec![TxnOp::Put { key, value: records::encode(&record)?, lease: None }],
                failure: Vec::new(),
            };
            match self.kv().txn(txn).await {
                Ok(done) if done.succeeded => return Ok(()),
                Ok(_) => continue,
                Err(e) if e.is_transient() => continue,
                Err(e) => return Err(kv_error(e)),
            }
        }
        Err(AspenError::Unavailable { reason: format!("repository {repo:?} kept changing; try again") })
    }
}
