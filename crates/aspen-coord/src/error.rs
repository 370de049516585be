use aspen_kv::KvError;

#[derive(Debug, thiserror::Error)]
pub enum CoordError {
    #[error(transparent)]
    Kv(#[from] KvError),
    #[error("timed out after {0:?} waiting for {1}")]
    Timeout(std::time::Duration, String),
    /// The lock was lost (its session's lease ended, or it was released) before this
    /// operation: the fencing token is no longer current.
    #[error("fencing token {token} of lock {lock} is no longer current: the lock was lost")]
    StaleToken { lock: String, token: u64 },
    #[error("the session's lease has ended; start a new session")]
    SessionEnded,
    #[error("coordination state is not what this client expects: {0}")]
    Corrupt(String),
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// The receipt no longer names the item's latest delivery: it was acked already, or
    /// its visibility timeout passed and it was delivered again.
    #[error(
        "receipt {receipt} of queue {queue:?} is stale: the item was acked, or redelivered after its visibility timeout"
    )]
    StaleReceipt { queue: String, receipt: String },
}
