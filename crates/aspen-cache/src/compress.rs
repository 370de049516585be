//! NAR compression on the way in and out. A cache stores each NAR once, uncompressed;
//! uploads are decompressed as they stream in, and a cache that serves `xz` or `zstd`
//! compresses on the fly as the NAR streams out. Nix 2.8 reads both.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use async_compression::tokio::bufread::{XzDecoder, XzEncoder, ZstdDecoder, ZstdEncoder};
use bytes::Bytes;
use futures::Stream;
use sha2::Digest;
use tokio::io::{AsyncRead, BufReader, ReadBuf};

use crate::records::Compression;

/// An upload's bytes as they stream in, whatever its compression.
pub type BoxRead = Pin<Box<dyn AsyncRead + Send>>;

/// What a [`HashingReader`] has hashed, readable once it is done.
#[derive(Clone, Default)]
pub struct FileHash(Arc<Mutex<Option<sha2::Sha256>>>);

impl FileHash {
    /// The SHA-256 of everything read so far.
    pub fn get(&self) -> [u8; 32] {
        self.0.lock().ok().and_then(|h| h.clone()).map(|h| h.finalize().into()).unwrap_or_default()
    }
}

/// Hashes what passes through it.
pub struct HashingReader<R> {
    inner: R,
    hash: FileHash,
}

impl<R> HashingReader<R> {
    pub fn new(inner: R) -> (Self, FileHash) {
        let hash = FileHash(Arc::new(Mutex::new(Some(sha2::Sha256::new()))));
        (HashingReader { inner, hash: hash.clone() }, hash)
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for HashingReader<R> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &polled
            && let Ok(mut hash) = self.hash.0.lock()
            && let Some(h) = hash.as_mut()
        {
            h.update(&buf.filled()[before..]);
        }
        polled
    }
}

/// `input` decompressed as `compression` says.
pub fn decoder(compression: Compression, input: impl AsyncRead + Unpin + Send + 'static) -> BoxRead {
    let buffered = BufReader::with_capacity(256 * 1024, input);
    match compression {
        Compression::None => Box::pin(buffered),
        Compression::Xz => Box::pin(XzDecoder::new(buffered)),
        Compression::Zstd => Box::pin(ZstdDecoder::new(buffered)),
    }
}

/// A NAR byte stream, compressed as `compression` says (a fast level: this runs per
/// download).
pub fn encode_stream<S>(compression: Compression, nar: S) -> Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>>
where
    S: Stream<Item = std::io::Result<Bytes>> + Send + 'static,
{
    use async_compression::Level;
    match compression {
        // Chunks pass as they come: no copy, no re-chunking.
        Compression::None => Box::pin(nar),
        Compression::Xz => Box::pin(tokio_util::io::ReaderStream::with_capacity(
            XzEncoder::with_quality(tokio_util::io::StreamReader::new(nar), Level::Precise(1)),
            256 * 1024,
        )),
        Compression::Zstd => Box::pin(tokio_util::io::ReaderStream::with_capacity(
            ZstdEncoder::with_quality(tokio_util::io::StreamReader::new(nar), Level::Precise(3)),
            256 * 1024,
        )),
    }
}

#[cfg(test)]
mod tests {
    use futures::TryStreamExt;
    use tokio::io::AsyncReadExt;

    use super::*;

    #[tokio::test]
    async fn what_is_encoded_decodes_to_itself() {
        let data: Vec<u8> = (0..300_000u32).flat_map(|i| (i % 251).to_le_bytes()).collect();
        for c in [Compression::None, Compression::Xz, Compression::Zstd] {
            let stream = futures::stream::iter([Ok(Bytes::from(data.clone()))]);
            let encoded: Vec<Bytes> = encode_stream(c, stream).try_collect().await.unwrap();
            let encoded: Vec<u8> = encoded.concat();
            if c != Compression::None {
                assert!(encoded.len() < data.len() / 2, "{c:?} compresses");
            }
            let (hashing, hash) = HashingReader::new(std::io::Cursor::new(encoded.clone()));
            let mut decoded = Vec::new();
            decoder(c, hashing).read_to_end(&mut decoded).await.unwrap();
            assert_eq!(decoded, data, "{c:?}");
            assert_eq!(hash.get(), <[u8; 32]>::from(sha2::Sha256::digest(&encoded)));
        }
    }

    #[tokio::test]
    async fn a_corrupt_upload_fails_to_decode() {
        let mut out = Vec::new();
        let err = decoder(Compression::Xz, std::io::Cursor::new(b"not xz at all".to_vec())).read_to_end(&mut out).await;
        assert!(err.is_err());
    }
}
