//! Blob requests from clients: add (raw bytes follow the request on its stream), get (raw
//! bytes follow the answer), has and list. Served by the node that receives them, never
//! forwarded: blobs are not in the Raft log. Memory stays constant whatever the size: bytes
//! pass through in QUIC-sized chunks.

use aspen_core::api::{BlobEntry, ClientRequest, ClientResponse};
use aspen_core::error::AspenError;
use aspen_core::limits::MAX_BLOB_LIST;
use bytes::Bytes;
use iroh::endpoint::{RecvStream, SendStream};
use iroh_blobs::Hash;
use tokio::io::AsyncReadExt;

use crate::blobs::{complete_size, ensure_local};
use crate::state::NodeState;

/// Largest chunk read from or written to a stream at once.
const CHUNK_BYTES: usize = 256 * 1024;

/// Whether `request` is served here, on its own stream, rather than by `dispatch`.
pub fn is_blob_request(request: &ClientRequest) -> bool {
    matches!(
        request,
        ClientRequest::BlobAdd
            | ClientRequest::BlobGet { .. }
            | ClientRequest::BlobHas { .. }
            | ClientRequest::BlobList { .. }
    )
}

/// Serves a blob request (see [`is_blob_request`]) on its stream.
pub async fn serve(state: &NodeState, request: &ClientRequest, mut send: SendStream, recv: RecvStream) {
    let response = match request {
        ClientRequest::BlobAdd => add(state, recv).await,
        ClientRequest::BlobGet { hash } => {
            get(state, Hash::from_bytes(*hash), &mut send).await;
            return;
        }
        ClientRequest::BlobHas { hash } => complete_size(&state.blobs, Hash::from_bytes(*hash))
            .await
            .map(|size| ClientResponse::BlobHas { present: size.is_some(), size }),
        ClientRequest::BlobList { after, limit } => list(state, *after, *limit).await,
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
    let hash = tag?.hash();
    let size = complete_size(&state.blobs, hash)
        .await?
        .ok_or_else(|| AspenError::internal(format!("blob {hash} is incomplete right after adding it")))?;
    Ok(ClientResponse::BlobAdded { hash: *hash.as_bytes(), size })
}

/// Answers `BlobData { size }` and the bytes, fetching the blob from a member first if this
/// node lacks it. A failure before the header is an error frame; after it, the stream is
/// reset so the client cannot mistake a short blob for a whole one.
async fn get(state: &NodeState, hash: Hash, send: &mut SendStream) {
    let size = match ensure_local(state, hash).await {
        Ok(size) => size,
        Err(e) => {
            let _ = aspen_net::write_frame(send, &ClientResponse::Error(e)).await;
            let _ = send.finish();
            return;
        }
    };
    if aspen_net::write_frame(send, &ClientResponse::BlobData { size }).await.is_err() {
        return;
    }
    let mut reader = state.blobs.reader(hash);
    let mut buf = vec![0u8; CHUNK_BYTES];
    let mut sent = 0u64;
    while sent < size {
        let n = match reader.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if send.write_all(&buf[..n]).await.is_err() {
            return;
        }
        sent += n as u64;
    }
    if sent == size {
        let _ = send.finish();
    } else {
        tracing::warn!(%hash, sent, size, "blob read ended early; resetting the stream");
        let _ = send.reset(1u32.into());
    }
}

async fn list(state: &NodeState, after: Option<[u8; 32]>, limit: u32) -> Result<ClientResponse, AspenError> {
    let limit = match limit {
        0 => 1_000,
        l if l > MAX_BLOB_LIST => {
            return Err(AspenError::invalid(format!("blob list limit {l} is over MAX_BLOB_LIST = {MAX_BLOB_LIST}")));
        }
        l => l,
    } as usize;
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
