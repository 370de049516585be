//! Waiting on a watch for the change that matters to the waiter, and nothing else: the
//! primitives read their state at revision R, watch from R + 1 (so nothing that happens in
//! between is missed), and read again once something relevant happened.

use aspen_kv::{EventKind, KvWatch};

/// Reads `watch` until an event satisfies `wanted`, or the watch ends (an error, which the
/// caller answers by reading again). Events are told apart by kind and key.
pub(crate) async fn wait_for(watch: &mut KvWatch, mut wanted: impl FnMut(EventKind, &[u8]) -> bool) {
    loop {
        match watch.next().await {
            Some(Ok(event)) if wanted(event.kind, &event.kv.key) => return,
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                tracing::debug!("watch ended, reading again: {e}");
                return;
            }
            None => return,
        }
    }
}
