//! The node's blob store: an iroh-blobs file store in `<data dir>/blobs`, served to the
//! other members of the cluster (and only to them) on the iroh-blobs ALPN, and filled from
//! them on demand. Also what keeps blobs alive: the fresh records written at each add, the
//! live set garbage collection spares, and the collection itself (iroh-blobs' own GC,
//! told which hashes the cluster still needs).
//!
//! Clients never speak the iroh-blobs protocol: they add and read blobs through the client
//! protocol (`service::blob`), where their token is checked. Between nodes, a transfer is
//! the iroh-blobs get protocol, verified chunk by chunk against the BLAKE3 hash (bao) as it
//! streams in, so a node never stores bytes that do not hash to what was asked for.

use std::collections::BTreeSet;
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use aspen_core::api::{ClientRequest, ClientResponse, ReadConsistency};
use aspen_core::blob::{BlobHash, FRESH_PREFIX, PIN_PREFIX, fresh_hash, fresh_key, pin_hash};
use aspen_core::command::WriteResult;
use aspen_core::error::AspenError;
use aspen_core::types::{KeyValue, LeaseId};
use iroh::endpoint::Connection;
use iroh::protocol::{AcceptError, ProtocolHandler};
use iroh_blobs::api::TempTag;
use iroh_blobs::api::proto::BlobStatus;
use iroh_blobs::store::fs::FsStore;
use iroh_blobs::store::fs::options::{Options, PathOptions};
use iroh_blobs::store::{GcConfig, ProtectCb, ProtectOutcome};
use iroh_blobs::{BlobsProtocol, Hash};

use crate::service::dispatch;
use crate::state::NodeState;

/// How long a node waits to connect to a peer for a blob.
const PEER_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The blob settings a node runs with.
#[derive(Debug, Clone, Copy)]
pub struct BlobSettings {
    /// Nodes that must hold a blob before an add is acknowledged (0: a majority of voters).
    pub replicas: usize,
    /// How long a fresh blob lives without a pin.
    pub gc_grace: Duration,
    /// Time between the leader's repair rounds.
    pub repair_interval: Duration,
}

/// The lease this node attaches fresh records to, and when it was granted.
pub struct FreshLease {
    id: LeaseId,
    granted: Instant,
}

/// Where the garbage collector finds the node once it exists (the store is opened first).
pub type NodeSlot = Arc<OnceLock<Weak<NodeState>>>;

/// Opens (or creates) the store in `<data_dir>/blobs`, collecting garbage every
/// `gc_interval`: a blob survives a round if a tag or temp tag of the store holds it (an
/// add or fetch in progress) or the cluster's live set names it. A round whose live set
/// cannot be read (no leader, node not initialized yet) deletes nothing.
pub async fn open_store(data_dir: &std::path::Path, gc_interval: Duration, node: NodeSlot) -> anyhow::Result<FsStore> {
    let dir = data_dir.join("blobs");
    std::fs::create_dir_all(&dir)?;
    let runtime = tokio::runtime::Handle::current();
    let add_protected: ProtectCb = Arc::new(move |protected| {
        let node = node.clone();
        let runtime = runtime.clone();
        Box::pin(async move {
            let Some(state) = node.get().and_then(Weak::upgrade) else { return ProtectOutcome::Abort };
            // The KV is reached through the node's own runtime, not the store's.
            match runtime.spawn(async move { live_blobs(&state).await }).await {
                Ok(Ok(live)) => {
                    protected.extend(live.iter().map(|h| Hash::from_bytes(*h)));
                    ProtectOutcome::Continue
                }
                Ok(Err(e)) => {
                    tracing::debug!("blob gc skipped: the live set is unreadable: {e}");
                    ProtectOutcome::Abort
                }
                Err(_) => ProtectOutcome::Abort,
            }
        })
    });
    let mut options = Options::new(&dir);
    options.gc = Some(GcConfig { interval: gc_interval, add_protected: Some(add_protected) });
    FsStore::load_with_opts(dir.join("blobs.db"), options)
        .await
        .map_err(|e| anyhow::anyhow!("cannot open the blob store in {}: {e}", dir.display()))
}

