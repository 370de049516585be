//! Leases, stored entries and watch events. Revisions are plain `u64`s: the store's
//! revision, bumped once by every committed write that changes keys.

use serde::{Deserialize, Serialize};

/// Identifies a lease; assigned by the state machine at grant time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct LeaseId(pub u64);

impl std::fmt::Display for LeaseId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// What the state machine stores for one key (the key itself is the table key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvEntry {
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    pub create_revision: u64,
    pub mod_revision: u64,
    /// Number of writes since creation; 1 after the first put.
    pub version: u64,
    pub lease: Option<LeaseId>,
}

impl KvEntry {
    pub fn into_key_value(self, key: Vec<u8>) -> KeyValue {
        KeyValue {
            key,
            value: self.value,
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
            version: self.version,
            lease: self.lease,
        }
    }
}

/// A key with its value and metadata, as clients see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValue {
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    pub create_revision: u64,
    pub mod_revision: u64,
    pub version: u64,
    pub lease: Option<LeaseId>,
}

/// A lease as stored: expiry is in the leader's clock, carried in each Raft entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    pub id: LeaseId,
    pub ttl_ms: u64,
    pub expires_at_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    Put,
    Delete,
}

/// One change to one key, as a watcher receives it.
///
/// For a delete, `kv.value` is empty and `kv.mod_revision` is the deleting revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub kind: EventKind,
    pub kv: KeyValue,
}

impl Event {
    pub fn revision(&self) -> u64 {
        self.kv.mod_revision
    }
}
