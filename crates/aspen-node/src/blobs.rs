//! The node's blob store: an iroh-blobs file store in `<data dir>/blobs`, served to the
//! other members of the cluster (and only to them) on the iroh-blobs ALPN, and filled from
//! them on demand.
//!
//! Clients never speak the iroh-blobs protocol: they add and read blobs through the client
//! protocol (`service::blob`), where their token is checked. Between nodes, a transfer is
//! the iroh-blobs get protocol, verified chunk by chunk against the BLAKE3 hash (bao) as it
//! streams in, so a node never stores bytes that do not hash to what was asked for.

use std::sync::Arc;
use std::time::Duration;

use aspen_core::error::AspenError;
use iroh::endpoint::Connection;
use iroh::protocol::{AcceptError, ProtocolHandler};
use iroh_blobs::api::proto::BlobStatus;
use iroh_blobs::store::fs::FsStore;
use iroh_blobs::{BlobsProtocol, Hash};

use crate::state::NodeState;

/// How long a node waits to connect to a peer for a blob.
const PEER_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Opens (or creates) the store in `<data_dir>/blobs`.
pub async fn open_store(data_dir: &std::path::Path) -> anyhow::Result<FsStore> {
    let dir = data_dir.join("blobs");
    std::fs::create_dir_all(&dir)?;
    FsStore::load(&dir).await.map_err(|e| anyhow::anyhow!("cannot open the blob store in {}: {e}", dir.display()))
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

/// The size of `hash` if this node holds it complete.
pub async fn complete_size(store: &FsStore, hash: Hash) -> Result<Option<u64>, AspenError> {
    match store.status(hash).await.map_err(AspenError::storage)? {
        BlobStatus::Complete { size } => Ok(Some(size)),
        _ => Ok(None),
    }
}

/// Makes sure this node holds `hash` complete, fetching it from the other members in turn
/// when it does not. Returns its size. Fails with `Unavailable` when no member has it.
pub async fn ensure_local(state: &NodeState, hash: Hash) -> Result<u64, AspenError> {
    if let Some(size) = complete_size(&state.blobs, hash).await? {
        return Ok(size);
    }
    let peers = state.other_members();
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
                    return Ok(size);
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
