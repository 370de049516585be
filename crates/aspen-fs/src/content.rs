//! An open file's bytes: inline (the whole file in memory, as in its record) or in chunks
//! kept as blobs, fetched by range and uploaded as they fill.
//!
//! A file grows into chunks once it passes the inline limit. Each chunk is one blob of
//! [`CHUNK_BYTES`] (the last may be shorter), pinned under a name made of the mount's pin
//! scope and the chunk's hash, so the same bytes in two files, or a renamed file, need no new
//! pin. A sequential writer holds at most one unfinished chunk: each chunk is uploaded as soon
//! as a write moves past it.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use aspen_kv::BoxFuture;

use crate::record::{FileData, max_inline_bytes};
use crate::store::FsError;

/// Bytes per chunk of a large file.
pub const CHUNK_BYTES: usize = 4 * 1024 * 1024;
/// Chunks a file's record can list: 32 bytes each within one KV value.
pub const MAX_CHUNKS: usize = (aspen_core::limits::MAX_VALUE_BYTES - 64) / 32;
/// Unfinished chunks an open file keeps in memory before it uploads the older ones.
const MAX_PENDING_CHUNKS: usize = 8;
/// Fetched chunks an open file keeps for later reads.
const CACHED_CHUNKS: usize = 4;
/// Chunks fetched ahead of a reader, at once (each on its own stream).
const READ_AHEAD_CHUNKS: usize = 3;

/// A blob hash (BLAKE3).
pub type ChunkHash = [u8; 32];

/// Where chunks live: the cluster's blob store, through the blob app.
pub trait ChunkStore: Send + Sync + 'static {
    /// Stores `bytes` and keeps them (pinned); returns their hash.
    fn put<'a>(&'a self, bytes: &'a [u8]) -> BoxFuture<'a, Result<ChunkHash, FsError>>;
    /// The bytes of chunk `hash`, verified.
    fn get(&self, hash: ChunkHash) -> BoxFuture<'_, Result<Vec<u8>, FsError>>;
}

/// The largest file a mount can hold: inline without a chunk store, else chunked.
pub fn max_file_bytes(chunks: bool) -> u64 {
    if chunks { (MAX_CHUNKS * CHUNK_BYTES) as u64 } else { max_inline_bytes() as u64 }
}

/// A chunked file's state while open.
struct Chunked {
    size: u64,
    /// Stored chunks by index (`None`: not stored yet, or a hole of zeros).
    stored: Vec<Option<ChunkHash>>,
    /// Chunks changed since they were stored, by index.
    pending: BTreeMap<usize, Vec<u8>>,
    cache: VecDeque<(usize, Arc<Vec<u8>>)>,
    /// Chunks being fetched ahead of a sequential reader, by hash.
    ahead: HashMap<ChunkHash, tokio::task::JoinHandle<Result<Vec<u8>, FsError>>>,
}

impl Drop for Chunked {
    fn drop(&mut self) {
        self.ahead.values().for_each(|task| task.abort());
    }
}

/// An open file's bytes.
pub struct Content {
    inline: Vec<u8>,
    chunked: Option<Chunked>,
}

impl Content {
    pub fn empty() -> Content {
        Content { inline: Vec::new(), chunked: None }
    }

    pub fn from_data(data: FileData) -> Content {
        match data {
            FileData::Inline(bytes) => Content { inline: bytes, chunked: None },
            FileData::Chunks { size, chunk_bytes: _, chunks } => Content {
                inline: Vec::new(),
                chunked: Some(Chunked {
                    size,
                    stored: chunks.into_iter().map(Some).collect(),
                    pending: BTreeMap::new(),
                    cache: VecDeque::new(),
                    ahead: HashMap::new(),
                }),
            },
        }
    }

    pub fn size(&self) -> u64 {
        match &self.chunked {
            Some(c) => c.size,
            None => self.inline.len() as u64,
        }
    }

