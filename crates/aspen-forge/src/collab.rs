//! Serving issues and patches: collaborative objects ([`crate::cob`]) stored as signed
//! changes in the blob store, with their index and a folded summary in the KV.
//!
//! Appending a change: verify its signature and structure, require its object to exist (or
//! not, for a root) and every parent to be stored, store the change as a blob, fold the
//! object's changes with the new one, and in one transaction record the change, pin its
//! blob and rewrite the summary, compared against the summary read. Two clients that append
//! at once both land (the loser of the compare folds again); the fold merges their edits.
//!
//! Merging a patch is a change with a `Merged` action that also moves the target branch:
//! the same transaction compares the branch and the repository record as a push does, moves
//! the branch, writes the push event and records the change.

use std::time::Duration;

use aspen_core::AspenError;
use aspen_core::api::ReadConsistency;
use aspen_core::command::{Compare, CompareOp, CompareTarget, Txn, TxnOp};
use aspen_kv::KvExt;
use futures::StreamExt;

use crate::cob::{self, Action, Change, ChangeId, CobKind, CobState, CobStatus, SignedChange};
use crate::cob_index::{self, CobSummary};
use crate::names::branch_ref;
use crate::objects::PackSet;
use crate::records::{self, PushEvent};
use crate::server::{ForgeHandler, kv_error};

/// Attempts at an append whose summary changed under it.
const APPEND_ATTEMPTS: usize = 16;
/// Most changes one issue or patch may have.
pub const MAX_CHANGES: usize = 10_000;
/// Shortest id prefix a request may name an object by.
pub const MIN_ID_PREFIX: usize = 6;

/// An object's stored changes and the summary's mod revision (0: no summary yet).
struct Stored {
    changes: Vec<(ChangeId, Change, Vec<u8>)>,
    summary_revision: u64,
}

impl ForgeHandler {
    /// Reads every change of object `id`, verifying each again (the blob store is
    /// content-addressed, so the bytes are the ones the change id names).
    async fn stored_changes(&self, repo: &str, kind: CobKind, id: &ChangeId) -> Result<Stored, AspenError> {
        let summary =
            self.kv().get(cob_index::cob_key(repo, kind, id), ReadConsistency::Linearizable).await.map_err(kv_error)?;
        let summary_revision = summary.map(|kv| kv.mod_revision).unwrap_or(0);
        let (kvs, _) = self
            .kv()
            .scan_all(cob_index::changes_prefix(repo, kind, id), ReadConsistency::Linearizable)
            .await
            .map_err(kv_error)?;
        if kvs.len() > MAX_CHANGES {
            return Err(AspenError::invalid(format!("{kind} {} has over {MAX_CHANGES} changes", cob::short_id(id))));
        }
        let blobs = self.store.blobs()?;
        let mut changes = Vec::with_capacity(kvs.len());
        for kv in kvs {
            let hex = std::str::from_utf8(&kv.key).ok().and_then(|k| k.rsplit('/').next()).unwrap_or_default();
            let change_id = cob::parse_id(hex)?;
            let mut bytes = Vec::new();
            let mut stream = blobs.read_range(change_id, 0, cob::MAX_SIGNED_CHANGE_BYTES as u64).await?;
            while let Some(chunk) = stream.next().await {
                bytes.extend_from_slice(&chunk?);
            }
            let signed = SignedChange::decode(&bytes)?;
            if signed.id() != change_id {
                return Err(AspenError::internal(format!(
                    "change {} is stored under another id",
                    cob::short_id(&change_id)
                )));
            }
            changes.push((change_id, signed.verify()?, bytes));
        }
        Ok(Stored { changes, summary_revision })
    }

