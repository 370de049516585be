//! What goes into the Raft log, and what applying it returns.
//!
//! One log entry is a [`WriteBatch`]: the leader groups concurrent client writes into
//! one entry and stamps it with its own clock, so lease expiry is decided by the
//! leader and every replica applies the same time.

use serde::{Deserialize, Serialize};

use crate::error::AspenError;
use crate::queue::{QueueCommand, QueueResult};
use crate::ratelimit::{RateLimitResult, RateLimitTake};
use crate::types::{KeyValue, LeaseId};

/// One Raft log entry's application payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteBatch {
    /// The proposing leader's wall clock, in milliseconds since the Unix epoch.
    pub leader_time_ms: u64,
    pub commands: Vec<WriteCommand>,
}

impl std::fmt::Display for WriteBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WriteBatch({} commands @ {} ms)", self.commands.len(), self.leader_time_ms)
    }
}

/// A single state-changing operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WriteCommand {
    Put {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        lease: Option<LeaseId>,
    },
    Delete {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
    /// Deletes every key in `[start, end)`; an empty `end` means "to the end of the keyspace".
    DeleteRange {
        #[serde(with = "serde_bytes")]
        start: Vec<u8>,
        #[serde(with = "serde_bytes")]
        end: Vec<u8>,
    },
    Txn(Txn),
    LeaseGrant {
        ttl_ms: u64,
    },
    LeaseKeepAlive {
        id: LeaseId,
    },
    LeaseRevoke {
        id: LeaseId,
    },
    /// Proposed by the leader only, for leases its clock has seen expire.
    LeaseExpire {
        ids: Vec<LeaseId>,
    },
    /// Records the cluster's root public key, proposed once after `init`. The first one
    /// applied wins; a different key later is refused.
    SetClusterRoot {
        public_key: [u8; 32],
    },
    /// Revokes every token whose chain contains the link with this hash.
    RevokeToken {
        id: [u8; 32],
    },
    /// Proposed once by a new leader: pushes every lease's expiry to at least
    /// `leader_time_ms + ttl`, so a leader change never expires a lease early.
    LeaseRefreshAll,
    /// A work-queue operation (see [`crate::queue`]).
    Queue(QueueCommand),
    /// Takes tokens from a cluster-wide token bucket (see [`crate::ratelimit`]).
    RateLimit(RateLimitTake),
}

/// A multi-key transaction: if every compare holds, run `success`, else `failure`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Txn {
    pub compare: Vec<Compare>,
    pub success: Vec<TxnOp>,
    pub failure: Vec<TxnOp>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compare {
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    pub op: CompareOp,
    pub target: CompareTarget,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareOp {
    Equal,
    NotEqual,
    Less,
    Greater,
}

/// What a compare looks at. A missing key has version, create and mod revision 0,
/// no lease, and no value: any value compare on it is false.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareTarget {
    Value(#[serde(with = "serde_bytes")] Vec<u8>),
    Version(u64),
    CreateRevision(u64),
    ModRevision(u64),
    Lease(u64),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnOp {
    Put {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        lease: Option<LeaseId>,
    },
    Delete {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
    Get {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
}

/// The result of one [`WriteCommand`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WriteResult {
    Put { revision: u64, prev: Option<KeyValue> },
    Delete { revision: u64, deleted: u64 },
    Txn { revision: u64, succeeded: bool, results: Vec<TxnOpResult> },
    Lease { id: LeaseId, ttl_ms: u64, expires_at_ms: u64 },
    LeaseRevoked { revision: u64, deleted_keys: u64 },
    LeasesExpired { revision: u64, expired: u64 },
    Queue(QueueResult),
    RateLimit(RateLimitResult),
    Done,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnOpResult {
    Put { prev: Option<KeyValue> },
    Delete { deleted: u64 },
    Get { kv: Option<KeyValue> },
}

/// What applying one log entry returns: one result per command, in order.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct BatchResult {
    pub results: Vec<Result<WriteResult, AspenError>>,
}
