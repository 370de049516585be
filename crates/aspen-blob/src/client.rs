//! [`BlobClient`]: the blob app's protocol from a client, over an `aspen_client::Client`.
//!
//! Adds stream from any async reader (of unknown length), reads stream into any async
//! writer, both in constant memory; a byte range reads as an `AsyncRead`. A whole read is
//! verified here as well as on the nodes: the bytes are hashed with BLAKE3 as they arrive,
//! and a blob whose bytes do not hash to its name, or that ends early, fails with
//! `ClientError::BlobCorrupt` after the last byte. Callers that write somewhere lasting
//! should write to a scratch place and keep it only on success (`aspen blob get -o` does).
//! A range read is verified by the node that serves it (bao, as it fetched the blob), not
//! again here: checking a range needs the blob's outboard, which clients do not keep.

use std::pin::Pin;
use std::task::{Context, Poll};

use aspen_client::{AppChannel, AppStream, Client, ClientError};
use aspen_core::AspenError;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::protocol::{
    Added, BLOB_ALPN, BlobEntry, BlobHolder, BlobRequest, BlobResponse, ByteRange, MAX_BATCH, PinEntry,
};
use crate::records::BlobHash;

/// Largest chunk moved at once.
const CHUNK_BYTES: usize = 256 * 1024;
/// Bytes of a blob being read that are gathered before each write to the destination.
const WRITE_BUFFER_BYTES: usize = 1024 * 1024;

/// What [`BlobClient::get_retrying`] awaits to empty its destination before a retry.
pub type Restart<'a> = Pin<Box<dyn std::future::Future<Output = std::io::Result<()>> + Send + 'a>>;

/// A hash as lowercase hex, as the CLI prints it.
pub fn blob_hash_hex(hash: &BlobHash) -> String {
    data_encoding::HEXLOWER.encode(hash)
}

/// Parses a 64-digit hex hash.
pub fn parse_blob_hash(text: &str) -> Result<BlobHash, String> {
    let bytes = data_encoding::HEXLOWER_PERMISSIVE
        .decode(text.as_bytes())
        .map_err(|_| format!("blob hash {text:?} is not hex"))?;
    bytes.try_into().map_err(|_| format!("blob hash {text:?} is not 64 hex digits (32 bytes)"))
}

/// The blob app, as a client sees it. Cheap to clone.
#[derive(Debug, Clone)]
pub struct BlobClient {
    channel: AppChannel,
}

fn unexpected(request: &'static str, response: &BlobResponse) -> ClientError {
    let mut text = format!("{response:?}");
    text.truncate(200);
    ClientError::UnexpectedResponse { request, response: text }
}

fn broken(stream: &AppStream, reason: String) -> ClientError {
    ClientError::Connection { node: stream.node.clone(), reason }
}

impl BlobClient {
    /// The blob app on `client`'s cluster, presenting its token.
    pub fn new(client: &Client) -> Self {
        BlobClient { channel: client.app(BLOB_ALPN) }
    }

    async fn call(&self, request: BlobRequest) -> Result<BlobResponse, ClientError> {
        self.channel.call(request.name(), &request, request.is_repeatable()).await
    }

    /// Reads the one answer frame of a request whose bytes were sent (or refused).
    async fn answer(stream: &mut AppStream) -> Result<BlobResponse, ClientError> {
        match aspen_net::read_frame::<BlobResponse>(&mut stream.recv).await {
            Ok(Some(BlobResponse::Error(e))) => Err(ClientError::Aspen(e)),
            Ok(Some(other)) => Ok(other),
            Ok(None) => Err(broken(stream, "the node closed the stream without an answer".into())),
            Err(e) => Err(broken(stream, e.to_string())),
        }
    }

