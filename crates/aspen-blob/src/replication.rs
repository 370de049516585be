//! Keeping blobs on enough nodes: copies made before an add is acknowledged, the leader's
//! repair rounds after a node is lost or replaced, and what each member says of a blob.
//!
//! A copy is a `MemberCall::Replicate` sent to the member that should hold the blob, over
//! the node's members-only ALPN: it fetches the blob from the other members itself
//! (verified as it streams), so the bytes flow between nodes over the iroh-blobs protocol
//! and never through the coordinator.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use aspen_core::AspenError;
use futures::future::join_all;
use iroh_blobs::Hash;

use crate::protocol::{APP, BlobEntry, BlobHolder, MAX_LIST, MAX_REPAIR_COPIES, MemberAnswer, MemberCall};
use crate::records::{BlobHash, plan_repairs};
use crate::store::{BlobNode, live_blobs};

/// How long an asked member may take to say whether it holds a blob: well inside a
/// client's read attempt (3 s by default), so a dead member is reported as unreachable
/// rather than stalling the whole answer.
pub const STATUS_TIMEOUT: Duration = Duration::from_millis(1500);
/// How long a member may take to list one page of the blobs it holds.
const LIST_TIMEOUT: Duration = Duration::from_secs(10);
/// Slowest copy rate tolerated before a copy is given up (bytes per second).
const MIN_COPY_BYTES_PER_SEC: u64 = 4 * 1024 * 1024;
/// Patience for a repair copy of a blob whose size the leader does not know.
const REPAIR_COPY_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// How long a copy of `size` bytes may take.
pub fn copy_timeout(size: u64) -> Duration {
    Duration::from_secs(30 + size / MIN_COPY_BYTES_PER_SEC)
}

impl BlobNode {
    /// Sends `call` to the blob app on member `node` and reads its answer, within `timeout`.
    pub async fn member_call(&self, node: u64, call: &MemberCall, timeout: Duration) -> Result<MemberAnswer, String> {
        let exchange = async {
            let (mut send, mut recv) =
                self.ctx.cluster.open_member_stream(node, APP).await.map_err(|e| e.to_string())?;
            aspen_net::write_frame(&mut send, call).await.map_err(|e| e.to_string())?;
            let _ = send.finish();
            match aspen_net::read_frame::<MemberAnswer>(&mut recv).await {
                Ok(Some(MemberAnswer::Error(e))) => Err(e.to_string()),
                Ok(Some(answer)) => Ok(answer),
                Ok(None) => Err("the member closed the stream without answering".to_string()),
                Err(e) => Err(format!("the member's answer was lost: {e}")),
            }
        };
        tokio::time::timeout(timeout, exchange).await.unwrap_or_else(|_| Err(format!("no answer within {timeout:?}")))
    }

    /// Asks member `node` to fetch `hash` (from `from` first) and keep it.
    async fn copy_to(&self, node: u64, hash: &BlobHash, from: Option<u64>, timeout: Duration) -> Result<(), String> {
        match self.member_call(node, &MemberCall::Replicate { hash: *hash, from }, timeout).await? {
            MemberAnswer::Held { size: Some(_) } => Ok(()),
            MemberAnswer::Held { size: None } => Err("it did not keep the blob".into()),
            other => Err(format!("unexpected answer {other:?}")),
        }
    }

