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

use crate::ForgeSettings;
use crate::names::{validate_ref_name, validate_repo_name};
use crate::protocol::{ForgeRequest, ForgeResponse, GitService, MAX_LIST, RefEntry, RepoInfo, RepoSummary};
use crate::records::{self, ObjectId, PackRecord, RepoRecord};
use crate::rights::{self, ADMIN, PUSH, READ};
use crate::status::StatusEntry;
use crate::store::PackStore;

/// Attempts of a read-modify-write of a repository record that lost a race.
const RECORD_ATTEMPTS: usize = 8;

/// Deepest chain of forks a repository may sit at the end of.
pub const MAX_FORK_DEPTH: usize = 16;

/// Most refs a fork copies: they go in one transaction with its record.
pub const MAX_FORK_REFS: usize = 120;

/// The forge, started on one node.
pub struct ForgeHandler {
    pub(crate) ctx: NodeContext,
    pub(crate) store: PackStore,
    pub(crate) settings: ForgeSettings,
    stop: tokio_util::sync::CancellationToken,
}

impl ForgeHandler {
    pub fn new(ctx: NodeContext, settings: ForgeSettings) -> Result<Self, AspenError> {
        let root = ctx.app_dir(rights::APP).map_err(|e| AspenError::internal(format!("forge directory: {e}")))?;
        let store = PackStore::open(root, ctx.services.clone())?;
        Ok(ForgeHandler { ctx, store, settings, stop: tokio_util::sync::CancellationToken::new() })
    }

    /// Starts the background rounds: the leader collects every repository's garbage, and
    /// every node prunes its copies of packs no repository holds any more.
    pub fn start_background(self: &Arc<Self>) {
        if self.settings.gc_interval.is_zero() {
            return;
        }
        let me = Arc::downgrade(self);
        let stop = self.stop.clone();
        let interval = self.settings.gc_interval;
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(interval) => {}
                }
                let Some(me) = me.upgrade() else { return };
                me.gc_round().await;
            }
        });
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

/// The most events one answer carries: `limit`, 0 meaning 1,000.
fn page_limit(limit: u32) -> Result<usize, AspenError> {
    match limit {
        0 => Ok(1_000),
        l if l > MAX_LIST => Err(AspenError::invalid(format!("limit {l} is over MAX_LIST = {MAX_LIST}"))),
        l => Ok(l as usize),
    }
}

/// Takes the first page of at most `limit` events off `found` (in revision order). One
/// transaction writes several events at one revision: a page never splits them.
fn take_page(
    found: &mut Vec<crate::protocol::EventEntry>,
    limit: usize,
) -> Result<Vec<crate::protocol::EventEntry>, AspenError> {
    if found.len() <= limit {
        return Ok(std::mem::take(found));
    }
    let cut_revision = found[limit].revision;
    let end = found.iter().position(|e| e.revision >= cut_revision).unwrap_or(found.len());
    if end == 0 {
        return Err(AspenError::invalid(format!("limit {limit} is smaller than one push's events")));
    }
    Ok(found.drain(..end).collect())
}