    /// Sends `request`, then what `body` writes, then reads the answer. When the node
    /// refuses early (it stops reading), its answer says why.
    async fn upload<F>(&self, request: BlobRequest, body: F) -> Result<BlobResponse, ClientError>
    where
        F: AsyncFnOnce(&mut iroh::endpoint::SendStream) -> Result<(), UploadError>,
    {
        let mut stream = self.channel.open_stream().await?;
        aspen_net::write_frame(&mut stream.send, &request).await.map_err(|e| broken(&stream, e.to_string()))?;
        match body(&mut stream.send).await {
            Ok(()) => {
                stream.send.finish().map_err(|e| broken(&stream, e.to_string()))?;
            }
            // The node stopped reading: its answer explains.
            Err(UploadError::Send(reason)) => {
                return match Self::answer(&mut stream).await {
                    Err(ClientError::Aspen(e)) => Err(ClientError::Aspen(e)),
                    _ => Err(broken(&stream, reason)),
                };
            }
            Err(UploadError::Local(e)) => {
                let _ = stream.send.reset(0u32.into());
                return Err(e);
            }
        }
        Self::answer(&mut stream).await
    }

    /// Adds everything `data` yields as one blob; answered once the replica target holds it.
    pub async fn add(&self, data: &mut (impl AsyncRead + Unpin)) -> Result<Added, ClientError> {
        self.add_inner(data, None).await
    }

    /// [`BlobClient::add`], refused (and nothing kept) unless the bytes hash to `expected`.
    pub async fn add_expecting(
        &self,
        data: &mut (impl AsyncRead + Unpin),
        expected: BlobHash,
    ) -> Result<Added, ClientError> {
        self.add_inner(data, Some(expected)).await
    }

    async fn add_inner(
        &self,
        data: &mut (impl AsyncRead + Unpin),
        expected: Option<BlobHash>,
    ) -> Result<Added, ClientError> {
        let body = async |send: &mut iroh::endpoint::SendStream| {
            let mut buf = vec![0u8; CHUNK_BYTES];
            loop {
                let n = data
                    .read(&mut buf)
                    .await
                    .map_err(|e| UploadError::Local(ClientError::BlobIo(format!("reading the data: {e}"))))?;
                if n == 0 {
                    return Ok(());
                }
                send.write_all(&buf[..n]).await.map_err(|e| UploadError::Send(format!("sending the blob: {e}")))?;
            }
        };
        match self.upload(BlobRequest::Add { expected }, body).await? {
            BlobResponse::Added(added) => Ok(added),
            other => Err(unexpected("blob_add", &other)),
        }
    }

    /// Adds `bytes` as one blob.
    pub async fn add_bytes(&self, bytes: &[u8]) -> Result<Added, ClientError> {
        self.add(&mut &bytes[..]).await
    }

    /// Adds many small blobs with one request and one replication round.
    pub async fn add_batch(&self, blobs: &[&[u8]]) -> Result<Vec<Added>, ClientError> {
        let count = u32::try_from(blobs.len()).unwrap_or(u32::MAX);
        if count > MAX_BATCH {
            return Err(ClientError::Aspen(AspenError::invalid(format!(
                "a batch of {count} blobs is over MAX_BATCH = {MAX_BATCH}"
            ))));
        }
        let body = async |send: &mut iroh::endpoint::SendStream| {
            for blob in blobs {
                let len = (blob.len() as u64).to_be_bytes();
                send.write_all(&len).await.map_err(|e| UploadError::Send(format!("sending the batch: {e}")))?;
                send.write_all(blob).await.map_err(|e| UploadError::Send(format!("sending the batch: {e}")))?;
            }
            Ok(())
        };
        match self.upload(BlobRequest::AddBatch { count }, body).await? {
            BlobResponse::AddedBatch { blobs } => Ok(blobs),
            other => Err(unexpected("blob_add_batch", &other)),
        }
    }

    /// Opens a read of `hash` (whole, or `range`): the announced blob size and the stream.
    async fn open_read(&self, hash: BlobHash, range: Option<ByteRange>) -> Result<(AppStream, u64, u64), ClientError> {
        let mut stream = self.channel.open_stream().await?;
        let request = BlobRequest::Get { hash, range };
        aspen_net::write_frame(&mut stream.send, &request).await.map_err(|e| broken(&stream, e.to_string()))?;
        stream.send.finish().map_err(|e| broken(&stream, e.to_string()))?;
        match Self::answer(&mut stream).await? {
            BlobResponse::Data { size, len, .. } => Ok((stream, size, len)),
            other => Err(unexpected("blob_get", &other)),
        }
    }