/// Every blob the cluster keeps: named by a pin or by a fresh record. Linearizable.
pub async fn live_blobs(state: &NodeState) -> Result<BTreeSet<BlobHash>, AspenError> {
    let mut live = BTreeSet::new();
    scan_prefix(state, PIN_PREFIX, |kv| live.extend(pin_hash(&kv.value))).await?;
    scan_prefix(state, FRESH_PREFIX, |kv| live.extend(fresh_hash(&kv.key))).await?;
    Ok(live)
}

/// Every key under `prefix`, page by page, read linearizably through the leader.
async fn scan_prefix(state: &NodeState, prefix: &str, mut each: impl FnMut(KeyValue)) -> Result<(), AspenError> {
    let end = aspen_core::keys::prefix_end(prefix.as_bytes());
    let mut start = prefix.as_bytes().to_vec();
    loop {
        let request = ClientRequest::Scan {
            start: start.clone(),
            end: end.clone(),
            limit: aspen_core::limits::MAX_SCAN_LIMIT,
            consistency: ReadConsistency::Linearizable,
        };
        match dispatch(state, request).await {
            ClientResponse::Scan { kvs, more, .. } => {
                if let Some(last) = kvs.last() {
                    start = last.key.clone();
                    start.push(0);
                }
                kvs.into_iter().for_each(&mut each);
                if !more {
                    return Ok(());
                }
            }
            ClientResponse::Error(e) => return Err(e),
            other => return Err(AspenError::internal(format!("a scan was answered with {other:?}"))),
        }
    }
}

/// Writes `hash`'s fresh record, which keeps the blob for the grace period. Records of the
/// adds within one eighth of the grace period share a lease, so a burst of small adds costs
/// one lease grant; each record lives between one and 1 1/8 grace periods.
pub async fn mark_fresh(state: &NodeState, hash: &BlobHash) -> Result<(), AspenError> {
    for attempt in 0..2 {
        let lease = fresh_lease(state).await?;
        let put = ClientRequest::Put { key: fresh_key(hash), value: Vec::new(), lease: Some(lease) };
        match dispatch(state, put).await {
            ClientResponse::Write(_) => return Ok(()),
            // The shared lease ended early (revoked, or this node's clock ran slow): forget
            // it, so the next attempt grants another.
            ClientResponse::Error(AspenError::LeaseNotFound { .. }) if attempt == 0 => {
                let mut cached = state.fresh_lease.lock().await;
                if cached.as_ref().is_some_and(|l| l.id == lease) {
                    *cached = None;
                }
            }
            ClientResponse::Error(e) => return Err(e),
            other => return Err(AspenError::internal(format!("a put was answered with {other:?}"))),
        }
    }
    Err(AspenError::internal("the fresh-blob lease vanished twice in a row"))
}

/// The lease of the current window, granted when the window's is missing or old. Only the
/// choice is serialized; the puts that use it run concurrently.
async fn fresh_lease(state: &NodeState) -> Result<LeaseId, AspenError> {
    let grace = state.blob_settings.gc_grace;
    let window = grace / 8;
    let mut cached = state.fresh_lease.lock().await;
    if let Some(l) = cached.as_ref()
        && l.granted.elapsed() < window
    {
        return Ok(l.id);
    }
    let ttl_ms = (grace + window).as_millis() as u64;
    let granted = Instant::now();
    match dispatch(state, ClientRequest::LeaseGrant { ttl_ms }).await {
        ClientResponse::Write(WriteResult::Lease { id, .. }) => {
            *cached = Some(FreshLease { id, granted });
            Ok(id)
        }
        ClientResponse::Error(e) => Err(e),
        other => Err(AspenError::internal(format!("a lease grant was answered with {other:?}"))),
    }
}

/// The iroh-blobs protocol, for cluster members only.
#[derive(Clone)]
pub struct MemberBlobs {
    inner: BlobsProtocol,
    state: Arc<NodeState>,
}

impl std::fmt::Debug for MemberBlobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemberBlobs").finish_non_exhaustive()
    }
}

impl MemberBlobs {
    pub fn new(store: &FsStore, state: Arc<NodeState>) -> Self {
        MemberBlobs { inner: BlobsProtocol::new(store, None), state }
    }
}

