//! Keeping blobs on enough nodes: copies made before an add is acknowledged, the leader's
//! repair rounds after a node is lost or replaced, and the per-member status of a blob.
//!
//! A copy is a `BlobReplicate` request forwarded to the member that should hold the blob:
//! it fetches the blob from the other members itself (verified as it streams), so the bytes
//! flow between nodes over the iroh-blobs protocol and never through the coordinator.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use aspen_core::api::{BlobHolder, ClientRequest, ClientResponse, NodeAddr};
use aspen_core::blob::{BlobHash, plan_repairs};
use aspen_core::error::AspenError;
use aspen_core::limits::{MAX_BLOB_LIST, MAX_BLOB_REPAIR_COPIES};
use futures::future::join_all;
use iroh_blobs::Hash;
use openraft::async_runtime::watch::WatchReceiver;

use crate::blobs::{complete_hashes, complete_size, live_blobs};
use crate::state::NodeState;

/// How long an asked member may take to say whether it holds a blob: well inside a
/// client's read attempt (3 s by default), so a dead member is reported as unreachable
/// rather than stalling the whole answer.
const STATUS_TIMEOUT: Duration = Duration::from_millis(1500);
/// How long a member may take to list one page of the blobs it holds.
const LIST_TIMEOUT: Duration = Duration::from_secs(10);
/// Slowest copy rate tolerated before a copy is given up (bytes per second).
const MIN_COPY_BYTES_PER_SEC: u64 = 4 * 1024 * 1024;

/// How long a copy of `size` bytes may take.
fn copy_timeout(size: u64) -> Duration {
    Duration::from_secs(30 + size / MIN_COPY_BYTES_PER_SEC)
}

/// Patience for a repair copy of a blob whose size the leader does not know.
const REPAIR_COPY_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// Asks the member at `addr` to fetch `hash` (from `from` first) and keep it, waiting at
/// most `timeout`.
async fn copy_to(
    state: &NodeState,
    addr: &NodeAddr,
    hash: &BlobHash,
    from: Option<u64>,
    timeout: Duration,
) -> Result<(), String> {
    let request = ClientRequest::BlobReplicate { hash: *hash, from };
    match state.forwarder.forward_with_timeout(addr, request, timeout).await {
        ClientResponse::BlobHas { present: true, .. } => Ok(()),
        ClientResponse::BlobHas { present: false, .. } => Err("it did not keep the blob".into()),
        ClientResponse::Error(e) => Err(e.to_string()),
        other => Err(format!("unexpected answer {other:?}")),
    }
}

/// Copies a blob this node just stored to other members until the replica target is met.
/// Returns how many nodes hold it, this one included; `Unavailable` when too few could take
/// it (the blob stays, protected for its grace period, and repair copies it later).
pub async fn replicate_added(state: &NodeState, hash: &BlobHash, size: u64) -> Result<u32, AspenError> {
    let target = state.blob_replica_target();
    let mut holders = 1usize;
    let mut failures = Vec::new();
    // Members that could not be reached lately go last, so a dead member costs one
    // connect timeout, not one per add.
    let mut candidates = state.other_members();
    candidates.sort_by_key(|(_, addr)| state.forwarder.recently_unreachable(addr));
    let mut candidates = candidates.into_iter();
    while holders < target {
        let batch: Vec<(u64, NodeAddr)> = candidates.by_ref().take(target - holders).collect();
        if batch.is_empty() {
            break;
        }
        let results =
            join_all(batch.iter().map(|(_, addr)| copy_to(state, addr, hash, Some(state.node_id), copy_timeout(size))))
                .await;
        for ((node, _), result) in batch.iter().zip(results) {
            match result {
                Ok(()) => holders += 1,
                Err(e) => failures.push(format!("node {node}: {e}")),
            }
        }
    }
    if holders < target {
        return Err(AspenError::Unavailable {
            reason: format!(
                "blob {} is on {holders} of the {target} nodes it must be on before an add is acknowledged ({}); \
                 it is kept, and repair copies it once members can take it",
                Hash::from_bytes(*hash),
                failures.join("; ")
            ),
        });
    }
    Ok(holders as u32)
}

