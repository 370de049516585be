//! The one error type that crosses the wire, with stable codes.

use serde::{Deserialize, Serialize};

/// A stable, machine-readable error code. The string form never changes once released.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    KeyTooLarge,
    ValueTooLarge,
    EmptyKey,
    TooManyTxnOps,
    ScanLimitTooLarge,
    BatchTooLarge,
    RangeTooLarge,
    InvalidLeaseTtl,
    LeaseNotFound,
    TooManyLeases,
    Compacted,
    NotInitialized,
    AlreadyInitialized,
    NotLeader,
    Unavailable,
    Timeout,
    OutcomeUnknown,
    InvalidRequest,
    UnknownRequest,
    FrameTooLarge,
    Membership,
    Storage,
    Internal,
    Unauthenticated,
    PermissionDenied,
    StaleReceipt,
    RevisionUnavailable,
    ResponseTooLarge,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::KeyTooLarge => "key_too_large",
            ErrorCode::ValueTooLarge => "value_too_large",
            ErrorCode::EmptyKey => "empty_key",
            ErrorCode::TooManyTxnOps => "too_many_txn_ops",
            ErrorCode::ScanLimitTooLarge => "scan_limit_too_large",
            ErrorCode::BatchTooLarge => "batch_too_large",
            ErrorCode::RangeTooLarge => "range_too_large",
            ErrorCode::InvalidLeaseTtl => "invalid_lease_ttl",
            ErrorCode::LeaseNotFound => "lease_not_found",
            ErrorCode::TooManyLeases => "too_many_leases",
            ErrorCode::Compacted => "compacted",
            ErrorCode::NotInitialized => "not_initialized",
            ErrorCode::AlreadyInitialized => "already_initialized",
            ErrorCode::NotLeader => "not_leader",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Timeout => "timeout",
            ErrorCode::OutcomeUnknown => "outcome_unknown",
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::UnknownRequest => "unknown_request",
            ErrorCode::FrameTooLarge => "frame_too_large",
            ErrorCode::Membership => "membership",
            ErrorCode::Storage => "storage",
            ErrorCode::Internal => "internal",
            ErrorCode::Unauthenticated => "unauthenticated",
            ErrorCode::PermissionDenied => "permission_denied",
            ErrorCode::StaleReceipt => "stale_receipt",
            ErrorCode::RevisionUnavailable => "revision_unavailable",
            ErrorCode::ResponseTooLarge => "response_too_large",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything that can go wrong with a request, as the client sees it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum AspenError {
    #[error("key is {len} bytes, over the limit MAX_KEY_BYTES = {max}")]
    KeyTooLarge { len: usize, max: usize },
    #[error("value is {len} bytes, over the limit MAX_VALUE_BYTES = {max}")]
    ValueTooLarge { len: usize, max: usize },
    #[error("key must not be empty")]
    EmptyKey,
    #[error("transaction has {count} {what}, over the limit MAX_TXN_OPS = {max}")]
    TooManyTxnOps { what: String, count: usize, max: usize },
    #[error("scan limit {requested} is over the limit MAX_SCAN_LIMIT = {max}")]
    ScanLimitTooLarge { requested: u32, max: u32 },
    #[error("batch is too large: {detail}")]
    BatchTooLarge { detail: String },
    #[error("delete-range would remove more than MAX_DELETE_RANGE_KEYS = {max} keys; narrow the range")]
    RangeTooLarge { max: u64 },
    #[error("lease TTL {ttl_ms} ms is outside [{min_ms}, {max_ms}] ms")]
    InvalidLeaseTtl { ttl_ms: u64, min_ms: u64, max_ms: u64 },
    #[error("lease {id} not found (never granted, revoked or expired)")]
    LeaseNotFound { id: u64 },
    #[error("the cluster already holds MAX_LEASES = {max} leases")]
    TooManyLeases { max: u64 },
    #[error("revision {requested} is compacted: this node's watch history starts after revision {compacted}; re-read the current state and watch from revision {}", compacted + 1)]
    Compacted { requested: u64, compacted: u64 },
    #[error("node is not initialized: run `aspen cluster init` first, or join it to a cluster")]
    NotInitialized,
    #[error("cluster is already initialized")]
    AlreadyInitialized,
    #[error("this node is not the leader{}", leader.map(|l| format!(" (leader is node {l})")).unwrap_or_default())]
    NotLeader { leader: Option<u64> },
    #[error("cluster unavailable: {reason}")]
    Unavailable { reason: String },
    #[error("timed out: {what}")]
    Timeout { what: String },
    #[error("the outcome of the request is unknown: {reason}")]
    OutcomeUnknown { reason: String },
    #[error("invalid request: {reason}")]
    InvalidRequest { reason: String },
    #[error("unknown request: {detail}; the peer speaks a protocol version this node does not know")]
    UnknownRequest { detail: String },
    #[error("frame of {len} bytes is over the limit MAX_FRAME_BYTES = {max}")]
    FrameTooLarge { len: usize, max: usize },
    #[error("membership change refused: {reason}")]
    Membership { reason: String },
    #[error("storage error: {reason}")]
    Storage { reason: String },
    #[error("internal error: {reason}")]
    Internal { reason: String },
    #[error("unauthenticated: {reason}")]
    Unauthenticated { reason: String },
    #[error("permission denied: {reason}")]
    PermissionDenied { reason: String },
    #[error(
        "receipt {receipt} of queue {queue:?} is stale: the item was acked, or its visibility timeout passed and it was delivered again"
    )]
    StaleReceipt { queue: String, receipt: String },
    /// A paged read asked for a snapshot the node no longer keeps (expired, or another
    /// node answered): the read must start over.
    #[error("revision {revision} cannot be read here any more ({reason}); start the scan over")]
    RevisionUnavailable { revision: u64, reason: String },
    /// The answer does not fit in one frame. For a write, `what` says that it was applied.
    #[error("the answer to {what} is {len} bytes, over the limit MAX_FRAME_BYTES = {max}")]
    ResponseTooLarge { what: String, len: usize, max: usize },
}