    /// Up to `len` bytes from `offset`.
    pub async fn read(
        &mut self,
        store: Option<&Arc<dyn ChunkStore>>,
        offset: u64,
        len: usize,
    ) -> Result<Vec<u8>, FsError> {
        let Some(c) = &mut self.chunked else {
            let start = (offset as usize).min(self.inline.len());
            let end = start.saturating_add(len).min(self.inline.len());
            return Ok(self.inline[start..end].to_vec());
        };
        let end = offset.saturating_add(len as u64).min(c.size);
        let mut out = Vec::with_capacity(end.saturating_sub(offset) as usize);
        let mut at = offset;
        while at < end {
            let index = (at / CHUNK_BYTES as u64) as usize;
            let within = (at % CHUNK_BYTES as u64) as usize;
            let take = ((end - at) as usize).min(CHUNK_BYTES - within);
            c.read_ahead(store, index);
            let chunk = c.chunk(store, index).await?;
            let stored = chunk.get(within..).unwrap_or_default();
            let avail = stored.len().min(take);
            out.extend_from_slice(&stored[..avail]);
            // Past the stored bytes of a chunk (a hole, or a chunk written shorter) reads zeros.
            out.resize(out.len() + (take - avail), 0);
            at += take as u64;
        }
        Ok(out)
    }

    /// Writes `data` at `offset`, growing the file; a file passing the inline limit moves into
    /// chunks (only with a chunk store; without one it is `EFBIG`).
    pub async fn write(
        &mut self,
        store: Option<&Arc<dyn ChunkStore>>,
        offset: u64,
        data: &[u8],
    ) -> Result<(), FsError> {
        let end = offset.checked_add(data.len() as u64).ok_or(FsError::FileTooBig(max_file_bytes(store.is_some())))?;
        if end > max_file_bytes(store.is_some()) {
            return Err(FsError::FileTooBig(max_file_bytes(store.is_some())));
        }
        if self.chunked.is_none() {
            if end as usize <= max_inline_bytes() {
                let (offset, end) = (offset as usize, end as usize);
                if self.inline.len() < end {
                    self.inline.resize(end, 0);
                }
                self.inline[offset..end].copy_from_slice(data);
                return Ok(());
            }
            self.move_into_chunks();
        }
        let c = self.chunked.as_mut().expect("chunked");
        let mut at = offset;
        let mut data = data;
        while !data.is_empty() {
            let index = (at / CHUNK_BYTES as u64) as usize;
            let within = (at % CHUNK_BYTES as u64) as usize;
            let take = data.len().min(CHUNK_BYTES - within);
            let chunk = c.pending_chunk(store, index).await?;
            if chunk.len() < within + take {
                chunk.resize(within + take, 0);
            }
            chunk[within..within + take].copy_from_slice(&data[..take]);
            data = &data[take..];
            at += take as u64;
        }
        c.size = c.size.max(end);
        // Upload the chunks a sequential writer has left behind, and the oldest when many wait.
        let behind = (end / CHUNK_BYTES as u64) as usize;
        let done: Vec<usize> =
            c.pending.iter().filter(|(i, bytes)| **i < behind && bytes.len() == CHUNK_BYTES).map(|(i, _)| *i).collect();
        for index in done {
            c.upload(store, index).await?;
        }
        while c.pending.len() > MAX_PENDING_CHUNKS {
            let oldest = *c.pending.keys().next().expect("pending");
            c.upload(store, oldest).await?;
        }
        Ok(())
    }

    /// Cuts or extends (with zeros) the file to `size`.
    pub async fn truncate(&mut self, store: Option<&Arc<dyn ChunkStore>>, size: u64) -> Result<(), FsError> {
        if size > max_file_bytes(store.is_some()) {
            return Err(FsError::FileTooBig(max_file_bytes(store.is_some())));
        }
        if size == 0 {
            *self = Content::empty();
            return Ok(());
        }
        match &mut self.chunked {
            None if size as usize <= max_inline_bytes() => {
                self.inline.resize(size as usize, 0);
                Ok(())
            }
            None => {
                self.move_into_chunks();
                self.chunked.as_mut().expect("chunked").size = size;
                Ok(())
            }
            Some(c) => {
                let chunks = (size as usize).div_ceil(CHUNK_BYTES);
                c.stored.truncate(chunks);
                c.pending.retain(|i, _| *i < chunks);
                c.cache.retain(|(i, _)| *i < chunks);
                let last = chunks - 1;
                let last_len = size as usize - last * CHUNK_BYTES;
                if size < c.size {
                    let chunk = c.pending_chunk(store, last).await?;
                    chunk.truncate(last_len);
                }
                c.size = size;
                Ok(())
            }
        }
    }