impl ProtocolHandler for MemberBlobs {
    async fn accept(&self, connection: Connection) -> Result<(), AcceptError> {
        if !self.state.is_member_key(connection.remote_id().as_bytes()) {
            tracing::debug!(peer = %connection.remote_id(), "refused a blob connection from a non-member");
            connection.close(1u32.into(), b"not a cluster member");
            return Ok(());
        }
        self.inner.accept(connection).await
    }

    async fn shutdown(&self) {
        self.inner.shutdown().await;
    }
}

/// Makes a blob this node holds survive a crash or power loss before the node counts
/// itself as a holder: iroh-blobs writes data and outboard files without fsync and batches
/// its metadata commits. Small blobs live inside the store's database, which the final
/// commit covers.
pub async fn persist(state: &NodeState, hash: Hash) -> Result<(), AspenError> {
    let paths = PathOptions::new(&state.data_dir.join("blobs"));
    let files = [paths.data_path(&hash), paths.outboard_path(&hash)];
    let dir = paths.data_path;
    let synced = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        let mut any = false;
        for path in files {
            match std::fs::File::open(&path) {
                Ok(file) => {
                    file.sync_all()?;
                    any = true;
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        if any {
            std::fs::File::open(&dir)?.sync_all()?;
        }
        Ok(())
    })
    .await;
    synced
        .map_err(|e| AspenError::internal(format!("the blob sync task failed: {e}")))?
        .map_err(AspenError::storage)?;
    state.blobs.sync_db().await.map_err(AspenError::storage)
}

/// The size of `hash` if this node holds it complete.
pub async fn complete_size(store: &FsStore, hash: Hash) -> Result<Option<u64>, AspenError> {
    match store.status(hash).await.map_err(AspenError::storage)? {
        BlobStatus::Complete { size } => Ok(Some(size)),
        _ => Ok(None),
    }
}

/// Every blob this node holds complete.
pub async fn complete_hashes(store: &FsStore) -> Result<BTreeSet<BlobHash>, AspenError> {
    let mut held = BTreeSet::new();
    for hash in store.list().hashes().await.map_err(AspenError::storage)? {
        if complete_size(store, hash).await?.is_some() {
            held.insert(*hash.as_bytes());
        }
    }
    Ok(held)
}

/// Makes sure this node holds `hash` complete, fetching it from the other members in turn
/// (`prefer` first, then in node id order) when it does not. Returns its size and a temp tag that keeps the blob
/// from garbage collection while the caller holds it. A transfer that fails verification
/// or breaks off is dropped and the next member is asked. Fails with `Unavailable` when no
/// member provides it whole.
pub async fn ensure_local(state: &NodeState, hash: Hash, prefer: Option<u64>) -> Result<(u64, TempTag), AspenError> {
    let tag = state.blobs.tags().temp_tag(hash).await.map_err(AspenError::storage)?;
    if let Some(size) = complete_size(&state.blobs, hash).await? {
        return Ok((size, tag));
    }
    let mut peers = state.other_members();
    peers.sort_by_key(|(id, _)| Some(*id) != prefer);
    let mut tried = Vec::new();
    for (peer_id, peer) in peers {
        let Ok(addr) = aspen_net::endpoint::endpoint_addr(&peer) else { continue };
        let conn =
            match tokio::time::timeout(PEER_CONNECT_TIMEOUT, state.endpoint.connect(addr, iroh_blobs::ALPN)).await {
                Ok(Ok(conn)) => conn,
                Ok(Err(e)) => {
                    tried.push(format!("node {peer_id}: {e}"));
                    continue;
                }
                Err(_) => {
                    tried.push(format!("node {peer_id}: connect timed out"));
                    continue;
                }
            };
        match state.blobs.remote().fetch(conn, hash).await {
            Ok(stats) => {
                tracing::debug!(%hash, bytes = stats.payload_bytes_read, "fetched a blob from a peer");
                if let Some(size) = complete_size(&state.blobs, hash).await? {
                    return Ok((size, tag));
                }
                tried.push(format!("node {peer_id}: incomplete transfer"));
            }
            Err(e) => tried.push(format!("node {peer_id}: {e}")),
        }
    }
    Err(AspenError::Unavailable {
        reason: format!(
            "blob {hash} is not on this node and no member provided it ({})",
            if tried.is_empty() { "no other member".to_string() } else { tried.join("; ") }
        ),
    })
}