impl AppHandler for ForgeHandler {
    fn shutdown(&self) -> BoxFuture<'static, ()> {
        self.stop.cancel();
        Box::pin(async {})
    }

    fn serve(self: Arc<Self>, caller: Caller, mut send: SendStream, mut recv: RecvStream) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            let request = match aspen_net::read_frame::<ForgeRequest>(&mut recv).await {
                Ok(Some(ForgeRequest::Connect { repo, service, protocol })) => {
                    self.connect(caller, repo, service, protocol, send, recv).await;
                    return;
                }
                Ok(Some(ForgeRequest::Events { prefix, from_revision, limit, follow: true })) => {
                    if let Err(e) = self.follow_events(&caller, &prefix, from_revision, limit, &mut send).await {
                        let _ = aspen_net::write_frame(&mut send, &ForgeResponse::Error(e)).await;
                    }
                    let _ = send.finish();
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
                if let ForgeRequest::SetStatus { repo, commit, context, state, description, target, seq } = request {
                    validate_repo_name(&repo)?;
                    rights::require(&caps, PUSH, &repo)?;
                    let status = crate::status::CommitStatus {
                        state,
                        description,
                        target,
                        seq,
                        by: data_encoding::HEXLOWER.encode(&caller.remote_key()),
                        updated_ms: aspen_net::now_ms(),
                    };
                    self.set_status(&repo, &commit, &context, &status).await?;
                    let statuses = self.statuses(&repo, &commit).await?;
                    return Ok(ForgeResponse::Statuses { commit, statuses });
                }
                if let ForgeRequest::MergePatch { repo, change } = request {
                    validate_repo_name(&repo)?;
                    rights::require(&caps, PUSH, &repo)?;
                    let pusher = data_encoding::HEXLOWER.encode(&caller.remote_key());
                    let state = self.append_change(&repo, crate::cob::CobKind::Patch, change, Some(&pusher)).await?;
                    return Ok(ForgeResponse::Cob(state));
                }
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

    /// Serves a followed event stream: every page from `from_revision` up to now, then each
    /// event as the KV watch delivers it, until the client goes away. The scan and the watch
    /// meet at one revision, so nothing falls between them.
    async fn follow_events(
        &self,
        caller: &Caller,
        prefix: &str,
        from_revision: u64,
        limit: u32,
        send: &mut SendStream,
    ) -> Result<(), AspenError> {
        let caps = caller.capabilities()?;
        rights::require(&caps, READ, prefix)?;
        let limit = page_limit(limit)?;
        let closed = |e: aspen_net::FrameError| AspenError::Unavailable { reason: format!("event stream: {e}") };
        // What is stored, read once, sent in pages; then the watch from the next revision.
        let (mut found, read_at) = self.events_since(prefix, from_revision).await?;
        loop {
            let events = take_page(&mut found, limit)?;
            let next_revision = found.first().map_or(read_at + 1, |e| e.revision);
            aspen_net::write_frame(send, &ForgeResponse::Events { events, next_revision }).await.map_err(closed)?;
            if found.is_empty() {
                break;
            }
        }
        let mut watch = self.kv().watch(records::EVENT_PREFIX.as_bytes(), read_at + 1);
        loop {
            let item = tokio::select! {
                item = watch.next() => item,
                _ = send.stopped() => return Ok(()),
            };
            let Some(item) = item else {
                return Err(AspenError::Unavailable { reason: "the event watch ended; follow again".into() });
            };
            let change = item.map_err(kv_error)?;
            if change.kind != aspen_kv::EventKind::Put {
                continue;
            }
            let revision = change.revision();
            let event: records::PushEvent = records::decode(&change.kv.value, "a push event")?;
            if !event.repo.starts_with(prefix) {
                continue;
            }
            let entry = crate::protocol::EventEntry { revision, event };
            let answer = ForgeResponse::Events { events: vec![entry], next_revision: revision + 1 };
            aspen_net::write_frame(send, &answer).await.map_err(closed)?;
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

    pub(crate) async fn packs(&self, repo: &str) -> Result<Vec<(String, PackRecord)>, AspenError> {
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
            ForgeRequest::ForkRepo { source, name } => {
                validate_repo_name(&source)?;
                validate_repo_name(&name)?;
                rights::require(caps, READ, &source)?;
                rights::require(caps, ADMIN, &name)?;
                self.fork(&source, &name).await?;
                self.show(&name).await.map(ForgeResponse::Repo)
            }
            ForgeRequest::CollectGarbage { repo, grace_ms } => {
                validate_repo_name(&repo)?;
                rights::require(caps, ADMIN, &repo)?;
                let grace = grace_ms.map(std::time::Duration::from_millis).unwrap_or(self.settings.gc_grace);
                self.collect(&repo, grace).await.map(ForgeResponse::Collected)
            }
            ForgeRequest::Events { prefix, from_revision, limit, follow: _ } => {
                rights::require(caps, READ, &prefix)?;
                let limit = page_limit(limit)?;
                let (mut found, read_at) = self.events_since(&prefix, from_revision).await?;
                let events = take_page(&mut found, limit)?;
                let next_revision = found.first().map_or(read_at + 1, |e| e.revision);
                Ok(ForgeResponse::Events { events, next_revision })
            }
            ForgeRequest::AppendChange { repo, kind, change } => {
                validate_repo_name(&repo)?;
                rights::require(caps, READ, &repo)?;
                self.append_change(&repo, kind, change, None).await.map(ForgeResponse::Cob)
            }
            ForgeRequest::ShowCob { repo, kind, id } => {
                validate_repo_name(&repo)?;
                rights::require(caps, READ, &repo)?;
                let (state, changes) = self.show_cob(&repo, kind, &id).await?;
                Ok(ForgeResponse::CobDetail {
                    state,
                    changes: changes.into_iter().map(serde_bytes::ByteBuf::from).collect(),
                })
            }
            ForgeRequest::ListCobs { repo, kind, after, limit } => {
                validate_repo_name(&repo)?;
                rights::require(caps, READ, &repo)?;
                let (cobs, more) = self.list_cobs(&repo, kind, after.as_deref(), limit).await?;
                Ok(ForgeResponse::Cobs { cobs, more })
            }
            ForgeRequest::ListStatuses { repo, commit } => {
                validate_repo_name(&repo)?;
                rights::require(caps, READ, &repo)?;
                let statuses = self.statuses(&repo, &commit).await?;
                Ok(ForgeResponse::Statuses { commit, statuses })
            }
            ForgeRequest::MergePatch { .. } | ForgeRequest::SetStatus { .. } => Err(AspenError::UnknownRequest {
                detail: format!("{} is answered with the caller's key", request.name()),
            }),
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
            success: vec![TxnOp::Put { key: key.clone(), value: records::encode(&record)?, lease: None }],
            failure: Vec::new(),
        };
        if self.kv().get(&key, ReadConsistency::Linearizable).await.map_err(kv_error)?.is_some() {
            return Err(AspenError::invalid(format!("repository {name:?} already exists")));
        }
        self.remove_leftovers(name).await?;
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

    /// Deletes repository `name`: its record (refused while forks share its packs), then its
    /// refs, pack records and pins, whose blobs the blob store's collection then removes.
    async fn delete(&self, name: &str) -> Result<(), AspenError> {
        let (record, revision) = self.record(name).await?;
        let forks = self.forks(name).await?;
        if !forks.is_empty() {
            return Err(AspenError::invalid(format!(
                "repository {name:?} has forks that share its objects ({}); delete them first",
                forks.join(", ")
            )));
        }
        let key = records::repo_key(name);
        let mut success = vec![TxnOp::Delete { key: key.clone() }];
        if let Some(parent) = &record.parent {
            success.push(TxnOp::Delete { key: records::fork_key(parent, name) });
        }
        // A fork being made of it re-puts its record, so this compare fails then.
        let txn = Txn {
            compare: vec![Compare { key, op: CompareOp::Equal, target: CompareTarget::ModRevision(revision) }],
            success,
            failure: Vec::new(),
        };
        if !self.kv().txn(txn).await.map_err(kv_error)?.succeeded {
            return Err(AspenError::Unavailable {
                reason: format!("repository {name:?} changed while deleting it; try again"),
            });
        }
        self.remove_leftovers(name).await
    }

    /// Removes the refs, packs (with their pins) and activity marker left under `name` by a
    /// deleted repository. Run after a delete, and before a create in case a delete was cut
    /// short.
    async fn remove_leftovers(&self, name: &str) -> Result<(), AspenError> {
        self.kv().delete_prefix(records::refs_prefix(name)).await.map_err(kv_error)?;
        let packs = self.packs(name).await?;
        for chunk in packs.chunks(20) {
            let mut success = Vec::with_capacity(chunk.len() * 5);
            for (pack, record) in chunk {
                success.extend(records::pack_delete_ops(name, pack, record));
            }
            self.kv().txn(Txn { compare: Vec::new(), success, failure: Vec::new() }).await.map_err(kv_error)?;
        }
        self.kv().delete(records::activity_key(name)).await.map_err(kv_error)?;
        self.kv().delete_prefix(crate::status::repo_prefix(name)).await.map_err(kv_error)?;
        Ok(())
    }

    /// Every context's status of `commit` in `repo`.
    pub(crate) async fn statuses(&self, repo: &str, commit: &ObjectId) -> Result<Vec<StatusEntry>, AspenError> {
        self.record(repo).await?;
        let prefix = crate::status::commit_prefix(repo, commit);
        let (kvs, _) = self.kv().scan_all(&prefix, ReadConsistency::Linearizable).await.map_err(kv_error)?;
        let mut out = Vec::with_capacity(kvs.len());
        for kv in kvs {
            let Some(context) = crate::status::context_of(&prefix, &kv.key) else { continue };
            out.push(StatusEntry {
                context: context.to_string(),
                status: records::decode(&kv.value, "a commit status")?,
            });
        }
        Ok(out)
    }

    /// Stores `context`'s report on `commit`, which `repo` must hold, unless a newer one is
    /// stored.
    async fn set_status(
        &self,
        repo: &str,
        commit: &ObjectId,
        context: &str,
        status: &crate::status::CommitStatus,
    ) -> Result<(), AspenError> {
        crate::status::validate_context(context)?;
        self.record(repo).await?;
        let snapshot = self.snapshot(repo).await?;
        let indexes = self.store.index_paths(&snapshot.packs).await?;
        let id = *commit;
        let kind = tokio::task::spawn_blocking(move || crate::objects::PackSet::open(&indexes)?.kind(&id))
            .await
            .map_err(|e| AspenError::internal(format!("looking the commit up: {e}")))??;
        if kind != Some(gix_object::Kind::Commit) {
            return Err(AspenError::invalid(format!(
                "{repo:?} holds no commit {}: push it first",
                records::hex(commit)
            )));
        }
        let key = crate::status::status_key(repo, commit, context);
        for _ in 0..10 {
            let current = self.kv().get(&key, ReadConsistency::Linearizable).await.map_err(kv_error)?;
            let Some((compare, op)) = crate::status::status_step(
                repo,
                commit,
                context,
                status,
                current.as_ref().map(|kv| (kv.value.as_slice(), kv.mod_revision)),
            )?
            else {
                return Ok(());
            };
            let txn = Txn { compare: vec![compare], success: vec![op], failure: Vec::new() };
            if self.kv().txn(txn).await.map_err(kv_error)?.succeeded {
                return Ok(());
            }
        }
        Err(AspenError::Unavailable { reason: format!("the {context} status of a commit kept changing; try again") })
    }

    /// The names of `parent`'s forks.
    pub(crate) async fn forks(&self, parent: &str) -> Result<Vec<String>, AspenError> {
        let (kvs, _) =
            self.kv().scan_all(records::forks_prefix(parent), ReadConsistency::Linearizable).await.map_err(kv_error)?;
        Ok(kvs.iter().filter_map(|kv| records::fork_name(parent, &kv.key).map(str::to_string)).collect())
    }

    /// Makes `name` a fork of `source`: a record naming its parent and a copy of its refs, in
    /// one transaction that also re-puts the parent's record, so a collection or delete of
    /// the parent that read it before fails its compare.
    async fn fork(&self, source: &str, name: &str) -> Result<(), AspenError> {
        let (parent, parent_revision) = self.record(source).await?;
        let mut depth = 1;
        let mut up = parent.parent.clone();
        while let Some(ancestor) = up {
            depth += 1;
            if depth > MAX_FORK_DEPTH {
                return Err(AspenError::invalid(format!(
                    "{source:?} is already {MAX_FORK_DEPTH} forks deep; fork its ancestor instead"
                )));
            }
            up = self.record(&ancestor).await?.0.parent;
        }
        let refs = self.refs(source).await?;
        if refs.len() > MAX_FORK_REFS {
            return Err(AspenError::invalid(format!(
                "{source:?} has {} refs, over the {MAX_FORK_REFS} a fork copies in its one transaction",
                refs.len()
            )));
        }
        self.remove_leftovers(name).await?;
        let record = RepoRecord {
            created_ms: aspen_net::now_ms(),
            description: parent.description.clone(),
            default_branch: parent.default_branch.clone(),
            protected: parent.protected.clone(),
            parent: Some(source.to_string()),
        };
        let key = records::repo_key(name);
        let parent_key = records::repo_key(source);
        let mut success = vec![
            TxnOp::Put { key: key.clone(), value: records::encode(&record)?, lease: None },
            TxnOp::Put { key: parent_key.clone(), value: records::encode(&parent)?, lease: None },
            TxnOp::Put { key: records::fork_key(source, name), value: Vec::new(), lease: None },
        ];
        for (ref_name, id) in &refs {
            success.push(TxnOp::Put { key: records::ref_key(name, ref_name), value: id.to_vec(), lease: None });
        }
        let txn = Txn {
            compare: vec![
                Compare { key, op: CompareOp::Equal, target: CompareTarget::Version(0) },
                Compare { key: parent_key, op: CompareOp::Equal, target: CompareTarget::ModRevision(parent_revision) },
            ],
            success,
            failure: Vec::new(),
        };
        if !self.kv().txn(txn).await.map_err(kv_error)?.succeeded {
            if self.record(name).await.is_ok() {
                return Err(AspenError::invalid(format!("repository {name:?} already exists")));
            }
            return Err(AspenError::Unavailable {
                reason: format!("repository {source:?} changed while forking it; try again"),
            });
        }
        Ok(())
    }

    /// Push events of repositories under `prefix` written at `from_revision` or later, in
    /// revision order, read at one revision, which is returned with them.
    pub(crate) async fn events_since(
        &self,
        prefix: &str,
        from_revision: u64,
    ) -> Result<(Vec<crate::protocol::EventEntry>, u64), AspenError> {
        let (kvs, read_at) = self
            .kv()
            .scan_all(records::EVENT_PREFIX.as_bytes(), ReadConsistency::Linearizable)
            .await
            .map_err(kv_error)?;
        let mut found = Vec::new();
        for kv in kvs {
            if kv.mod_revision < from_revision {
                continue;
            }
            let event: records::PushEvent = records::decode(&kv.value, "a push event")?;
            if event.repo.starts_with(prefix) {
                found.push(crate::protocol::EventEntry { revision: kv.mod_revision, event });
            }
        }
        found.sort_by_key(|e| e.revision);
        Ok((found, read_at))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::EventEntry;

    fn at(revision: u64) -> EventEntry {
        let event = records::PushEvent {
            repo: "r".into(),
            ref_name: "refs/heads/main".into(),
            old: None,
            new: Some([1; 20]),
            pusher: String::new(),
            time_ms: 0,
        };
        EventEntry { revision, event }
    }

    #[test]
    fn pages_never_split_one_transaction_s_events() {
        let revisions = |page: &[EventEntry]| page.iter().map(|e| e.revision).collect::<Vec<_>>();
        let mut found = vec![at(1), at(2), at(2), at(3)];
        assert_eq!(revisions(&take_page(&mut found, 2).unwrap()), [1]);
        assert_eq!(revisions(&take_page(&mut found, 2).unwrap()), [2, 2]);
        assert_eq!(revisions(&take_page(&mut found, 2).unwrap()), [3]);
        assert!(found.is_empty() && take_page(&mut found, 2).unwrap().is_empty());
        let mut found = vec![at(2), at(2)];
        assert!(take_page(&mut found, 1).unwrap_err().to_string().contains("smaller than one push"));
        assert_eq!(page_limit(0).unwrap(), 1_000);
        assert!(page_limit(MAX_LIST + 1).is_err());
    }
}