    /// Stores every changed chunk and returns what the file's record holds.
    pub async fn seal(&mut self, store: Option<&Arc<dyn ChunkStore>>) -> Result<FileData, FsError> {
        let Some(c) = &mut self.chunked else { return Ok(FileData::Inline(self.inline.clone())) };
        let indexes: Vec<usize> = c.pending.keys().copied().collect();
        for index in indexes {
            c.upload(store, index).await?;
        }
        let chunks = (c.size as usize).div_ceil(CHUNK_BYTES);
        c.stored.resize(chunks, None);
        for index in 0..chunks {
            if c.stored[index].is_none() {
                // A hole: zeros, stored once for every file that has one.
                c.pending.insert(index, Vec::new());
                c.upload(store, index).await?;
            }
        }
        let hashes = c.stored.iter().map(|h| h.expect("every chunk stored")).collect();
        Ok(FileData::Chunks { size: c.size, chunk_bytes: CHUNK_BYTES as u32, chunks: hashes })
    }

    fn move_into_chunks(&mut self) {
        let bytes = std::mem::take(&mut self.inline);
        let size = bytes.len() as u64;
        let pending: BTreeMap<usize, Vec<u8>> =
            bytes.chunks(CHUNK_BYTES).enumerate().map(|(i, chunk)| (i, chunk.to_vec())).collect();
        self.chunked =
            Some(Chunked { size, stored: Vec::new(), pending, cache: VecDeque::new(), ahead: HashMap::new() });
    }
}

impl Chunked {
    fn store<'a>(&self, store: Option<&'a Arc<dyn ChunkStore>>) -> Result<&'a Arc<dyn ChunkStore>, FsError> {
        store.ok_or_else(|| FsError::Invalid("a chunked file, and this mount has no blob store".into()))
    }

    /// Chunk `index`'s current bytes (possibly shorter than a full chunk).
    async fn chunk(&mut self, store: Option<&Arc<dyn ChunkStore>>, index: usize) -> Result<Arc<Vec<u8>>, FsError> {
        if let Some(bytes) = self.pending.get(&index) {
            return Ok(Arc::new(bytes.clone()));
        }
        if let Some((_, bytes)) = self.cache.iter().find(|(i, _)| *i == index) {
            return Ok(bytes.clone());
        }
        let Some(Some(hash)) = self.stored.get(index).copied() else { return Ok(Arc::new(Vec::new())) };
        let bytes = match self.ahead.remove(&hash) {
            Some(task) => task.await.map_err(|e| FsError::Blob(format!("a read-ahead task: {e}")))??,
            None => self.store(store)?.get(hash).await?,
        };
        let bytes = Arc::new(bytes);
        if self.cache.len() == CACHED_CHUNKS {
            self.cache.pop_front();
        }
        self.cache.push_back((index, bytes.clone()));
        Ok(bytes)
    }

    /// Starts fetching the [`READ_AHEAD_CHUNKS`] stored chunks after `index` that are not in
    /// memory or on their way, so that a sequential reader finds them fetched.
    fn read_ahead(&mut self, store: Option<&Arc<dyn ChunkStore>>, index: usize) {
        let Some(store) = store else { return };
        for next in index + 1..=index + READ_AHEAD_CHUNKS {
            let Some(Some(hash)) = self.stored.get(next).copied() else { break };
            if self.pending.contains_key(&next)
                || self.cache.iter().any(|(i, _)| *i == next)
                || self.ahead.contains_key(&hash)
                || self.ahead.len() >= READ_AHEAD_CHUNKS
            {
                continue;
            }
            let store = store.clone();
            self.ahead.insert(hash, tokio::spawn(async move { store.get(hash).await }));
        }
    }

    /// Chunk `index` as a buffer to change, loaded from the store when it was stored.
    async fn pending_chunk(
        &mut self,
        store: Option<&Arc<dyn ChunkStore>>,
        index: usize,
    ) -> Result<&mut Vec<u8>, FsError> {
        if !self.pending.contains_key(&index) {
            let bytes = self.chunk(store, index).await?;
            self.cache.retain(|(i, _)| *i != index);
            self.pending.insert(index, Arc::try_unwrap(bytes).unwrap_or_else(|shared| (*shared).clone()));
        }
        Ok(self.pending.get_mut(&index).expect("just inserted"))
    }

    /// Stores pending chunk `index`, padded with zeros to its length in the file.
    async fn upload(&mut self, store: Option<&Arc<dyn ChunkStore>>, index: usize) -> Result<(), FsError> {
        let Some(mut bytes) = self.pending.remove(&index) else { return Ok(()) };
        let len = (self.size.saturating_sub((index * CHUNK_BYTES) as u64) as usize).min(CHUNK_BYTES);
        bytes.resize(len, 0);
        let hash = self.store(store)?.put(&bytes).await?;
        if self.stored.len() <= index {
            self.stored.resize(index + 1, None);
        }
        self.stored[index] = Some(hash);
        Ok(())
    }
}

