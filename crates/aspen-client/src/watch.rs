//! [`WatchStream`]: the events under a prefix, resumed transparently across node failures.
//!
//! A background task holds the watch's QUIC stream. When the stream or its connection
//! breaks, it fails over to the next node and asks again from where it left off (see
//! [`WatchCursor`]), so the caller sees each event once and in order. A `Compacted`
//! answer, or any other error retrying cannot fix, ends the stream with that error.

use std::pin::Pin;
use std::task::{Context, Poll};

use aspen_core::api::{ClientRequest, WatchMessage};
use aspen_core::{AspenError, Event};
use futures::Stream;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio::time::Instant;

use crate::client::Client;
use crate::error::ClientError;
use crate::retry::Backoff;
use crate::watch_cursor::WatchCursor;

/// Events buffered between the watch task and a caller that reads slowly; when full, the
/// task stops reading and the node eventually tells the watch to resume.
pub const WATCH_CLIENT_BUFFER: usize = 1024;

/// A stream of events; ends after yielding an error. Dropping it cancels the watch.
#[derive(Debug)]
pub struct WatchStream {
    events: mpsc::Receiver<Result<Event, ClientError>>,
    task: AbortHandle,
}

impl WatchStream {
    /// The next event, or `None` once the stream has ended.
    pub async fn next(&mut self) -> Option<Result<Event, ClientError>> {
        self.events.recv().await
    }
}

impl Stream for WatchStream {
    type Item = Result<Event, ClientError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.events.poll_recv(cx)
    }
}

impl Drop for WatchStream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Client {
    /// Watches keys starting with `prefix`, from `start_revision` (0: from now on).
    pub fn watch(&self, prefix: impl AsRef<[u8]>, start_revision: u64) -> WatchStream {
        let (tx, rx) = mpsc::channel(WATCH_CLIENT_BUFFER);
        let task = tokio::spawn(run_watch(self.clone(), prefix.as_ref().to_vec(), start_revision, tx));
        WatchStream { events: rx, task: task.abort_handle() }
    }
}

/// How one watch stream ended.
enum Ended {
    /// The caller dropped the stream.
    CallerGone,
    /// An error retrying will not fix.
    Fatal(ClientError),
    /// The stream broke; resume elsewhere. `progressed` says whether it got anywhere.
    Broken { error: ClientError, progressed: bool },
}

async fn run_watch(client: Client, prefix: Vec<u8>, start_revision: u64, tx: mpsc::Sender<Result<Event, ClientError>>) {
    let mut cursor = WatchCursor::new(start_revision);
    let mut backoff = Backoff::default();
    let retry_for = client.config().watch_retry_for;
    let mut give_up_at = Instant::now() + retry_for;
    loop {
        match watch_once(&client, &prefix, &mut cursor, &tx).await {
            Ended::CallerGone => return,
            Ended::Fatal(error) => {
                let _ = tx.send(Err(error)).await;
                return;
            }
            Ended::Broken { error, progressed } => {
                if progressed {
                    backoff.reset();
                    give_up_at = Instant::now() + retry_for;
                }
                let Some(delay) = backoff.next_delay(Instant::now(), give_up_at) else {
                    let _ = tx.send(Err(error)).await;
                    return;
                };
                tracing::debug!(%error, resume_from = cursor.last_revision(), ?delay, "watch broke; resuming");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = tx.closed() => return,
                }
            }
        }
    }
}

/// Runs one Watch request until its stream ends.
async fn watch_once(
    client: &Client,
    prefix: &[u8],
    cursor: &mut WatchCursor,
    tx: &mpsc::Sender<Result<Event, ClientError>>,
) -> Ended {
    let deadline = Instant::now() + client.config().request_timeout;
    let (mut send, mut recv, current) = match client.open_stream(deadline).await {
        Ok(s) => s,
        Err(error) => return Ended::Broken { error, progressed: false },
    };
    let req = ClientRequest::Watch { prefix: prefix.to_vec(), start_revision: cursor.resume_from() };
    let sent = match tokio::time::timeout_at(deadline, aspen_net::write_frame(&mut send, &req)).await {
        Ok(Ok(())) => send.finish().map_err(|e| e.to_string()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timed out sending the watch request".to_string()),
    };
    if let Err(reason) = sent {
        client.mark_failed(&current).await;
        return Ended::Broken { error: ClientError::Connection { node: current.node, reason }, progressed: false };
    }
    let mut progressed = false;
    loop {
        let frame = tokio::select! {
            frame = aspen_net::read_frame::<WatchMessage>(&mut recv) => frame,
            _ = tx.closed() => return Ended::CallerGone,
        };
        let message = match frame {
            Ok(Some(m)) => m,
            Ok(None) => {
                let reason = "the node ended the watch stream".to_string();
                return Ended::Broken { error: ClientError::Connection { node: current.node, reason }, progressed };
            }
            Err(aspen_net::FrameError::Decode(e)) => {
                let reason = format!("undecodable watch message: {e}");
                return Ended::Fatal(ClientError::Protocol { node: current.node, reason });
            }
            Err(e) => {
                client.mark_failed(&current).await;
                let error = ClientError::Connection { node: current.node, reason: e.to_string() };
                return Ended::Broken { error, progressed };
            }
        };
        match message {
            WatchMessage::Started { start_revision } => {
                progressed = true;
                cursor.started(start_revision);
            }
            WatchMessage::Events { events } => {
                for event in events {
                    if cursor.accept(&event) && tx.send(Ok(event)).await.is_err() {
                        return Ended::CallerGone;
                    }
                }
            }
            WatchMessage::Progress { revision } => cursor.progress(revision),
            WatchMessage::Error { error } => {
                if is_final(&error) {
                    return Ended::Fatal(ClientError::Aspen(error));
                }
                if matches!(error, AspenError::Unavailable { .. } | AspenError::NotInitialized) {
                    client.mark_failed(&current).await;
                }
                return Ended::Broken { error: ClientError::Aspen(error), progressed };
            }
        }
    }
}

/// Errors a resumed watch would only hit again.
fn is_final(error: &AspenError) -> bool {
    matches!(
        error,
        AspenError::Compacted { .. }
            | AspenError::InvalidRequest { .. }
            | AspenError::KeyTooLarge { .. }
            | AspenError::EmptyKey
            | AspenError::UnknownRequest { .. }
            | AspenError::FrameTooLarge { .. }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compaction_ends_a_watch_but_unavailability_does_not() {
        assert!(is_final(&AspenError::Compacted { requested: 1, compacted: 5 }));
        assert!(!is_final(&AspenError::Unavailable { reason: "election".into() }));
        assert!(!is_final(&AspenError::NotLeader { leader: None }));
    }
}
