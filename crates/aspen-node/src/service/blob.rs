//! Blob requests: add (raw bytes follow the request on its stream), get (raw bytes follow
//! the answer), has, list, status, and the named pins. Served by the node that receives
//! them: blob bytes are not in the Raft log (pins and fresh records are, written through
//! the leader like any key). Memory stays constant whatever the size: bytes pass through in
//! QUIC-sized chunks.
//!
//! Members send each other `BlobReplicate`, `BlobHas` and `BlobList` marked `Forwarded`
//! (replication, status and repair); those arrive here too.

use aspen_core::api::{BlobEntry, BlobPinEntry, ClientRequest, ClientResponse, ReadConsistency};
use aspen_core::blob::{PIN_PREFIX, pin_hash, pin_key, pin_name, validate_pin_name};
use aspen_core::command::WriteResult;
use aspen_core::error::AspenError;
use aspen_core::limits::MAX_BLOB_LIST;
use bytes::Bytes;
use futures::StreamExt;
use iroh::endpoint::{RecvStream, SendStream};
use iroh_blobs::Hash;
use iroh_blobs::api::proto::ExportRangesItem;

use super::dispatch;
use crate::blob_replication::{replicate_added, status};
use crate::blobs::{complete_size, ensure_local, mark_fresh, persist};
use crate::state::NodeState;

/// Largest chunk read from or written to a stream at once.
const CHUNK_BYTES: usize = 256 * 1024;

/// Whether `request` is served here, on its own stream, rather than by `dispatch`.
pub fn is_blob_request(request: &ClientRequest) -> bool {
    match request {
        ClientRequest::Forwarded(inner) => matches!(
            **inner,
            ClientRequest::BlobReplicate { .. } | ClientRequest::BlobHas { .. } | ClientRequest::BlobList { .. }
        ),
        ClientRequest::BlobAdd
        | ClientRequest::BlobGet { .. }
        | ClientRequest::BlobHas { .. }
        | ClientRequest::BlobList { .. }
        | ClientRequest::BlobReplicate { .. }
        | ClientRequest::BlobStatus { .. }
        | ClientRequest::BlobPin { .. }
        | ClientRequest::BlobUnpin { .. }
        | ClientRequest::BlobPins { .. } => true,
        _ => false,
    }
}

/// Serves a blob request (see [`is_blob_request`]) on its stream.
pub async fn serve(state: &NodeState, request: &ClientRequest, mut send: SendStream, recv: RecvStream) {
    let request = match request {
        ClientRequest::Forwarded(inner) => &**inner,
        other => other,
    };
    let response = match request {
        ClientRequest::BlobAdd => add(state, recv).await,
        ClientRequest::BlobGet { hash } => {
            get(state, Hash::from_bytes(*hash), &mut send).await;
            return;
        }
        ClientRequest::BlobHas { hash } => complete_size(&state.blobs, Hash::from_bytes(*hash))
            .await
            .map(|size| ClientResponse::BlobHas { present: size.is_some(), size }),
        ClientRequest::BlobReplicate { hash, from } => replicate_here(state, Hash::from_bytes(*hash), *from).await,
        ClientRequest::BlobList { after, limit } => list(state, *after, *limit).await,
        ClientRequest::BlobStatus { hash } => {
            status(state, hash).await.map(|holders| ClientResponse::BlobStatus { holders })
        }
        ClientRequest::BlobPin { name, hash } => pin(state, name, hash).await,
        ClientRequest::BlobUnpin { name } => unpin(state, name).await,
        ClientRequest::BlobPins { after, limit } => pins(state, after.as_deref(), *limit).await,
        _ => Err(AspenError::internal(format!("{} is not a blob request", request.name()))),
    };
    let response = response.unwrap_or_else(ClientResponse::Error);
    let _ = aspen_net::write_frame(&mut send, &response).await;
    let _ = send.finish();
}

/// Streams the rest of `recv` into the store. A client that stops before finishing its
/// side of the stream adds nothing.
async fn add(state: &NodeState, mut recv: RecvStream) -> Result<ClientResponse, AspenError> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(8);
    let pump = async move {
        loop {
            match recv.read_chunk(CHUNK_BYTES).await {
                Ok(Some(bytes)) => {
                    if tx.send(Ok(bytes)).await.is_err() {
                        return;
                    }
                }
                Ok(None) => return,
                Err(e) => {
                    let _ = tx.send(Err(std::io::Error::other(format!("the upload broke off: {e}")))).await;
                    return;
                }
            }
        }
    };
    let chunks = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
    let import = async {
        let tag = state.blobs.add_stream(chunks).await.temp_tag().await;
        tag.map_err(|e| AspenError::invalid(format!("the blob was not stored: {e}")))
    };
    let ((), tag) = tokio::join!(pump, import);
    // The temp tag keeps the blob from garbage collection until its fresh record exists.
    let tag = tag?;
    let hash = tag.hash();
    let size = complete_size(&state.blobs, hash)
        .await?
        .ok_or_else(|| AspenError::internal(format!("blob {hash} is incomplete right after adding it")))?;
    persist(state, hash).await?;
    mark_fresh(state, hash.as_bytes()).await?;
    let replicas = replicate_added(state, hash.as_bytes(), size).await?;
    drop(tag);
    Ok(ClientResponse::BlobAdded { hash: *hash.as_bytes(), size, replicas })
}