    /// Writes blob `hash` into `out`, verified; returns its size. On any error, what was
    /// written to `out` must be discarded. A node that sent bytes failing verification is
    /// set aside, so the next call asks another node (see [`BlobClient::get_retrying`]).
    pub async fn get_to(&self, hash: BlobHash, out: &mut (impl AsyncWrite + Unpin)) -> Result<u64, ClientError> {
        let (mut stream, size, _) = self.open_read(hash, None).await?;
        let corrupt = |reason: String| ClientError::BlobCorrupt { expected: blob_hash_hex(&hash), reason };
        // QUIC hands over packet-sized chunks. They are gathered into one buffer before each
        // hash and write: BLAKE3 hashes many 1 KiB chunks at once only when it is given them
        // at once (fed packet by packet it ran one block at a time, a quarter of the client's
        // time), and a file write per packet costs a blocking-pool round trip.
        let received = async {
            let write_err = |e: std::io::Error| ClientError::BlobIo(format!("writing the blob: {e}"));
            let mut hasher = blake3::Hasher::new();
            let mut batch = Vec::with_capacity(WRITE_BUFFER_BYTES);
            let mut received = 0u64;
            loop {
                let chunk = stream
                    .recv
                    .read_chunk(CHUNK_BYTES)
                    .await
                    .map_err(|e| corrupt(format!("the transfer broke off: {e}")))?;
                let Some(bytes) = chunk else { break };
                received += bytes.len() as u64;
                if received > size {
                    return Err(corrupt(format!("the node sent more than the {size} bytes it announced")));
                }
                batch.extend_from_slice(&bytes);
                if batch.len() >= WRITE_BUFFER_BYTES {
                    hasher.update(&batch);
                    out.write_all(&batch).await.map_err(write_err)?;
                    batch.clear();
                }
            }
            if received != size {
                return Err(corrupt(format!("got {received} of {size} bytes")));
            }
            hasher.update(&batch);
            let actual = hasher.finalize();
            if actual.as_bytes() != &hash {
                return Err(corrupt(format!("the bytes hash to {}", actual.to_hex())));
            }
            out.write_all(&batch).await.map_err(write_err)?;
            out.flush().await.map_err(write_err)?;
            Ok(size)
        }
        .await;
        if let Err(ClientError::BlobCorrupt { .. }) = &received {
            tracing::warn!(node = %stream.node, hash = %blob_hash_hex(&hash), "a node sent a blob that failed verification");
            self.channel.mark_failed(&stream).await;
        }
        received
    }

