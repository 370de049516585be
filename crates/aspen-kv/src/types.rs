//! What the KV's calls take and return.

use std::time::Duration;

use aspen_core::command::TxnOpResult;
use aspen_core::{KeyValue, LeaseId};

/// A key read with the store revision it was read at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GetResult {
    pub kv: Option<KeyValue>,
    pub revision: u64,
}

/// One page of a scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanPage {
    /// Entries in key order (values empty for a keys-only scan).
    pub kvs: Vec<KeyValue>,
    /// True when the range holds more keys after the last one returned: ask again from
    /// [`ScanPage::next_start`].
    pub more: bool,
    /// The store revision the page was read at.
    pub revision: u64,
}

impl ScanPage {
    /// Where the next page starts: just after the last key of this one.
    pub fn next_start(&self) -> Option<Vec<u8>> {
        self.kvs.last().map(|kv| aspen_core::keys::key_successor(&kv.key))
    }
}

/// What a put did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutResult {
    /// The revision of the write.
    pub revision: u64,
    /// The key's previous state, when it existed.
    pub prev: Option<KeyValue>,
}

/// What a delete did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeleteResult {
    /// The store revision after the delete (unchanged when nothing was deleted).
    pub revision: u64,
    /// How many keys were removed.
    pub deleted: u64,
}

/// What a transaction did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnResponse {
    pub revision: u64,
    /// True when every compare held and the success branch ran.
    pub succeeded: bool,
    /// One result per operation of the branch that ran, in order.
    pub results: Vec<TxnOpResult>,
}

/// A lease as granted or refreshed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseGrant {
    pub id: LeaseId,
    /// The lease's time to live; it ends this long after the last grant or keepalive.
    pub ttl: Duration,
    /// When it ends unless kept alive, in milliseconds since the Unix epoch (leader's clock).
    pub expires_at_ms: u64,
}

/// What revoking a lease did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseRevoked {
    pub revision: u64,
    /// Keys attached to the lease, now deleted.
    pub deleted_keys: u64,
}
