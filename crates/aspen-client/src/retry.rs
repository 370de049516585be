//! When a request may be sent again, and how long to wait before doing so.
//!
//! A request is repeated only when repeating it cannot change the outcome: reads, and
//! writes that certainly never reached a node. A write whose answer was lost is never
//! resent, since applying it twice would break linearizability.

use std::time::Duration;

use aspen_core::api::ClientRequest;
use aspen_core::command::TxnOp;
use aspen_core::queue::QueueCommand;
use tokio::time::Instant;

/// First pause between attempts.
pub const BACKOFF_START: Duration = Duration::from_millis(50);
/// Longest pause between attempts.
pub const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// True when sending `req` twice has the same effect as sending it once.
pub fn is_safe_to_repeat(req: &ClientRequest) -> bool {
    match req {
        ClientRequest::Get { .. }
        | ClientRequest::Scan { .. }
        | ClientRequest::ScanWith(_)
        | ClientRequest::Apps
        | ClientRequest::NodeBuild
        | ClientRequest::LeaseList
        | ClientRequest::Watch { .. }
        | ClientRequest::Status
        | ClientRequest::Ticket
        | ClientRequest::NodeInfo
        // Refreshing a lease twice leaves it exactly as refreshing it once.
        | ClientRequest::LeaseKeepAlive { .. }
        | ClientRequest::Authenticate { .. }
        | ClientRequest::RevokeToken { .. }
        | ClientRequest::SetClusterRoot { .. }
        // Blobs are named by their content: reading is safe, and adding the same bytes
        // twice stores them once.
        | ClientRequest::BlobAdd
        | ClientRequest::BlobGet { .. }
        | ClientRequest::BlobHas { .. }
        | ClientRequest::BlobReplicate { .. }
        | ClientRequest::BlobList { .. }
        | ClientRequest::BlobStatus { .. }
        | ClientRequest::BlobPins { .. }
        // Pinning a name to a hash twice leaves the same pin.
        | ClientRequest::BlobPin { .. } => true,
        // Repeated, an unpin would report that the pin did not exist.
        ClientRequest::BlobUnpin { .. } => false,
        ClientRequest::Txn(txn) => {
            let read_only = |ops: &[TxnOp]| ops.iter().all(|op| matches!(op, TxnOp::Get { .. }));
            read_only(&txn.success) && read_only(&txn.failure)
        }
        ClientRequest::Put { .. }
        | ClientRequest::Delete { .. }
        | ClientRequest::DeleteRange { .. }
        | ClientRequest::LeaseGrant { .. }
        | ClientRequest::LeaseRevoke { .. }
        | ClientRequest::Init { .. }
        | ClientRequest::AddLearner { .. }
        | ClientRequest::Promote { .. }
        | ClientRequest::Remove { .. }
        | ClientRequest::TransferLeader { .. }
        | ClientRequest::TriggerSnapshot => false,
        // Within the dedup window, an enqueue whose every item has a dedup id adds nothing
        // the second time; configuring twice sets the same configuration.
        ClientRequest::Queue(QueueCommand::Enqueue { items, .. }) => items.iter().all(|i| i.dedup_id.is_some()),
        ClientRequest::Queue(QueueCommand::Configure { .. }) => true,
        ClientRequest::Queue(_) | ClientRequest::RateLimit(_) => false,
        ClientRequest::Forwarded(inner) => is_safe_to_repeat(inner),
    }
}

/// Doubling pauses from [`BACKOFF_START`] to [`BACKOFF_MAX`], never past a deadline.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { next: BACKOFF_START }
    }
}

impl Backoff {
    /// The pause before the next attempt, or `None` when it would end at or after `deadline`.
    pub fn next_delay(&mut self, now: Instant, deadline: Instant) -> Option<Duration> {
        let delay = self.next;
        if now + delay >= deadline {
            return None;
        }
        self.next = (self.next * 2).min(BACKOFF_MAX);
        Some(delay)
    }

    /// Starts over from [`BACKOFF_START`], after an attempt made progress.
    pub fn reset(&mut self) {
        self.next = BACKOFF_START;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aspen_core::api::ReadConsistency;
    use aspen_core::command::Txn;

    #[test]
    fn reads_are_repeatable_and_writes_are_not() {
        let get = ClientRequest::Get { key: b"k".to_vec(), consistency: ReadConsistency::Linearizable };
        let put = ClientRequest::Put { key: b"k".to_vec(), value: b"v".to_vec(), lease: None };
        assert!(is_safe_to_repeat(&get));
        assert!(!is_safe_to_repeat(&put));
        assert!(!is_safe_to_repeat(&ClientRequest::Delete { key: b"k".to_vec() }));
    }

    #[test]
    fn a_txn_is_repeatable_only_when_it_writes_nothing() {
        let get = TxnOp::Get { key: b"k".to_vec() };
        let put = TxnOp::Put { key: b"k".to_vec(), value: vec![], lease: None };
        let read_only = Txn { compare: vec![], success: vec![get.clone()], failure: vec![get.clone()] };
        let writing = Txn { compare: vec![], success: vec![get], failure: vec![put] };
        assert!(is_safe_to_repeat(&ClientRequest::Txn(read_only)));
        assert!(!is_safe_to_repeat(&ClientRequest::Txn(writing)));
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_and_stops_at_the_deadline() {
        let now = Instant::now();
        let mut b = Backoff::default();
        let far = now + Duration::from_secs(100);
        let delays: Vec<_> = (0..7).filter_map(|_| b.next_delay(now, far)).collect();
        let ms: Vec<u128> = delays.iter().map(|d| d.as_millis()).collect();
        assert_eq!(ms, vec![50, 100, 200, 400, 800, 1000, 1000]);
        let mut b = Backoff::default();
        assert_eq!(b.next_delay(now, now + Duration::from_millis(10)), None);
    }
}
