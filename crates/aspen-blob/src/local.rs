//! [`LocalBlobs`]: the blob store of this node, for the other apps running on it.
//!
//! The blob app publishes it in the node's services under [`LocalBlobs::SERVICE`] when it
//! starts. It does what `BlobClient` does over the network, in-process: add from any async
//! reader in constant memory (durable, fresh, replicated before it returns), read a byte range
//! as a stream, ask whether the cluster holds a blob. An app keeps what it adds by pinning it
//! in its own KV transactions ([`crate::records::pin_ops`], with the rights of
//! [`crate::records::pin_rights`] declared in its `App::kv_rights`), so the pin moves together
//! with whatever the app records (the forge: a ref and the pack it reaches).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use aspen_core::AspenError;
use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};
use iroh_blobs::Hash;
use iroh_blobs::api::TempTag;
use iroh_blobs::api::proto::ExportRangesItem;
use iroh_blobs::store::fs::options::PathOptions;
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::file_chunks::FileChunks;
use crate::protocol::Added;
use crate::records::BlobHash;
use crate::store::BlobNode;

/// Bytes read from a reader at once.
const CHUNK_BYTES: usize = 256 * 1024;
/// Bytes read from a blob's data file at once.
const FILE_READ_BYTES: usize = 1024 * 1024;

/// This node's blob store, in-process (see the module docs). Cheap to clone.
#[derive(Clone)]
pub struct LocalBlobs {
    node: Arc<BlobNode>,
}

impl std::fmt::Debug for LocalBlobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalBlobs").finish_non_exhaustive()
    }
}

impl LocalBlobs {
    /// The name it is published under in the node's services.
    pub const SERVICE: &'static str = "blob";

    pub(crate) fn new(node: Arc<BlobNode>) -> Self {
        LocalBlobs { node }
    }

    /// Adds everything `data` yields as one blob (refused unless it hashes to `expected`,
    /// when given); returns once the replica target holds it.
    pub async fn add(
        &self,
        data: impl AsyncRead + Unpin + Send + Sync + 'static,
        expected: Option<BlobHash>,
    ) -> Result<Added, AspenError> {
        let chunks = futures::stream::unfold(Some(data), |state| async move {
            let mut data = state?;
            let mut buf = BytesMut::zeroed(CHUNK_BYTES);
            match data.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    Some((Ok(buf.freeze()), Some(data)))
                }
                Err(e) => Some((Err(e), None)),
            }
        });
        self.node.add_stream(chunks, expected).await
    }

    /// Adds `bytes` as one blob.
    pub async fn add_bytes(&self, bytes: impl Into<Bytes>) -> Result<Added, AspenError> {
        let bytes: Bytes = bytes.into();
        self.node.add_stream(futures::stream::iter([Ok(bytes)]), None).await
    }

    /// Adds what `chunks` yields as one blob (refused unless it hashes to `expected`, when
    /// given); returns once the replica target holds it. An error item aborts the add and
    /// keeps nothing.
    pub async fn add_stream(
        &self,
        chunks: impl Stream<Item = std::io::Result<Bytes>> + Send + Sync + 'static,
        expected: Option<BlobHash>,
    ) -> Result<Added, AspenError> {
        self.node.add_stream(chunks, expected).await
    }

    /// `len` bytes of blob `hash` from `offset` (fewer at its end), fetched to this node
    /// first if it lacks the blob. The stream keeps the blob from garbage collection while it
    /// lives.
    ///
    /// A complete blob's bytes are read straight from its data file in large reads, the
    /// store having verified them when they arrived; a small blob, which the store keeps in
    /// its database, goes through the store's own export.
    pub async fn read_range(&self, hash: BlobHash, offset: u64, len: u64) -> Result<RangeStream, AspenError> {
        read_range(&self.node, hash, offset, len).await
    }

    /// The blob's size if some member of the cluster holds it complete.
    pub async fn has(&self, hash: BlobHash) -> Result<Option<u64>, AspenError> {
        self.node.cluster_has(&hash).await
    }
}

