//! Blobs: add from any reader, read into any writer, both streaming in constant memory.
//!
//! A read is verified here as well as on the nodes: the bytes are hashed with BLAKE3 as they
//! arrive, and a blob whose bytes do not hash to its name, or that ends early, fails with
//! [`ClientError::BlobCorrupt`] after the last byte. Callers that write somewhere lasting
//! should write to a scratch place and keep it only on success (`aspen blob get -o` does).

use aspen_core::api::{BlobEntry, BlobHolder, BlobPinEntry, ClientRequest, ClientResponse};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use crate::client::Client;
use crate::error::ClientError;

/// Largest chunk moved at once.
const CHUNK_BYTES: usize = 256 * 1024;
/// Bytes of a blob being read that are gathered before each write to the destination.
const WRITE_BUFFER_BYTES: usize = 1024 * 1024;

/// What [`Client::blob_get_retrying`] awaits to empty its destination before a retry.
pub type Restart<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<()>> + Send + 'a>>;

/// A blob's name (its BLAKE3 hash) and size, and how many nodes held it when the add was
/// acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobInfo {
    pub hash: [u8; 32],
    pub size: u64,
    pub replicas: u32,
}

/// A hash as lowercase hex, as the CLI prints it.
pub fn blob_hash_hex(hash: &[u8; 32]) -> String {
    data_encoding::HEXLOWER.encode(hash)
}

/// Parses a 64-digit hex hash.
pub fn parse_blob_hash(text: &str) -> Result<[u8; 32], String> {
    let bytes = data_encoding::HEXLOWER_PERMISSIVE
        .decode(text.as_bytes())
        .map_err(|_| format!("blob hash {text:?} is not hex"))?;
    bytes.try_into().map_err(|_| format!("blob hash {text:?} is not 64 hex digits (32 bytes)"))
}

impl Client {
    /// Adds everything `data` yields as one blob on the node this client talks to.
    pub async fn blob_add(&self, data: &mut (impl AsyncRead + Unpin)) -> Result<BlobInfo, ClientError> {
        let deadline = Instant::now() + self.config().request_timeout;
        let (mut send, mut recv, current) = self.open_stream(deadline).await?;
        let node = current.node.clone();
        let broken = |reason: String| ClientError::Connection { node: node.clone(), reason };
        aspen_net::write_frame(&mut send, &ClientRequest::BlobAdd).await.map_err(|e| broken(e.to_string()))?;
        let mut buf = vec![0u8; CHUNK_BYTES];
        loop {
            let n = data.read(&mut buf).await.map_err(|e| ClientError::BlobIo(format!("reading the data: {e}")))?;
            if n == 0 {
                break;
            }
            send.write_all(&buf[..n]).await.map_err(|e| broken(format!("sending the blob: {e}")))?;
        }
        send.finish().map_err(|e| broken(e.to_string()))?;
        match aspen_net::read_frame::<ClientResponse>(&mut recv).await {
            Ok(Some(ClientResponse::BlobAdded { hash, size, replicas })) => Ok(BlobInfo { hash, size, replicas }),
            Ok(Some(ClientResponse::Error(e))) => Err(ClientError::Aspen(e)),
            Ok(Some(other)) => Err(ClientError::unexpected("blob_add", &other)),
            Ok(None) => Err(broken("the node closed the stream without an answer".into())),
            Err(e) => Err(broken(e.to_string())),
        }
    }

    /// Adds `bytes` as one blob.
    pub async fn blob_add_bytes(&self, bytes: &[u8]) -> Result<BlobInfo, ClientError> {
        self.blob_add(&mut &bytes[..]).await
    }

    /// Writes blob `hash` into `out`, verified; returns its size. On any error, what was
    /// written to `out` must be discarded. A node that sent bytes failing verification is
    /// set aside, so the next call asks another node of this client's (see
    /// [`Client::blob_get_retrying`]).
    pub async fn blob_get_to(&self, hash: [u8; 32], out: &mut (impl AsyncWrite + Unpin)) -> Result<u64, ClientError> {
        let deadline = Instant::now() + self.config().request_timeout;
        let (mut send, mut recv, current) = self.open_stream(deadline).await?;
        let node = current.node.clone();
        let broken = |reason: String| ClientError::Connection { node: node.clone(), reason };
        let corrupt = |reason: String| ClientError::BlobCorrupt { expected: blob_hash_hex(&hash), reason };
        aspen_net::write_frame(&mut send, &ClientRequest::BlobGet { hash }).await.map_err(|e| broken(e.to_string()))?;
        send.finish().map_err(|e| broken(e.to_string()))?;
        let size = match aspen_net::read_frame::<ClientResponse>(&mut recv).await {
            Ok(Some(ClientResponse::BlobData { size })) => size,
            Ok(Some(ClientResponse::Error(e))) => return Err(ClientError::Aspen(e)),
            Ok(Some(other)) => return Err(ClientError::unexpected("blob_get", &other)),
            Ok(None) => return Err(broken("the node closed the stream without answering".into())),
            Err(e) => return Err(broken(e.to_string())),
        };
        // QUIC hands over small chunks; writing each straight to a file costs a blocking-pool
        // round trip per chunk, which capped reads near 60 MB/s.
        let mut out = tokio::io::BufWriter::with_capacity(WRITE_BUFFER_BYTES, out);
        let received = async {
            let mut hasher = blake3::Hasher::new();
            let mut received = 0u64;
            loop {
                let chunk =
                    recv.read_chunk(CHUNK_BYTES).await.map_err(|e| corrupt(format!("the transfer broke off: {e}")))?;
                let Some(bytes) = chunk else { break };
                received += bytes.len() as u64;
                if received > size {
                    return Err(corrupt(format!("the node sent more than the {size} bytes it announced")));
                }
                hasher.update(&bytes);
                out.write_all(&bytes).await.map_err(|e| ClientError::BlobIo(format!("writing the blob: {e}")))?;
            }
            if received != size {
                return Err(corrupt(format!("got {received} of {size} bytes")));
            }
            let actual = hasher.finalize();
            if actual.as_bytes() != &hash {
                return Err(corrupt(format!("the bytes hash to {}", actual.to_hex())));
            }
            out.flush().await.map_err(|e| ClientError::BlobIo(format!("writing the blob: {e}")))?;
            Ok(size)
        }
        .await;
        if let Err(ClientError::BlobCorrupt { .. }) = &received {
            tracing::warn!(node = %current.node, hash = %blob_hash_hex(&hash), "a node sent a blob that failed verification");
            self.mark_failed(&current).await;
        }
        received
    }