impl AspenError {
    pub fn code(&self) -> ErrorCode {
        match self {
            AspenError::KeyTooLarge { .. } => ErrorCode::KeyTooLarge,
            AspenError::ValueTooLarge { .. } => ErrorCode::ValueTooLarge,
            AspenError::EmptyKey => ErrorCode::EmptyKey,
            AspenError::TooManyTxnOps { .. } => ErrorCode::TooManyTxnOps,
            AspenError::ScanLimitTooLarge { .. } => ErrorCode::ScanLimitTooLarge,
            AspenError::BatchTooLarge { .. } => ErrorCode::BatchTooLarge,
            AspenError::RangeTooLarge { .. } => ErrorCode::RangeTooLarge,
            AspenError::InvalidLeaseTtl { .. } => ErrorCode::InvalidLeaseTtl,
            AspenError::LeaseNotFound { .. } => ErrorCode::LeaseNotFound,
            AspenError::TooManyLeases { .. } => ErrorCode::TooManyLeases,
            AspenError::Compacted { .. } => ErrorCode::Compacted,
            AspenError::NotInitialized => ErrorCode::NotInitialized,
            AspenError::AlreadyInitialized => ErrorCode::AlreadyInitialized,
            AspenError::NotLeader { .. } => ErrorCode::NotLeader,
            AspenError::Unavailable { .. } => ErrorCode::Unavailable,
            AspenError::Timeout { .. } => ErrorCode::Timeout,
            AspenError::OutcomeUnknown { .. } => ErrorCode::OutcomeUnknown,
            AspenError::InvalidRequest { .. } => ErrorCode::InvalidRequest,
            AspenError::UnknownRequest { .. } => ErrorCode::UnknownRequest,
            AspenError::FrameTooLarge { .. } => ErrorCode::FrameTooLarge,
            AspenError::Membership { .. } => ErrorCode::Membership,
            AspenError::Storage { .. } => ErrorCode::Storage,
            AspenError::Internal { .. } => ErrorCode::Internal,
            AspenError::Unauthenticated { .. } => ErrorCode::Unauthenticated,
            AspenError::PermissionDenied { .. } => ErrorCode::PermissionDenied,
            AspenError::StaleReceipt { .. } => ErrorCode::StaleReceipt,
            AspenError::RevisionUnavailable { .. } => ErrorCode::RevisionUnavailable,
            AspenError::ResponseTooLarge { .. } => ErrorCode::ResponseTooLarge,
        }
    }

    /// True when the request certainly had no effect and may be sent again, to any node.
    pub fn is_retryable_without_effect(&self) -> bool {
        matches!(self, AspenError::NotLeader { .. } | AspenError::Unavailable { .. })
    }

    pub fn storage(e: impl std::fmt::Display) -> Self {
        AspenError::Storage { reason: e.to_string() }
    }

    pub fn internal(e: impl std::fmt::Display) -> Self {
        AspenError::Internal { reason: e.to_string() }
    }

    pub fn invalid(reason: impl Into<String>) -> Self {
        AspenError::InvalidRequest { reason: reason.into() }
    }
}
