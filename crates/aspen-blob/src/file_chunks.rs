//! A byte range of a file as a stream of large chunks, read on the blocking pool one chunk
//! ahead of the consumer: the one copy is the kernel's into a buffer that is then handed on
//! whole (no intermediate buffer, no re-chunking), and the next read runs while the
//! previous chunk is being sent.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use futures::{FutureExt, Stream};
use tokio::task::JoinHandle;

/// One read on the blocking pool: the file back, with what was read.
type PendingRead = JoinHandle<(File, std::io::Result<Vec<u8>>)>;

/// `len` bytes of a file from `offset`, as chunks of at most `chunk` bytes. Ends early (with
/// no error) if the file is shorter; the caller counts.
pub struct FileChunks {
    /// The read in flight, if any; `None` once the range is read or a read failed.
    reading: Option<PendingRead>,
    /// Bytes of the range not yet asked of a read.
    left: u64,
    chunk: usize,
}

impl FileChunks {
    pub fn new(mut file: File, offset: u64, len: u64, chunk: usize) -> std::io::Result<Self> {
        file.seek(SeekFrom::Start(offset))?;
        let mut chunks = FileChunks { reading: None, left: len, chunk: chunk.max(1) };
        chunks.read_next(file);
        Ok(chunks)
    }

    /// Starts the next read from `file`, unless the range is all asked for.
    fn read_next(&mut self, file: File) {
        if self.left == 0 {
            return;
        }
        let n = self.left.min(self.chunk as u64);
        self.left -= n;
        self.reading = Some(tokio::task::spawn_blocking(move || {
            let mut buf = Vec::with_capacity(n as usize);
            let result = (&file).take(n).read_to_end(&mut buf).map(|_| buf);
            (file, result)
        }));
    }
}

impl Stream for FileChunks {
    type Item = std::io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let Some(reading) = self.reading.as_mut() else { return Poll::Ready(None) };
        let joined = ready!(reading.poll_unpin(cx));
        self.reading = None;
        let (file, result) = match joined {
            Ok(done) => done,
            Err(e) => return Poll::Ready(Some(Err(std::io::Error::other(format!("the read task failed: {e}"))))),
        };
        Poll::Ready(match result {
            Ok(buf) if buf.is_empty() => None,
            Ok(buf) => {
                self.read_next(file);
                Some(Ok(Bytes::from(buf)))
            }
            Err(e) => Some(Err(e)),
        })
    }
}

#[cfg(test)]
mod tests {
    use futures::TryStreamExt;

    use super::*;

    #[tokio::test]
    async fn a_range_comes_whole_in_order_and_stops_at_the_file_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        for (offset, len, chunk) in [(0u64, 10_000u64, 1024usize), (17, 5_000, 999), (9_990, 100, 4), (0, 0, 8)] {
            let chunks = FileChunks::new(File::open(&path).unwrap(), offset, len, chunk).unwrap();
            let got: Vec<Bytes> = chunks.try_collect().await.unwrap();
            assert!(got.iter().all(|c| c.len() <= chunk && !c.is_empty()));
            let end = (offset + len).min(data.len() as u64) as usize;
            assert_eq!(got.concat(), &data[offset as usize..end], "offset {offset} len {len} chunk {chunk}");
        }
    }
}
