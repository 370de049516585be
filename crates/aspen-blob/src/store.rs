//! One node's blob store: an iroh-blobs file store in `<data dir>/blobs`, served to the
//! other members of the cluster (and only to them) on the iroh-blobs ALPN, and filled from
//! them on demand. Also what keeps blobs alive: the fresh records written at each add, the
//! live set garbage collection spares, and the collection itself (iroh-blobs' own GC, told
//! which hashes the cluster still needs).
//!
//! Clients never speak the iroh-blobs protocol: they use the blob app's own protocol
//! (`crate::server`), where their token is checked. Between nodes, a transfer is the
//! iroh-blobs get protocol, verified chunk by chunk against the BLAKE3 hash (bao) as it
//! streams in, so a node never stores bytes that do not hash to what was asked for.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aspen_app::NodeContext;
use aspen_core::AspenError;
use aspen_core::LeaseId;
use aspen_core::api::ReadConsistency;
use aspen_kv::{KvError, KvExt};
use iroh::endpoint::Connection;
use iroh::protocol::{AcceptError, ProtocolHandler};
use iroh_blobs::api::TempTag;
use iroh_blobs::api::proto::BlobStatus;
use iroh_blobs::store::fs::FsStore;
use iroh_blobs::store::fs::options::{Options, PathOptions};
use iroh_blobs::store::{GcConfig, ProtectCb, ProtectOutcome};
use iroh_blobs::{BlobsProtocol, Hash};

use crate::records::{BlobHash, FRESH_PREFIX, PIN_PREFIX, fresh_hash, fresh_key, pin_hash};

/// How long a node waits to connect to a peer for a blob.
const PEER_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The blob settings a node runs with.
#[derive(Debug, Clone, Copy)]
pub struct BlobSettings {
    /// Nodes that must hold a blob before an add is acknowledged (0: a majority of voters).
    pub replicas: usize,
    /// How long a fresh blob lives without a pin.
    pub gc_grace: Duration,
    /// Time between garbage-collection rounds of this node's store.
    pub gc_interval: Duration,
    /// Time between the leader's repair rounds.
    pub repair_interval: Duration,
}

/// The lease this node attaches fresh records to, and when it was granted.
struct FreshLease {
    id: LeaseId,
    granted: Instant,
}

/// The blob app on one node: its store, its settings and its view of the cluster.
pub struct BlobNode {
    pub ctx: NodeContext,
    pub store: FsStore,
    pub settings: BlobSettings,
    /// The lease fresh records are attached to, shared by the adds of a short window.
    fresh_lease: tokio::sync::Mutex<Option<FreshLease>>,
}

pub(crate) fn kv_error(e: KvError) -> AspenError {
    match e {
        KvError::Aspen(e) => e,
        other => AspenError::Unavailable { reason: other.to_string() },
    }
}