    /// Copies blobs this node just stored to other members until the replica target holds
    /// each. Returns how many nodes hold each (this one included); `Unavailable` when too few
    /// could take one (the blobs stay, protected for their grace period, and repair copies
    /// them later). Members that failed to connect lately are asked last, so a dead member
    /// costs one connect timeout, not one per add.
    pub async fn replicate_added(&self, blobs: &[(BlobHash, u64)]) -> Result<Vec<u32>, AspenError> {
        let target = self.replica_target();
        let mut candidates = self.ctx.cluster.members().others();
        candidates.sort_by_key(|(id, _)| self.ctx.cluster.recently_unreachable(*id));
        let mut candidates = candidates.into_iter().map(|(id, _)| id);
        let mut holders = 1usize;
        let mut failures = Vec::new();
        let total: u64 = blobs.iter().map(|(_, size)| *size).sum();
        let timeout = copy_timeout(total);
        while holders < target {
            let batch: Vec<u64> = candidates.by_ref().take(target - holders).collect();
            if batch.is_empty() {
                break;
            }
            let results = join_all(batch.iter().map(|node| async move {
                for (hash, _) in blobs {
                    self.copy_to(*node, hash, Some(self.ctx.node_id), timeout).await?;
                }
                Ok::<(), String>(())
            }))
            .await;
            for (node, result) in batch.iter().zip(results) {
                match result {
                    Ok(()) => holders += 1,
                    Err(e) => failures.push(format!("node {node}: {e}")),
                }
            }
        }
        if holders < target {
            let what = match blobs {
                [(hash, _)] => format!("blob {}", Hash::from_bytes(*hash)),
                many => format!("a batch of {} blobs", many.len()),
            };
            return Err(AspenError::Unavailable {
                reason: format!(
                    "{what} is on {holders} of the {target} nodes it must be on before an add is acknowledged ({}); \
                     it is kept, and repair copies it once members can take it",
                    failures.join("; ")
                ),
            });
        }
        Ok(vec![holders as u32; blobs.len()])
    }

    /// What every member says of `hash` now, in node id order.
    pub async fn status(&self, hash: &BlobHash) -> Result<Vec<BlobHolder>, AspenError> {
        let own = self.complete_size(Hash::from_bytes(*hash)).await?;
        let mut holders = vec![BlobHolder { node_id: self.ctx.node_id, size: own, error: None }];
        let others = self.ctx.cluster.members().others();
        let call = MemberCall::Has { hash: *hash };
        let answers = join_all(others.iter().map(|(node, _)| self.member_call(*node, &call, STATUS_TIMEOUT))).await;
        for ((node_id, _), answer) in others.into_iter().zip(answers) {
            holders.push(match answer {
                Ok(MemberAnswer::Held { size }) => BlobHolder { node_id, size, error: None },
                Ok(other) => BlobHolder { node_id, size: None, error: Some(format!("unexpected answer {other:?}")) },
                Err(e) => BlobHolder { node_id, size: None, error: Some(e) },
            });
        }
        holders.sort_by_key(|h| h.node_id);
        Ok(holders)
    }

    /// The blob's size if some member holds it complete: this node first, then the others
    /// (asked together, each for at most [`STATUS_TIMEOUT`]).
    pub async fn cluster_has(&self, hash: &BlobHash) -> Result<Option<u64>, AspenError> {
        if let Some(size) = self.complete_size(Hash::from_bytes(*hash)).await? {
            return Ok(Some(size));
        }
        let call = MemberCall::Has { hash: *hash };
        let others = self.ctx.cluster.members().others();
        let answers = join_all(others.iter().map(|(node, _)| self.member_call(*node, &call, STATUS_TIMEOUT))).await;
        Ok(answers.into_iter().find_map(|a| match a {
            Ok(MemberAnswer::Held { size }) => size,
            _ => None,
        }))
    }

    /// One page of this node's complete blobs, in hash order after `after`.
    pub async fn local_list(&self, after: Option<BlobHash>, limit: u32) -> Result<(Vec<BlobEntry>, bool), AspenError> {
        let mut hashes: Vec<BlobHash> = self
            .store
            .list()
            .hashes()
            .await
            .map_err(AspenError::storage)?
            .into_iter()
            .map(|h| *h.as_bytes())
            .filter(|h| after.is_none_or(|a| *h > a))
            .collect();
        hashes.sort_unstable();
        let mut blobs = Vec::new();
        for hash in hashes {
            if blobs.len() == limit as usize {
                return Ok((blobs, true));
            }
            if let Some(size) = self.complete_size(Hash::from_bytes(hash)).await? {
                blobs.push(BlobEntry { hash, size });
            }
        }
        Ok((blobs, false))
    }