/// Chunks in the cluster's blob store, each pinned under `scope` followed by its hex hash.
pub struct BlobChunks {
    blobs: aspen_blob::BlobClient,
    scope: String,
}

impl BlobChunks {
    /// `scope` is the pin-name prefix; the token needs the blob app's `write` right over it.
    pub fn new(blobs: aspen_blob::BlobClient, scope: impl Into<String>) -> BlobChunks {
        BlobChunks { blobs, scope: scope.into() }
    }

    /// The pin scope a mount of `prefix` uses: `aspenfs/` then the prefix.
    pub fn scope_for(prefix: &str) -> String {
        format!("aspenfs/{prefix}")
    }
}

impl ChunkStore for BlobChunks {
    fn put<'a>(&'a self, bytes: &'a [u8]) -> BoxFuture<'a, Result<ChunkHash, FsError>> {
        Box::pin(async move {
            let added = self.blobs.add_bytes(bytes).await.map_err(|e| FsError::Blob(e.to_string()))?;
            let name = format!("{}{}", self.scope, aspen_blob::blob_hash_hex(&added.hash));
            self.blobs.pin(&name, added.hash).await.map_err(|e| FsError::Blob(e.to_string()))?;
            Ok(added.hash)
        })
    }

    fn get(&self, hash: ChunkHash) -> BoxFuture<'_, Result<Vec<u8>, FsError>> {
        Box::pin(async move { self.blobs.get(hash).await.map_err(|e| FsError::Blob(e.to_string())) })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Mutex;

    use super::*;

    /// An in-memory stand-in for the blob store, for checking the chunk arithmetic alone
    /// (the mount tests use the real blob app).
    #[derive(Default)]
    struct MemChunks(Mutex<HashMap<ChunkHash, Vec<u8>>>);

    impl ChunkStore for MemChunks {
        fn put<'a>(&'a self, bytes: &'a [u8]) -> BoxFuture<'a, Result<ChunkHash, FsError>> {
            let hash = *blake3::hash(bytes).as_bytes();
            self.0.lock().unwrap().insert(hash, bytes.to_vec());
            Box::pin(async move { Ok(hash) })
        }

        fn get(&self, hash: ChunkHash) -> BoxFuture<'_, Result<Vec<u8>, FsError>> {
            let bytes = self.0.lock().unwrap().get(&hash).cloned().ok_or(FsError::Blob("missing".into()));
            Box::pin(async move { bytes })
        }
    }

    /// Random writes, truncates, reads and reopenings agree with a plain byte vector.
    #[tokio::test]
    async fn chunked_content_agrees_with_a_byte_vector() {
        let store: Arc<dyn ChunkStore> = Arc::new(MemChunks::default());
        let store = Some(&store);
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move |bound: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % bound
        };
        let mut model: Vec<u8> = Vec::new();
        let mut content = Content::empty();
        let limit = 3 * CHUNK_BYTES as u64 + 12_345;
        for step in 0..300 {
            match next(10) {
                0..=5 => {
                    let offset = next(limit);
                    let bound = if next(4) == 0 { 2 * CHUNK_BYTES as u64 } else { 70_000 };
                    let len = next(bound) as usize;
                    let data: Vec<u8> = (0..len).map(|i| (i as u64 + offset + step) as u8).collect();
                    content.write(store, offset, &data).await.unwrap();
                    let end = offset as usize + len;
                    if model.len() < end {
                        model.resize(end, 0);
                    }
                    model[offset as usize..end].copy_from_slice(&data);
                }
                6 => {
                    let size = next(limit);
                    content.truncate(store, size).await.unwrap();
                    model.resize(size as usize, 0);
                }
                7 => {
                    // Close and reopen: everything goes through the record.
                    let data = content.seal(store).await.unwrap();
                    assert_eq!(data.size(), model.len() as u64);
                    content = Content::from_data(data);
                }
                _ => {}
            }
            assert_eq!(content.size(), model.len() as u64, "step {step}");
            let offset = next(model.len() as u64 + 10);
            let len = next(CHUNK_BYTES as u64 + 100) as usize;
            let got = content.read(store, offset, len).await.unwrap();
            let start = (offset as usize).min(model.len());
            let end = (start + len).min(model.len());
            assert_eq!(got, model[start..end], "step {step}: read {len} at {offset}");
        }
        assert_eq!(content.read(store, 0, model.len()).await.unwrap(), model);
    }
}