    /// The id a request names: a whole id, or a unique prefix of one.
    pub(crate) async fn resolve_cob(&self, repo: &str, kind: CobKind, text: &str) -> Result<ChangeId, AspenError> {
        if text.len() == 64 {
            return cob::parse_id(text);
        }
        let prefix = text.to_ascii_lowercase();
        if prefix.len() < MIN_ID_PREFIX || !prefix.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(AspenError::invalid(format!(
                "{text:?} is not a {kind} id: give its id, or at least {MIN_ID_PREFIX} hex digits of it"
            )));
        }
        let start = cob_index::cobs_prefix(repo, kind, &prefix);
        let page = self
            .kv()
            .scan(start.clone(), aspen_core::keys::prefix_end(&start), 2, ReadConsistency::Linearizable)
            .await
            .map_err(kv_error)?;
        match page.kvs.as_slice() {
            [] => Err(AspenError::invalid(format!("{repo:?} has no {kind} {text}"))),
            [one] => Ok(records::decode::<CobSummary>(&one.value, "an issue or patch summary")?.id),
            _ => Err(AspenError::invalid(format!("{text} names more than one {kind} of {repo:?}; give more digits"))),
        }
    }

    /// An issue or patch and its signed changes.
    pub(crate) async fn show_cob(
        &self,
        repo: &str,
        kind: CobKind,
        text: &str,
    ) -> Result<(CobState, Vec<Vec<u8>>), AspenError> {
        let id = self.resolve_cob(repo, kind, text).await?;
        let stored = self.stored_changes(repo, kind, &id).await?;
        if stored.changes.is_empty() {
            return Err(AspenError::invalid(format!("{repo:?} has no {kind} {}", cob::short_id(&id))));
        }
        let set: Vec<(ChangeId, Change)> = stored.changes.iter().map(|(i, c, _)| (*i, c.clone())).collect();
        let state = cob::fold(&set)?;
        Ok((state, stored.changes.into_iter().map(|(_, _, bytes)| bytes).collect()))
    }

    /// Summaries of `repo`'s issues or patches after `after`.
    pub(crate) async fn list_cobs(
        &self,
        repo: &str,
        kind: CobKind,
        after: Option<&str>,
        limit: u32,
    ) -> Result<(Vec<CobSummary>, bool), AspenError> {
        let limit = match limit {
            0 => 100,
            l if l > crate::protocol::MAX_LIST => {
                return Err(AspenError::invalid(format!("limit {l} is over {}", crate::protocol::MAX_LIST)));
            }
            l => l,
        };
        let range = cob_index::cobs_prefix(repo, kind, "");
        let start = match after {
            Some(after) => aspen_core::keys::key_successor(&cob_index::cobs_prefix(repo, kind, after)),
            None => range.clone(),
        };
        let page = self
            .kv()
            .scan(start, aspen_core::keys::prefix_end(&range), limit, ReadConsistency::Linearizable)
            .await
            .map_err(kv_error)?;
        let mut cobs = Vec::with_capacity(page.kvs.len());
        for kv in &page.kvs {
            cobs.push(records::decode(&kv.value, "an issue or patch summary")?);
        }
        Ok((cobs, page.more))
    }

    /// Checks a signed change of `kind` and what it names, for an append or a merge.
    fn check_change(kind: CobKind, bytes: &[u8]) -> Result<(ChangeId, Change), AspenError> {
        if bytes.len() > cob::MAX_SIGNED_CHANGE_BYTES {
            return Err(AspenError::invalid(format!(
                "the change is {} bytes, over the {} a change may have",
                bytes.len(),
                cob::MAX_SIGNED_CHANGE_BYTES
            )));
        }
        let signed = SignedChange::decode(bytes)?;
        let change = signed.verify()?;
        change.validate()?;
        if change.kind != kind {
            return Err(AspenError::invalid(format!("the change is of a {}, not of a {kind}", change.kind)));
        }
        Ok((signed.id(), change))
    }

    /// Appends a change (see the module docs). With `merge`, the change must carry a
    /// `Merged` action, and the target branch moves with it.
    pub(crate) async fn append_change(
        &self,
        repo: &str,
        kind: CobKind,
        bytes: Vec<u8>,
        merge: Option<&str>,
    ) -> Result<CobState, AspenError> {
        self.record(repo).await?;
        let (change_id, change) = Self::check_change(kind, &bytes)?;
        let merged_action = change.actions.iter().find_map(|a| match a {
            Action::Merged { revision, commit } => Some((*revision, *commit)),
            _ => None,
        });
        match (merge, merged_action) {
            (None, Some(_)) => {
                return Err(AspenError::invalid(
                    "a Merged action moves the target branch: send it as a merge (`aspen patch merge`)",
                ));
            }
            (Some(_), None) => return Err(AspenError::invalid("a merge must carry a Merged action")),
            _ => {}
        }
        let object = change.object.unwrap_or(change_id);

        // Store the change's bytes first: the transaction that records it pins them.
        let blobs = self.store.blobs()?;
        let added = blobs.add_bytes(bytes.clone()).await?;
        if added.hash != change_id {
            return Err(AspenError::internal("the blob store named the change with another hash"));
        }

        for attempt in 0..APPEND_ATTEMPTS {
            let stored = self.stored_changes(repo, kind, &object).await?;
            if stored.changes.iter().any(|(id, _, _)| *id == change_id) {
                // Appended before (a retried request): the same change once.
                let set: Vec<(ChangeId, Change)> = stored.changes.into_iter().map(|(i, c, _)| (i, c)).collect();
                return cob::fold(&set);
            }
            match (change.object, stored.changes.is_empty()) {
                (None, false) => return Err(AspenError::internal("a root change collided with an existing object")),
                (Some(_), true) => {
                    return Err(AspenError::invalid(format!("{repo:?} has no {kind} {}", cob::short_id(&object))));
                }
                _ => {}
            }
            for parent in &change.parents {
                if !stored.changes.iter().any(|(id, _, _)| id == parent) {
                    return Err(AspenError::invalid(format!(
                        "the change names parent {} that {kind} {} does not have",
                        cob::short_id(parent),
                        cob::short_id(&object)
                    )));
                }
            }
            let mut set: Vec<(ChangeId, Change)> = stored.changes.into_iter().map(|(i, c, _)| (i, c)).collect();
            // The state before the change matters only to a merge, which judges it.
            let before = if merge.is_some() && !set.is_empty() { Some(cob::fold(&set)?) } else { None };
            set.push((change_id, change.clone()));
            let state = cob::fold(&set)?;
            let summary = CobSummary::of(&state, set.len());

            let summary_key = cob_index::cob_key(repo, kind, &object);
            let mut compare = vec![Compare {
                key: summary_key.clone(),
                op: CompareOp::Equal,
                target: match stored.summary_revision {
                    0 => CompareTarget::Version(0),
                    r => CompareTarget::ModRevision(r),
                },
            }];
            let mut success = vec![
                TxnOp::Put {
                    key: cob_index::change_key(repo, kind, &object, &change_id),
                    value: Vec::new(),
                    lease: None,
                },
                TxnOp::Put { key: summary_key, value: records::encode(&summary)?, lease: None },
            ];
            success.extend(aspen_blob::records::pin_ops(&cob_index::change_pin(repo, &change_id), &change_id, None));
            // A new revision is an event watchers (CI) follow, written with the change.
            if let Some((index, revision)) = state.revisions.iter().enumerate().find(|(_, r)| r.id == change_id) {
                let event = records::RevisionEvent {
                    repo: repo.to_string(),
                    patch: object,
                    revision: change_id,
                    number: index as u32 + 1,
                    target: state.target.clone().unwrap_or_default(),
                    base: revision.base,
                    head: revision.head,
                    author: change.author,
                    time_ms: aspen_net::now_ms(),
                };
                success.push(TxnOp::Put {
                    key: records::revision_event_key(event.time_ms, rand::random()),
                    value: records::encode(&event)?,
                    lease: None,
                });
            }
            if let (Some(pusher), Some((revision, commit))) = (merge, merged_action) {
                let before = before.as_ref().ok_or_else(|| AspenError::invalid("a merge cannot open a patch"))?;
                let (ops, compares) = self.merge_ops(repo, before, &revision, &commit, pusher).await?;
                success.extend(ops);
                compare.extend(compares);
            }
            let txn = Txn { compare, success, failure: Vec::new() };
            match self.kv().txn(txn).await {
                Ok(done) if done.succeeded => return Ok(state),
                Ok(_) => {}
                Err(e) if e.is_transient() => {
                    tokio::time::sleep(Duration::from_millis(50 << attempt.min(5))).await;
                    let key = cob_index::change_key(repo, kind, &object, &change_id);
                    let landed = self.kv().get(key, ReadConsistency::Linearizable).await.map_err(kv_error)?;
                    if landed.is_some() {
                        return Ok(state);
                    }
                }
                Err(e) => return Err(kv_error(e)),
            }
        }
        Err(AspenError::Unavailable { reason: format!("{kind} {} kept changing; try again", cob::short_id(&object)) })
    }

    /// The operations and compares that move a patch's target branch to the merged
    /// revision's head, judged as a push of that branch would be: the revision is the
    /// patch's, the commit is its head and is stored, and the branch only moves forward.
    async fn merge_ops(
        &self,
        repo: &str,
        patch: &CobState,
        revision: &ChangeId,
        commit: &records::ObjectId,
        pusher: &str,
    ) -> Result<(Vec<TxnOp>, Vec<Compare>), AspenError> {
        match &patch.state {
            CobStatus::Open => {}
            CobStatus::Closed => return Err(AspenError::invalid("the patch is closed; reopen it to merge it")),
            CobStatus::Merged { .. } => return Err(AspenError::invalid("the patch is already merged")),
        }
        let target = patch.target.as_deref().ok_or_else(|| AspenError::invalid("only a patch can be merged"))?;
        let rev = patch
            .revisions
            .iter()
            .find(|r| &r.id == revision)
            .ok_or_else(|| AspenError::invalid(format!("the patch has no revision {}", cob::short_id(revision))))?;
        if &rev.head != commit {
            return Err(AspenError::invalid(format!(
                "revision {} has head {}, not {}: a merge moves the branch to the revision's head",
                cob::short_id(revision),
                records::hex(&rev.head),
                records::hex(commit)
            )));
        }
        let snapshot = self.snapshot(repo).await?;
        let ref_name = branch_ref(target);
        let current = snapshot.refs.get(&ref_name).copied();
        let indexes = self.store.index_paths(&snapshot.packs).await?;
        let (head, current_for_check, branch) = (*commit, current, target.to_string());
        let judged = tokio::task::spawn_blocking(move || -> Result<Option<String>, AspenError> {
            let objects = PackSet::open(&indexes)?;
            match objects.kind(&head)? {
                None => return Ok(Some("its head commit is not in the repository; push it first".into())),
                Some(gix_object::Kind::Commit) => {}
                Some(other) => return Ok(Some(format!("its head is a {other}, not a commit"))),
            }
            if let Some(old) = current_for_check
                && old != head
                && !objects.is_ancestor(&old, &head)?
            {
                return Ok(Some(format!(
                    "non-fast-forward: {branch} has commits the revision does not; rebase it and revise the patch"
                )));
            }
            Ok(None)
        })
        .await
        .map_err(|e| AspenError::internal(format!("judging the merge stopped: {e}")))??;
        if let Some(why) = judged {
            return Err(AspenError::invalid(format!("cannot merge into {target}: {why}")));
        }
        let now = aspen_net::now_ms();
        let key = records::ref_key(repo, &ref_name);
        let compares = vec![
            Compare {
                key: records::repo_key(repo),
                op: CompareOp::Equal,
                target: CompareTarget::ModRevision(snapshot.record_revision),
            },
            Compare {
                key: key.clone(),
                op: CompareOp::Equal,
                target: match current {
                    Some(old) => CompareTarget::Value(old.to_vec()),
                    None => CompareTarget::Version(0),
                },
            },
        ];
        let event = PushEvent {
            repo: repo.to_string(),
            ref_name,
            old: current,
            new: Some(*commit),
            pusher: pusher.to_string(),
            time_ms: now,
        };
        let ops = vec![
            TxnOp::Put { key, value: commit.to_vec(), lease: None },
            TxnOp::Put { key: records::activity_key(repo), value: now.to_be_bytes().to_vec(), lease: None },
            TxnOp::Put { key: records::event_key(now, rand::random()), value: records::encode(&event)?, lease: None },
        ];
        Ok((ops, compares))
    }
}