    /// [`Client::blob_get_to`] for a destination that can start over: after a transfer that
    /// fails verification, `restart` empties `out` and the next node of this client's is
    /// asked, once per node. Wrong bytes are never kept.
    pub async fn blob_get_retrying<W, R>(&self, hash: [u8; 32], out: &mut W, mut restart: R) -> Result<u64, ClientError>
    where
        W: AsyncWrite + Unpin,
        R: for<'a> FnMut(&'a mut W) -> Restart<'a>,
    {
        let attempts = self.node_count().max(1);
        let mut attempt = 1;
        loop {
            match self.blob_get_to(hash, out).await {
                Err(ClientError::BlobCorrupt { .. }) if attempt < attempts => {
                    attempt += 1;
                    restart(out).await.map_err(|e| ClientError::BlobIo(format!("starting the blob over: {e}")))?;
                }
                other => return other,
            }
        }
    }

    /// Reads a whole blob into memory, verified, asking another node if one sends damaged
    /// bytes. For small blobs; see [`Client::blob_get_to`].
    pub async fn blob_get(&self, hash: [u8; 32]) -> Result<Vec<u8>, ClientError> {
        let mut out = Vec::new();
        self.blob_get_retrying(hash, &mut out, |v: &mut Vec<u8>| {
            v.clear();
            Box::pin(std::future::ready(Ok(())))
        })
        .await?;
        Ok(out)
    }

    /// The blob's size if the node this client talks to holds it complete.
    pub async fn blob_has(&self, hash: [u8; 32]) -> Result<Option<u64>, ClientError> {
        match self.request(ClientRequest::BlobHas { hash }).await? {
            ClientResponse::BlobHas { present: true, size } => Ok(size),
            ClientResponse::BlobHas { present: false, .. } => Ok(None),
            other => Err(ClientError::unexpected("blob_has", &other)),
        }
    }

    /// Up to `limit` complete blobs the node holds, in hash order after `after`, and
    /// whether more follow.
    pub async fn blob_list(&self, after: Option<[u8; 32]>, limit: u32) -> Result<(Vec<BlobEntry>, bool), ClientError> {
        match self.request(ClientRequest::BlobList { after, limit }).await? {
            ClientResponse::BlobList { blobs, more } => Ok((blobs, more)),
            other => Err(ClientError::unexpected("blob_list", &other)),
        }
    }

    /// What each member of the cluster says of blob `hash`: its size where it is held
    /// complete, or why the member could not be asked.
    pub async fn blob_status(&self, hash: [u8; 32]) -> Result<Vec<BlobHolder>, ClientError> {
        match self.request(ClientRequest::BlobStatus { hash }).await? {
            ClientResponse::BlobStatus { holders } => Ok(holders),
            other => Err(ClientError::unexpected("blob_status", &other)),
        }
    }

    /// Pins blob `hash` under `name`: kept from garbage collection and kept replicated
    /// until unpinned. Fails when no member holds the blob.
    pub async fn blob_pin(&self, name: &str, hash: [u8; 32]) -> Result<(), ClientError> {
        match self.request(ClientRequest::BlobPin { name: name.to_string(), hash }).await? {
            ClientResponse::Done => Ok(()),
            other => Err(ClientError::unexpected("blob_pin", &other)),
        }
    }

    /// Removes pin `name`; returns whether it existed.
    pub async fn blob_unpin(&self, name: &str) -> Result<bool, ClientError> {
        match self.request(ClientRequest::BlobUnpin { name: name.to_string() }).await? {
            ClientResponse::BlobUnpinned { existed } => Ok(existed),
            other => Err(ClientError::unexpected("blob_unpin", &other)),
        }
    }

    /// Up to `limit` pins in name order after `after`, and whether more follow.
    pub async fn blob_pins(&self, after: Option<&str>, limit: u32) -> Result<(Vec<BlobPinEntry>, bool), ClientError> {
        match self.request(ClientRequest::BlobPins { after: after.map(str::to_string), limit }).await? {
            ClientResponse::BlobPins { pins, more } => Ok((pins, more)),
            other => Err(ClientError::unexpected("blob_pins", &other)),
        }
    }
}