/// What every member says of `hash` now, in node id order.
pub async fn status(state: &NodeState, hash: &BlobHash) -> Result<Vec<BlobHolder>, AspenError> {
    let own = complete_size(&state.blobs, Hash::from_bytes(*hash)).await?;
    let mut holders = vec![BlobHolder { node_id: state.node_id, size: own, error: None }];
    let others = state.other_members();
    let answers = join_all(others.iter().map(|(_, addr)| async move {
        let ask = state.forwarder.forward_with_timeout(addr, ClientRequest::BlobHas { hash: *hash }, STATUS_TIMEOUT);
        tokio::time::timeout(STATUS_TIMEOUT, ask).await.unwrap_or_else(|_| {
            ClientResponse::Error(AspenError::Unavailable { reason: format!("no answer within {STATUS_TIMEOUT:?}") })
        })
    }))
    .await;
    for ((node_id, _), answer) in others.into_iter().zip(answers) {
        holders.push(match answer {
            ClientResponse::BlobHas { size, .. } => BlobHolder { node_id, size, error: None },
            ClientResponse::Error(e) => BlobHolder { node_id, size: None, error: Some(e.to_string()) },
            other => BlobHolder { node_id, size: None, error: Some(format!("unexpected answer {other:?}")) },
        });
    }
    holders.sort_by_key(|h| h.node_id);
    Ok(holders)
}

/// Every complete blob the member at `addr` holds, page by page.
async fn remote_hashes(state: &NodeState, addr: &NodeAddr) -> Result<BTreeSet<BlobHash>, String> {
    let mut held = BTreeSet::new();
    let mut after = None;
    loop {
        let request = ClientRequest::BlobList { after, limit: MAX_BLOB_LIST };
        match state.forwarder.forward_with_timeout(addr, request, LIST_TIMEOUT).await {
            ClientResponse::BlobList { blobs, more } => {
                after = blobs.last().map(|b| b.hash);
                held.extend(blobs.into_iter().map(|b| b.hash));
                if !more {
                    return Ok(held);
                }
            }
            ClientResponse::Error(e) => return Err(e.to_string()),
            other => return Err(format!("unexpected answer {other:?}")),
        }
    }
}

/// One repair round: finds live blobs held by fewer nodes than the target (counting only
/// members that answer) and copies them to members that lack them. Returns the copies made.
pub async fn repair_round(state: &NodeState) -> Result<usize, AspenError> {
    let live = live_blobs(state).await?;
    if live.is_empty() {
        return Ok(0);
    }
    let mut holdings = BTreeMap::new();
    holdings.insert(state.node_id, complete_hashes(&state.blobs).await?);
    for (node, addr) in state.other_members() {
        match remote_hashes(state, &addr).await {
            Ok(held) => {
                holdings.insert(node, held);
            }
            Err(e) => tracing::debug!(node, "blob repair leaves out a member that did not answer: {e}"),
        }
    }
    let mut copies = 0;
    for repair in plan_repairs(&live, &holdings, state.blob_replica_target(), MAX_BLOB_REPAIR_COPIES) {
        let hash = Hash::from_bytes(repair.hash);
        let holder = holdings.iter().find(|(_, held)| held.contains(&repair.hash)).map(|(node, _)| *node);
        for node in repair.to {
            let Some(addr) = state.member_addr(node) else { continue };
            let timeout = match complete_size(&state.blobs, hash).await? {
                Some(size) => copy_timeout(size),
                None => REPAIR_COPY_TIMEOUT,
            };
            match copy_to(state, &addr, &repair.hash, holder, timeout).await {
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

/// Runs repair rounds while this node leads.
pub fn spawn_repair(state: Arc<NodeState>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(state.blob_settings.repair_interval).await;
            let leads = state.raft.metrics().borrow_watched().current_leader == Some(state.node_id);
            if !leads {
                continue;
            }
            if let Err(e) = repair_round(&state).await {
                tracing::debug!("blob repair round skipped: {e}");
            }
        }
    })
}