    /// One page of the complete blobs any member holds, in hash order after `after`: each
    /// reachable member's page merged. Members that do not answer are left out.
    pub async fn cluster_list(
        &self,
        after: Option<BlobHash>,
        limit: u32,
    ) -> Result<(Vec<BlobEntry>, bool), AspenError> {
        let (own, own_more) = self.local_list(after, limit).await?;
        let mut merged: BTreeMap<BlobHash, u64> = own.into_iter().map(|b| (b.hash, b.size)).collect();
        let mut more = own_more;
        let call = MemberCall::List { after, limit };
        let others = self.ctx.cluster.members().others();
        let answers = join_all(others.iter().map(|(node, _)| self.member_call(*node, &call, STATUS_TIMEOUT))).await;
        for ((node, _), answer) in others.iter().zip(answers) {
            match answer {
                Ok(MemberAnswer::List { blobs, more: m }) => {
                    more |= m;
                    merged.extend(blobs.into_iter().map(|b| (b.hash, b.size)));
                }
                Ok(other) => tracing::debug!(node, "unexpected list answer {other:?}"),
                Err(e) => tracing::debug!(node, "blob list leaves out a member that did not answer: {e}"),
            }
        }
        more |= merged.len() > limit as usize;
        let blobs = merged.into_iter().take(limit as usize).map(|(hash, size)| BlobEntry { hash, size }).collect();
        Ok((blobs, more))
    }

    /// Every complete blob member `node` holds, page by page.
    async fn remote_hashes(&self, node: u64) -> Result<BTreeSet<BlobHash>, String> {
        let mut held = BTreeSet::new();
        let mut after = None;
        loop {
            match self.member_call(node, &MemberCall::List { after, limit: MAX_LIST }, LIST_TIMEOUT).await? {
                MemberAnswer::List { blobs, more } => {
                    after = blobs.last().map(|b| b.hash);
                    held.extend(blobs.into_iter().map(|b| b.hash));
                    if !more {
                        return Ok(held);
                    }
                }
                other => return Err(format!("unexpected answer {other:?}")),
            }
        }
    }

    /// One repair round: finds live blobs held by fewer nodes than the target (counting
    /// only members that answer) and copies them to members that lack them. Returns the
    /// copies made.
    pub async fn repair_round(&self) -> Result<usize, AspenError> {
        let live = live_blobs(&*self.ctx.kv).await?;
        if live.is_empty() {
            return Ok(0);
        }
        let mut holdings = BTreeMap::new();
        holdings.insert(self.ctx.node_id, self.complete_hashes().await?);
        for (node, _) in self.ctx.cluster.members().others() {
            match self.remote_hashes(node).await {
                Ok(held) => {
                    holdings.insert(node, held);
                }
                Err(e) => tracing::debug!(node, "blob repair leaves out a member that did not answer: {e}"),
            }
        }
        let mut copies = 0;
        for repair in plan_repairs(&live, &holdings, self.replica_target(), MAX_REPAIR_COPIES) {
            let hash = Hash::from_bytes(repair.hash);
            let holder = holdings.iter().find(|(_, held)| held.contains(&repair.hash)).map(|(node, _)| *node);
            for node in repair.to {
                let timeout = match self.complete_size(hash).await? {
                    Some(size) => copy_timeout(size),
                    None => REPAIR_COPY_TIMEOUT,
                };
                match self.copy_to(node, &repair.hash, holder, timeout).await {
                    Ok(()) => {
                        copies += 1;
                        tracing::info!(%hash, node, "blob repair: copied an under-replicated blob");
                    }
                    Err(e) => tracing::warn!(%hash, node, "blob repair: copy failed: {e}"),
                }
            }
        }
        Ok(copies)
    }
}

/// Runs repair rounds while this node leads.
pub fn spawn_repair(node: Arc<BlobNode>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(node.settings.repair_interval).await;
            if !node.ctx.cluster.members().is_leader() {
                continue;
            }
            if let Err(e) = node.repair_round().await {
                tracing::debug!("blob repair round skipped: {e}");
            }
        }
    })
}
