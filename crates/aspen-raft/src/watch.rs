//! The watch hub: a bounded history of applied events plus a live broadcast.
//!
//! Events are published after the apply transaction commits, under the same lock a
//! new watcher takes to read the backlog and subscribe, so a watcher sees every event
//! from its start revision exactly once, in order.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use aspen_core::error::AspenError;
use aspen_core::limits::{WATCH_CHANNEL_EVENTS, WATCH_HISTORY_EVENTS};
use aspen_core::types::Event;
use tokio::sync::broadcast;

pub type EventBatch = Arc<Vec<Event>>;

pub struct WatchHub {
    inner: Mutex<HubInner>,
    tx: broadcast::Sender<EventBatch>,
}

struct HubInner {
    history: VecDeque<Event>,
    /// Events at or below this revision are no longer retained.
    compacted: u64,
    /// Most events kept in `history`.
    limit: usize,
}

impl WatchHub {
    pub fn new(current_revision: u64) -> Self {
        let (tx, _) = broadcast::channel(WATCH_CHANNEL_EVENTS);
        WatchHub {
            inner: Mutex::new(HubInner {
                history: VecDeque::new(),
                compacted: current_revision,
                limit: WATCH_HISTORY_EVENTS,
            }),
            tx,
        }
    }

    pub fn publish(&self, events: Vec<Event>) {
        if events.is_empty() {
            return;
        }
        let Ok(mut inner) = self.inner.lock() else { return };
        inner.history.extend(events.iter().cloned());
        while inner.history.len() > inner.limit {
            let Some(front) = inner.history.pop_front() else { break };
            let rev = front.revision();
            // Drop whole revisions, never half of one.
            while inner.history.front().is_some_and(|e| e.revision() == rev) {
                inner.history.pop_front();
            }
            inner.compacted = rev;
        }
        // No receivers is fine: nobody watches.
        let _ = self.tx.send(Arc::new(events));
    }

    /// Keeps at most `events` events of history (at least one).
    pub fn set_history_limit(&self, events: usize) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.limit = events.max(1);
        }
    }

    /// Forgets history (after a snapshot replaced the state).
    pub fn reset(&self, revision: u64) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.history.clear();
            inner.compacted = revision;
        }
    }

    /// The backlog of events with revision >= `start_revision` under `prefix`, and a
    /// receiver for everything published after it. `start_revision == 0` means "from now".
    pub fn subscribe(
        &self,
        prefix: &[u8],
        start_revision: u64,
    ) -> Result<(Vec<Event>, broadcast::Receiver<EventBatch>), AspenError> {
        let inner = self.inner.lock().map_err(|_| AspenError::internal("watch hub lock poisoned"))?;
        if start_revision != 0 && start_revision <= inner.compacted {
            return Err(AspenError::Compacted { requested: start_revision, compacted: inner.compacted });
        }
        let backlog = if start_revision == 0 {
            Vec::new()
        } else {
            inner
                .history
                .iter()
                .filter(|e| e.revision() >= start_revision && e.kv.key.starts_with(prefix))
                .cloned()
                .collect()
        };
        Ok((backlog, self.tx.subscribe()))
    }

    pub fn compacted_revision(&self) -> u64 {
        self.inner.lock().map(|i| i.compacted).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aspen_core::types::{EventKind, KeyValue};

    fn ev(key: &str, rev: u64) -> Event {
        Event {
            kind: EventKind::Put,
            kv: KeyValue {
                key: key.into(),
                value: vec![],
                create_revision: rev,
                mod_revision: rev,
                version: 1,
                lease: None,
            },
        }
    }

    #[test]
    fn watch_from_a_retained_revision_replays_then_follows() {
        let hub = WatchHub::new(0);
        hub.publish(vec![ev("a/1", 1), ev("b/1", 2)]);
        hub.publish(vec![ev("a/2", 3)]);
        let (backlog, mut rx) = hub.subscribe(b"a/", 2).unwrap();
        assert_eq!(backlog, vec![ev("a/2", 3)]);
        hub.publish(vec![ev("a/3", 4)]);
        assert_eq!(rx.try_recv().unwrap().as_slice(), &[ev("a/3", 4)]);
    }

    #[test]
    fn watch_from_before_the_history_is_compacted() {
        let hub = WatchHub::new(10);
        assert_eq!(hub.subscribe(b"", 10).unwrap_err(), AspenError::Compacted { requested: 10, compacted: 10 });
        assert!(hub.subscribe(b"", 11).is_ok());
        assert!(hub.subscribe(b"", 0).is_ok());
    }
}