/// [`LocalBlobs::read_range`] on `node`: what the blob app's own `Get` serves too.
pub(crate) async fn read_range(
    node: &BlobNode,
    hash: BlobHash,
    offset: u64,
    len: u64,
) -> Result<RangeStream, AspenError> {
    let hash = Hash::from_bytes(hash);
    let (size, tag) = node.ensure_local(hash, None).await?;
    if offset > size {
        return Err(AspenError::invalid(format!("offset {offset} is past the end of the {size}-byte blob")));
    }
    let len = len.min(size - offset);
    let source = match open_data_file(node, &hash, size, offset, len).await? {
        Some(file) => Source::File(file),
        None => Source::Store(Box::pin(node.store.export_ranges(hash, offset..offset + len).stream())),
    };
    Ok(RangeStream { size, remaining: len, source, _tag: tag })
}

/// The data file of complete blob `hash`, positioned at `offset` and limited to `len`
/// bytes, if the store keeps the blob in a file of its full size.
async fn open_data_file(
    node: &BlobNode,
    hash: &Hash,
    size: u64,
    offset: u64,
    len: u64,
) -> Result<Option<FileChunks>, AspenError> {
    let path = PathOptions::new(&node.ctx.data_dir.join("blobs")).data_path(hash);
    let file = match tokio::fs::File::open(&path).await {
        Ok(file) => file.into_std().await,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(AspenError::storage(format!("cannot open {}: {e}", path.display()))),
    };
    let on_disk = file.metadata().map_err(AspenError::storage)?.len();
    if on_disk != size {
        return Ok(None);
    }
    FileChunks::new(file, offset, len, FILE_READ_BYTES).map(Some).map_err(AspenError::storage)
}

/// A byte range of a blob, as chunks; ends with an error if the store returns fewer bytes
/// than the range holds.
pub struct RangeStream {
    size: u64,
    remaining: u64,
    source: Source,
    _tag: TempTag,
}

/// Where a range's bytes come from.
enum Source {
    /// The blob's data file.
    File(FileChunks),
    /// The store's export, leaf by leaf.
    Store(Pin<Box<dyn Stream<Item = ExportRangesItem> + Send>>),
}

impl RangeStream {
    /// The whole blob's size.
    pub fn blob_size(&self) -> u64 {
        self.size
    }

    /// Bytes of the range not yet yielded.
    pub fn remaining(&self) -> u64 {
        self.remaining
    }
}

impl RangeStream {
    /// Counts `data` against the range: an error if the source gave more than it holds.
    fn account(&mut self, data: Bytes) -> Result<Bytes, AspenError> {
        let n = data.len() as u64;
        if n > self.remaining {
            self.remaining = 0;
            return Err(AspenError::internal("the store returned more than the range"));
        }
        self.remaining -= n;
        Ok(data)
    }

    /// The end of the source: an error if it ended before the range did.
    fn end(&mut self) -> Option<Result<Bytes, AspenError>> {
        if self.remaining == 0 {
            return None;
        }
        let missing = std::mem::take(&mut self.remaining);
        Some(Err(AspenError::storage(format!("the blob range ended {missing} bytes early"))))
    }
}

impl Stream for RangeStream {
    type Item = Result<Bytes, AspenError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            let item = match &mut self.source {
                Source::File(file) => match file.poll_next_unpin(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Some(Ok(data))) => Ok(data),
                    Poll::Ready(Some(Err(e))) => Err(format!("reading the blob's file failed: {e}")),
                    Poll::Ready(None) => return Poll::Ready(self.end()),
                },
                Source::Store(items) => match items.poll_next_unpin(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Some(ExportRangesItem::Size(_))) => continue,
                    Poll::Ready(Some(ExportRangesItem::Data(leaf))) => Ok(leaf.data),
                    Poll::Ready(Some(ExportRangesItem::Error(e))) => Err(format!("reading the blob failed: {e}")),
                    Poll::Ready(None) => return Poll::Ready(self.end()),
                },
            };
            return Poll::Ready(Some(match item {
                Ok(data) => self.account(data),
                Err(e) => {
                    self.remaining = 0;
                    Err(AspenError::storage(e))
                }
            }));
        }
    }
}