/// A member's request to hold `hash`: fetched from the others if need be, and committed to
/// the store before this node says it holds it.
async fn replicate_here(state: &NodeState, hash: Hash, from: Option<u64>) -> Result<ClientResponse, AspenError> {
    let (size, _tag) = ensure_local(state, hash, from).await?;
    persist(state, hash).await?;
    Ok(ClientResponse::BlobHas { present: true, size: Some(size) })
}

/// Names `hash` with pin `name` (replacing what the name pinned before). The blob must be
/// somewhere in the cluster: it is fetched to this node first if need be.
async fn pin(state: &NodeState, name: &str, hash: &[u8; 32]) -> Result<ClientResponse, AspenError> {
    validate_pin_name(name)?;
    let (_size, _tag) = ensure_local(state, Hash::from_bytes(*hash), None).await?;
    let put = ClientRequest::Put { key: pin_key(name), value: hash.to_vec(), lease: None };
    match dispatch(state, put).await {
        ClientResponse::Write(_) => Ok(ClientResponse::Done),
        ClientResponse::Error(e) => Err(e),
        other => Err(AspenError::internal(format!("a pin write was answered with {other:?}"))),
    }
}

async fn unpin(state: &NodeState, name: &str) -> Result<ClientResponse, AspenError> {
    validate_pin_name(name)?;
    match dispatch(state, ClientRequest::Delete { key: pin_key(name) }).await {
        ClientResponse::Write(WriteResult::Delete { deleted, .. }) => {
            Ok(ClientResponse::BlobUnpinned { existed: deleted > 0 })
        }
        ClientResponse::Error(e) => Err(e),
        other => Err(AspenError::internal(format!("an unpin was answered with {other:?}"))),
    }
}

/// Pins in name order after `after`, read linearizably.
async fn pins(state: &NodeState, after: Option<&str>, limit: u32) -> Result<ClientResponse, AspenError> {
    let limit = list_limit(limit)?;
    let mut start = pin_key(after.unwrap_or(""));
    if after.is_some() {
        start.push(0);
    }
    let end = aspen_core::keys::prefix_end(PIN_PREFIX.as_bytes());
    let scan = ClientRequest::Scan { start, end, limit, consistency: ReadConsistency::Linearizable };
    match dispatch(state, scan).await {
        ClientResponse::Scan { kvs, more, .. } => {
            let pins = kvs
                .iter()
                .filter_map(|kv| {
                    Some(BlobPinEntry { name: pin_name(&kv.key)?.to_string(), hash: pin_hash(&kv.value)? })
                })
                .collect();
            Ok(ClientResponse::BlobPins { pins, more })
        }
        ClientResponse::Error(e) => Err(e),
        other => Err(AspenError::internal(format!("a pin scan was answered with {other:?}"))),
    }
}

/// A list request's limit: 0 means 1,000; over [`MAX_BLOB_LIST`] is refused.
fn list_limit(limit: u32) -> Result<u32, AspenError> {
    match limit {
        0 => Ok(1_000),
        l if l > MAX_BLOB_LIST => {
            Err(AspenError::invalid(format!("blob list limit {l} is over MAX_BLOB_LIST = {MAX_BLOB_LIST}")))
        }
        l => Ok(l),
    }
}

/// Answers `BlobData { size }` and the bytes, fetching the blob from a member first if this
/// node lacks it. A failure before the header is an error frame; after it, the stream is
/// reset so the client cannot mistake a short blob for a whole one.
async fn get(state: &NodeState, hash: Hash, send: &mut SendStream) {
    let (size, _tag) = match ensure_local(state, hash, None).await {
        Ok(found) => found,
        Err(e) => {
            let _ = aspen_net::write_frame(send, &ClientResponse::Error(e)).await;
            let _ = send.finish();
            return;
        }
    };
    if aspen_net::write_frame(send, &ClientResponse::BlobData { size }).await.is_err() {
        return;
    }
    // One streaming export of the whole blob: a read request per chunk would cost a round
    // trip to the store's own runtime each time.
    let items = state.blobs.export_ranges(hash, 0..size).stream();
    tokio::pin!(items);
    let mut sent = 0u64;
    while let Some(item) = items.next().await {
        match item {
            ExportRangesItem::Size(_) => {}
            ExportRangesItem::Data(leaf) => {
                sent += leaf.data.len() as u64;
                if send.write_chunk(leaf.data).await.is_err() {
                    return;
                }
            }
            ExportRangesItem::Error(e) => {
                tracing::warn!(%hash, "reading a blob failed: {e}");
                break;
            }
        }
    }
    if sent == size {
        let _ = send.finish();
    } else {
        tracing::warn!(%hash, sent, size, "blob read ended early; resetting the stream");
        let _ = send.reset(1u32.into());
    }
}

async fn list(state: &NodeState, after: Option<[u8; 32]>, limit: u32) -> Result<ClientResponse, AspenError> {
    let limit = list_limit(limit)? as usize;
    let mut hashes: Vec<[u8; 32]> =
        state.blobs.list().hashes().await.map_err(AspenError::storage)?.into_iter().map(|h| *h.as_bytes()).collect();
    hashes.sort_unstable();
    let mut blobs = Vec::new();
    let mut more = false;
    for hash in hashes.into_iter().filter(|h| after.is_none_or(|a| *h > a)) {
        if blobs.len() == limit {
            more = true;
            break;
        }
        if let Some(size) = complete_size(&state.blobs, Hash::from_bytes(hash)).await? {
            blobs.push(BlobEntry { hash, size });
        }
    }
    Ok(ClientResponse::BlobList { blobs, more })
}