impl BlobNode {
    /// Opens (or creates) the store in `<data dir>/blobs`, collecting garbage every
    /// `gc_interval`: a blob survives a round if a tag or temp tag of the store holds it
    /// (an add or fetch in progress) or the cluster's live set names it. A round whose live
    /// set cannot be read (no leader, node not initialized yet) deletes nothing.
    pub async fn open(ctx: NodeContext, settings: BlobSettings) -> Result<Arc<BlobNode>, AspenError> {
        let dir = ctx.data_dir.join("blobs");
        std::fs::create_dir_all(&dir)
            .map_err(|e| AspenError::storage(format!("cannot create {}: {e}", dir.display())))?;
        let runtime = tokio::runtime::Handle::current();
        let kv = ctx.kv.clone();
        let add_protected: ProtectCb = Arc::new(move |protected| {
            let kv = kv.clone();
            let runtime = runtime.clone();
            Box::pin(async move {
                // The KV is reached through the node's own runtime, not the store's.
                match runtime.spawn(async move { live_blobs(&*kv).await }).await {
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
        options.gc = Some(GcConfig { interval: settings.gc_interval, add_protected: Some(add_protected) });
        let store = FsStore::load_with_opts(dir.join("blobs.db"), options)
            .await
            .map_err(|e| AspenError::storage(format!("cannot open the blob store in {}: {e}", dir.display())))?;
        Ok(Arc::new(BlobNode { ctx, store, settings, fresh_lease: tokio::sync::Mutex::new(None) }))
    }

    /// How many nodes must hold a blob under the current membership.
    pub fn replica_target(&self) -> usize {
        let members = self.ctx.cluster.members();
        crate::records::replica_target(self.settings.replicas, members.voters.len(), members.nodes.len())
    }

    /// Writes `hash`'s fresh record, which keeps the blob for the grace period. Records of
    /// the adds within one eighth of the grace period share a lease, so a burst of small adds
    /// costs one lease grant; each record lives between one and 1 1/8 grace periods.
    pub async fn mark_fresh(&self, hash: &BlobHash) -> Result<(), AspenError> {
        for attempt in 0..2 {
            let lease = self.fresh_lease().await?;
            match self.ctx.kv.put_with_lease(fresh_key(hash), Vec::new(), lease).await {
                Ok(_) => return Ok(()),
                // The shared lease ended early (revoked, or this node's clock ran slow):
                // forget it, so the next attempt grants another.
                Err(e) if e.is_lease_not_found() && attempt == 0 => {
                    let mut cached = self.fresh_lease.lock().await;
                    if cached.as_ref().is_some_and(|l| l.id == lease) {
                        *cached = None;
                    }
                }
                Err(e) => return Err(kv_error(e)),
            }
        }
        Err(AspenError::internal("the fresh-blob lease vanished twice in a row"))
    }

    /// The lease of the current window, granted when the window's is missing or old. Only
    /// the choice is serialized; the puts that use it run concurrently.
    async fn fresh_lease(&self) -> Result<LeaseId, AspenError> {
        let grace = self.settings.gc_grace;
        let window = grace / 8;
        let mut cached = self.fresh_lease.lock().await;
        if let Some(l) = cached.as_ref()
            && l.granted.elapsed() < window
        {
            return Ok(l.id);
        }
        let granted = Instant::now();
        let lease = self.ctx.kv.lease_grant(grace + window).await.map_err(kv_error)?;
        *cached = Some(FreshLease { id: lease.id, granted });
        Ok(lease.id)
    }

    /// Stores what `chunks` yields as one blob and keeps it: durable on this node, a fresh
    /// record written, copied to the replica target before this returns. Bytes that hash to
    /// anything but `expected` are refused and not kept (without a tag or a fresh record,
    /// garbage collection removes them).
    pub async fn add_stream(
        &self,
        chunks: impl futures::Stream<Item = std::io::Result<bytes::Bytes>> + Send + Sync + 'static,
        expected: Option<BlobHash>,
    ) -> Result<crate::protocol::Added, AspenError> {
        let tag = self.store.add_stream(chunks).await.temp_tag().await;
        // The temp tag keeps the blob from garbage collection until its fresh record exists.
        let tag = tag.map_err(|e| AspenError::invalid(format!("the blob was not stored: {e}")))?;
        let hash = tag.hash();
        if let Some(expected) = expected
            && expected != *hash.as_bytes()
        {
            return Err(AspenError::invalid(format!(
                "the bytes hash to {hash}, not to the expected {}; the blob was not kept",
                Hash::from_bytes(expected)
            )));
        }
        let size = self
            .complete_size(hash)
            .await?
            .ok_or_else(|| AspenError::internal(format!("blob {hash} is incomplete right after adding it")))?;
        self.persist(hash).await?;
        self.mark_fresh(hash.as_bytes()).await?;
        let replicas = self.replicate_added(&[(*hash.as_bytes(), size)]).await?;
        drop(tag);
        Ok(crate::protocol::Added { hash: *hash.as_bytes(), size, replicas: replicas[0] })
    }

    /// Makes a blob this node holds survive a crash or power loss before the node counts
    /// itself as a holder: iroh-blobs writes data and outboard files without fsync and
    /// batches its metadata commits. Small blobs live inside the store's database, which the
    /// final commit covers.
    pub async fn persist(&self, hash: Hash) -> Result<(), AspenError> {
        let paths = PathOptions::new(&self.ctx.data_dir.join("blobs"));
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
        self.store.sync_db().await.map_err(AspenError::storage)
    }

    /// The size of `hash` if this node holds it complete.
    pub async fn complete_size(&self, hash: Hash) -> Result<Option<u64>, AspenError> {
        match self.store.status(hash).await.map_err(AspenError::storage)? {
            BlobStatus::Complete { size } => Ok(Some(size)),
            _ => Ok(None),
        }
    }

    /// Every blob this node holds complete, in hash order.
    pub async fn complete_hashes(&self) -> Result<BTreeSet<BlobHash>, AspenError> {
        let mut held = BTreeSet::new();
        for hash in self.store.list().hashes().await.map_err(AspenError::storage)? {
            if self.complete_size(hash).await?.is_some() {
                held.insert(*hash.as_bytes());
            }
        }
        Ok(held)
    }

    /// Makes sure this node holds `hash` complete, fetching it from the other members in
    /// turn (`prefer` first, then in node id order) when it does not. Returns its size and a
    /// temp tag that keeps the blob from garbage collection while the caller holds it. A
    /// transfer that fails verification or breaks off is dropped and the next member is
    /// asked. Fails with `Unavailable` when no member provides it whole.
    pub async fn ensure_local(&self, hash: Hash, prefer: Option<u64>) -> Result<(u64, TempTag), AspenError> {
        let tag = self.store.tags().temp_tag(hash).await.map_err(AspenError::storage)?;
        if let Some(size) = self.complete_size(hash).await? {
            return Ok((size, tag));
        }
        let mut peers = self.ctx.cluster.members().others();
        peers.sort_by_key(|(id, _)| Some(*id) != prefer);
        let mut tried = Vec::new();
        for (peer_id, peer) in peers {
            let Ok(addr) = aspen_net::endpoint::endpoint_addr(&peer) else { continue };
            let connect = self.ctx.endpoint.connect(addr, iroh_blobs::ALPN);
            let conn = match tokio::time::timeout(PEER_CONNECT_TIMEOUT, connect).await {
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
            match self.store.remote().fetch(conn, hash).await {
                Ok(stats) => {
                    tracing::debug!(%hash, bytes = stats.payload_bytes_read, "fetched a blob from a peer");
                    if let Some(size) = self.complete_size(hash).await? {
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
}

/// Every blob the cluster keeps: named by a pin or by a fresh record. Linearizable.
pub async fn live_blobs(kv: &dyn aspen_kv::Kv) -> Result<BTreeSet<BlobHash>, AspenError> {
    let mut live = BTreeSet::new();
    let (pins, _) = kv.scan_all(PIN_PREFIX, ReadConsistency::Linearizable).await.map_err(kv_error)?;
    live.extend(pins.iter().filter_map(|kv| pin_hash(&kv.value)));
    let (fresh, _) = kv.scan_all(FRESH_PREFIX, ReadConsistency::Linearizable).await.map_err(kv_error)?;
    live.extend(fresh.iter().filter_map(|kv| fresh_hash(&kv.key)));
    Ok(live)
}

/// The iroh-blobs protocol, for cluster members only.
#[derive(Clone)]
pub struct MemberBlobs {
    inner: BlobsProtocol,
    cluster: Arc<dyn aspen_app::Cluster>,
}

impl std::fmt::Debug for MemberBlobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemberBlobs").finish_non_exhaustive()
    }
}

impl MemberBlobs {
    pub fn new(store: &FsStore, cluster: Arc<dyn aspen_app::Cluster>) -> Self {
        MemberBlobs { inner: BlobsProtocol::new(store, None), cluster }
    }
}

impl ProtocolHandler for MemberBlobs {
    async fn accept(&self, connection: Connection) -> Result<(), AcceptError> {
        if !self.cluster.is_member_key(connection.remote_id().as_bytes()) {
            tracing::debug!(peer = %connection.remote_id(), "refused a blob connection from a non-member");
            connection.close(1u32.into(), b"not a cluster member");
            return Ok(());
        }
        self.inner.accept(connection).await
    }

    /// Nothing: the blob app's own shutdown, which the node runs before the protocols',
    /// closes the store (closing it twice logged an error on every stop).
    async fn shutdown(&self) {}
}