    /// [`BlobClient::get_to`] for a destination that can start over: after a transfer that
    /// fails verification, `restart` empties `out` and the next node is asked, once per
    /// node. Wrong bytes are never kept.
    pub async fn get_retrying<W, R>(&self, hash: BlobHash, out: &mut W, mut restart: R) -> Result<u64, ClientError>
    where
        W: AsyncWrite + Unpin,
        R: for<'a> FnMut(&'a mut W) -> Restart<'a>,
    {
        let attempts = self.channel.node_count().max(1);
        let mut attempt = 1;
        loop {
            match self.get_to(hash, out).await {
                Err(ClientError::BlobCorrupt { .. }) if attempt < attempts => {
                    attempt += 1;
                    restart(out).await.map_err(|e| ClientError::BlobIo(format!("starting the blob over: {e}")))?;
                }
                other => return other,
            }
        }
    }

    /// Reads a whole blob into memory, verified, asking another node if one sends damaged
    /// bytes. For small blobs; see [`BlobClient::get_to`].
    pub async fn get(&self, hash: BlobHash) -> Result<Vec<u8>, ClientError> {
        let mut out = Vec::new();
        self.get_retrying(hash, &mut out, |v: &mut Vec<u8>| {
            v.clear();
            Box::pin(std::future::ready(Ok(())))
        })
        .await?;
        Ok(out)
    }

    /// `len` bytes of blob `hash` from `offset` (fewer at the blob's end), as a stream.
    pub async fn read_range(&self, hash: BlobHash, offset: u64, len: u64) -> Result<BlobReader, ClientError> {
        let (stream, size, len) = self.open_read(hash, Some(ByteRange { offset, len })).await?;
        Ok(BlobReader { stream, size, remaining: len })
    }

    /// The blob's size if some member of the cluster holds it complete.
    pub async fn has(&self, hash: BlobHash) -> Result<Option<u64>, ClientError> {
        match self.call(BlobRequest::Has { hash }).await? {
            BlobResponse::Has { size } => Ok(size),
            other => Err(unexpected("blob_has", &other)),
        }
    }

    /// Up to `limit` complete blobs the cluster's members hold, in hash order after `after`,
    /// and whether more follow.
    pub async fn list(&self, after: Option<BlobHash>, limit: u32) -> Result<(Vec<BlobEntry>, bool), ClientError> {
        match self.call(BlobRequest::List { after, limit }).await? {
            BlobResponse::List { blobs, more } => Ok((blobs, more)),
            other => Err(unexpected("blob_list", &other)),
        }
    }

    /// What each member says of blob `hash`: its size where it is held complete, or why the
    /// member could not be asked.
    pub async fn status(&self, hash: BlobHash) -> Result<Vec<BlobHolder>, ClientError> {
        match self.call(BlobRequest::Status { hash }).await? {
            BlobResponse::Status { holders } => Ok(holders),
            other => Err(unexpected("blob_status", &other)),
        }
    }

    /// Pins blob `hash` under `name`: kept from garbage collection and kept replicated until
    /// unpinned. Fails when no member holds the blob.
    pub async fn pin(&self, name: &str, hash: BlobHash) -> Result<(), ClientError> {
        match self.call(BlobRequest::Pin { name: name.to_string(), hash }).await? {
            BlobResponse::Done => Ok(()),
            other => Err(unexpected("blob_pin", &other)),
        }
    }

    /// Removes pin `name`; returns whether it existed.
    pub async fn unpin(&self, name: &str) -> Result<bool, ClientError> {
        match self.call(BlobRequest::Unpin { name: name.to_string() }).await? {
            BlobResponse::Unpinned { existed } => Ok(existed),
            other => Err(unexpected("blob_unpin", &other)),
        }
    }

    /// Up to `limit` pins whose names start with `prefix`, in name order after `after`, and
    /// whether more follow.
    pub async fn pins(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<(Vec<PinEntry>, bool), ClientError> {
        let request = BlobRequest::Pins { prefix: prefix.to_string(), after: after.map(str::to_string), limit };
        match self.call(request).await? {
            BlobResponse::Pins { pins, more } => Ok((pins, more)),
            other => Err(unexpected("blob_pins", &other)),
        }
    }
}

/// Why writing an upload's body stopped.
enum UploadError {
    /// The stream broke (or the node stopped reading).
    Send(String),
    /// Reading the local data failed.
    Local(ClientError),
}

/// A byte range of a blob, streaming from the node. Ends with an error if the node sends
/// fewer or more bytes than it announced.
#[derive(Debug)]
pub struct BlobReader {
    stream: AppStream,
    size: u64,
    remaining: u64,
}

impl BlobReader {
    /// The whole blob's size.
    pub fn blob_size(&self) -> u64 {
        self.size
    }
}

impl AsyncRead for BlobReader {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        match Pin::new(&mut this.stream.recv).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let got = (buf.filled().len() - before) as u64;
                if got == 0 && this.remaining > 0 {
                    return Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        format!("the blob range ended {} bytes early", this.remaining),
                    )));
                }
                if got > this.remaining {
                    return Poll::Ready(Err(std::io::Error::other("the node sent more bytes than it announced")));
                }
                this.remaining -= got;
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(std::io::Error::other(e))),
            Poll::Pending => Poll::Pending,
        }
    }
}
