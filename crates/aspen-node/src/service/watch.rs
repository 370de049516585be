//! Watches: the backlog from the requested revision, then live events, on one stream,
//! until the client closes it or falls too far behind (then it resumes elsewhere).

use aspen_core::api::WatchMessage;
use aspen_core::error::AspenError;
use aspen_core::types::Event;
use iroh::endpoint::{RecvStream, SendStream};
use tokio::sync::broadcast::error::RecvError;

use crate::state::NodeState;

/// Events per frame, so one frame stays far below the frame limit.
const EVENTS_PER_FRAME: usize = 256;

async fn send(stream: &mut SendStream, msg: &WatchMessage) -> bool {
    aspen_net::write_frame(stream, msg).await.is_ok()
}

async fn send_events(stream: &mut SendStream, events: Vec<Event>, last: &mut u64) -> bool {
    for chunk in events.chunks(EVENTS_PER_FRAME) {
        if !send(stream, &WatchMessage::Events { events: chunk.to_vec() }).await {
            return false;
        }
    }
    if let Some(e) = events.last() {
        *last = e.revision();
        return send(stream, &WatchMessage::Progress { revision: *last }).await;
    }
    true
}

pub async fn serve(state: &NodeState, mut out: SendStream, recv: RecvStream, prefix: Vec<u8>, start_revision: u64) {
    if !state.is_initialized() {
        let _ = send(&mut out, &WatchMessage::Error { error: AspenError::NotInitialized }).await;
        let _ = out.finish();
        return;
    }
    let (backlog, mut rx) = match state.hub.subscribe(&prefix, start_revision) {
        Ok(s) => s,
        Err(error) => {
            let _ = send(&mut out, &WatchMessage::Error { error }).await;
            let _ = out.finish();
            return;
        }
    };
    let current = state.reader.revision().unwrap_or(0);
    let start = if start_revision == 0 { current + 1 } else { start_revision };
    if !send(&mut out, &WatchMessage::Started { start_revision: start }).await {
        return;
    }
    let mut last = start.saturating_sub(1);
    if !send_events(&mut out, backlog, &mut last).await {
        return;
    }
    drop(recv);
    loop {
        tokio::select! {
            // The client stopping the stream (or its connection dying) ends the watch.
            _ = out.stopped() => return,
            batch = rx.recv() => match batch {
                Ok(batch) => {
                    let events: Vec<Event> = batch
                        .iter()
                        .filter(|e| e.revision() > last && e.kv.key.starts_with(&prefix))
                        .cloned()
                        .collect();
                    if !events.is_empty() && !send_events(&mut out, events, &mut last).await {
                        return;
                    }
                }
                Err(RecvError::Lagged(_)) => {
                    let error = AspenError::Unavailable {
                        reason: format!("watcher fell behind; resume from revision {}", last + 1),
                    };
                    let _ = send(&mut out, &WatchMessage::Error { error }).await;
                    let _ = out.finish();
                    return;
                }
                Err(RecvError::Closed) => return,
            }
        }
    }
}
