//! Taking a NAR in: checked against Nix's grammar, hashed and stored as a blob in one pass,
//! in constant memory.
//!
//! The bytes go to two places at once: a checker on a blocking thread
//! ([`crate::nar::check_nar`]), and the blob store. The blob's last chunk is held back until
//! the checker has seen the whole NAR and its hash is the one declared: a malformed or
//! mismatched NAR aborts the blob's add, so nothing of it is kept.

use std::io::Read;

use aspen_blob::LocalBlobs;
use aspen_blob::protocol::Added;
use aspen_core::AspenError;
use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;

use crate::nar::{NarSummary, check_nar};

/// Bytes read at once.
const CHUNK: usize = 256 * 1024;
/// Chunks in flight to each consumer.
const DEPTH: usize = 8;

/// A blocking reader over chunks sent on a channel.
struct ChannelReader {
    rx: mpsc::Receiver<Bytes>,
    current: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(next) => self.current = next,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

/// Reads a NAR from `input`, checks it and stores it as a blob. With `expected`, the NAR
/// must hash to it and have its size. Returns the blob and what the NAR hashes to.
pub async fn ingest(
    blobs: &LocalBlobs,
    mut input: impl AsyncRead + Unpin + Send,
    expected: Option<NarSummary>,
) -> Result<(Added, NarSummary), AspenError> {
    let (check_tx, check_rx) = mpsc::channel::<Bytes>(DEPTH);
    let checker = tokio::task::spawn_blocking(move || check_nar(ChannelReader { rx: check_rx, current: Bytes::new() }));
    let (blob_tx, blob_rx) = mpsc::channel::<std::io::Result<Bytes>>(DEPTH);
    let adding = {
        let blobs = blobs.clone();
        tokio::spawn(async move { blobs.add_stream(tokio_stream_of(blob_rx), None).await })
    };
    let mut held: Option<Bytes> = None;
    let mut read_error = None;
    loop {
        let mut buf = BytesMut::with_capacity(CHUNK);
        match input.read_buf(&mut buf).await {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => {
                read_error = Some(AspenError::invalid(format!("the NAR upload broke off: {e}")));
                break;
            }
        }
        let chunk = buf.freeze();
        // A checker that stopped has found the NAR malformed: its verdict says why.
        if check_tx.send(chunk.clone()).await.is_err() {
            break;
        }
        if let Some(previous) = held.replace(chunk)
            && blob_tx.send(Ok(previous)).await.is_err()
        {
            break;
        }
    }
    drop(check_tx);
    let verdict = match checker.await {
        Ok(v) => v,
        Err(e) => Err(AspenError::internal(format!("the NAR checker failed: {e}"))),
    };
    let verdict = match (read_error, verdict, expected) {
        (Some(e), _, _) => Err(e),
        (None, Err(e), _) => Err(e),
        (None, Ok(found), Some(want)) if found != want => Err(AspenError::invalid(format!(
            "the NAR hashes to {} ({} bytes), not to the declared {} ({} bytes); nothing was stored",
            found.nar_hash, found.nar_size, want.nar_hash, want.nar_size
        ))),
        (None, Ok(found), _) => Ok(found),
    };
    match verdict {
        Ok(summary) => {
            if let Some(last) = held {
                let _ = blob_tx.send(Ok(last)).await;
            }
            drop(blob_tx);
            let added = adding.await.map_err(|e| AspenError::internal(format!("the blob add failed: {e}")))??;
            Ok((added, summary))
        }
        Err(e) => {
            let _ = blob_tx.send(Err(std::io::Error::other("the NAR was refused"))).await;
            drop(blob_tx);
            let _ = adding.await;
            Err(e)
        }
    }
}

/// A stream of what `rx` receives.
fn tokio_stream_of<T: Send + 'static>(rx: mpsc::Receiver<T>) -> impl futures::Stream<Item = T> + Send + Sync {
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) })
}
