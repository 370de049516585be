//! Watches: the backlog from the requested revision, then live events, on one stream,
//! until the client closes it or falls too far behind (then it resumes elsewhere).

use aspen_core::api::WatchMessage;
use aspen_core::error::AspenError;
use aspen_core::limits::MAX_WATCH_FRAME_BYTES;
use aspen_core::types::Event;
use iroh::endpoint::{RecvStream, SendStream};
use tokio::sync::broadcast::error::RecvError;

use crate::state::NodeState;

/// Events per frame at most; frames are also cut at [`MAX_WATCH_FRAME_BYTES`] of keys and
/// values, so one frame always fits the frame limit (one event is at most a key and a value).
const EVENTS_PER_FRAME: usize = 256;

async fn send(stream: &mut SendStream, msg: &WatchMessage) -> bool {
    aspen_net::write_frame(stream, msg).await.is_ok()
}

/// `events` cut into frames of at most [`EVENTS_PER_FRAME`] events and, past the first
/// event of each, [`MAX_WATCH_FRAME_BYTES`] bytes of keys and values.
pub fn frames(events: Vec<Event>) -> Vec<Vec<Event>> {
    let mut frames = Vec::new();
    let mut current: Vec<Event> = Vec::new();
    let mut bytes = 0;
    for event in events {
        let size = event.kv.key.len() + event.kv.value.len();
        if !current.is_empty() && (current.len() == EVENTS_PER_FRAME || bytes + size > MAX_WATCH_FRAME_BYTES) {
            frames.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes += size;
        current.push(event);
    }
    if !current.is_empty() {
        frames.push(current);
    }
    frames
}

async fn send_events(stream: &mut SendStream, events: Vec<Event>, last: &mut u64) -> bool {
    let last_event = events.last().map(Event::revision);
    for frame in frames(events) {
        if !send(stream, &WatchMessage::Events { events: frame }).await {
            return false;
        }
    }
    if let Some(revision) = last_event {
        *last = revision;
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

#[cfg(test)]
mod tests {
    use aspen_core::limits::{MAX_FRAME_BYTES, MAX_KEY_BYTES, MAX_VALUE_BYTES};
    use aspen_core::types::{EventKind, KeyValue};

    use super::*;

    fn event(rev: u64, value_bytes: usize) -> Event {
        let kv = KeyValue {
            key: vec![b'k'; MAX_KEY_BYTES],
            value: vec![0; value_bytes],
            create_revision: rev,
            mod_revision: rev,
            version: 1,
            lease: None,
        };
        Event { kind: EventKind::Put, kv }
    }

    #[test]
    fn nine_one_mib_events_are_cut_into_frames_that_fit() {
        let events: Vec<Event> = (1..=9).map(|r| event(r, MAX_VALUE_BYTES)).collect();
        let frames = frames(events);
        assert!(frames.len() >= 5, "{} frames", frames.len());
        assert_eq!(frames.iter().map(Vec::len).sum::<usize>(), 9, "no event lost");
        for frame in frames {
            let encoded = aspen_net::frame::encode_frame(&WatchMessage::Events { events: frame });
            assert!(encoded.is_ok_and(|f| f.len() <= MAX_FRAME_BYTES + 4));
        }
    }

    #[test]
    fn small_events_share_frames_up_to_the_count_bound() {
        let events: Vec<Event> = (1..=600).map(|r| event(r, 10)).collect();
        let sizes: Vec<usize> = frames(events).iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![EVENTS_PER_FRAME, EVENTS_PER_FRAME, 600 - 2 * EVENTS_PER_FRAME]);
    }
}
