//! [`KvError`]: how a KV call fails, whichever implementation served it.

use aspen_core::AspenError;

/// Why a KV call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvError {
    /// The cluster answered with an error, or the caller concluded one on its behalf
    /// (`OutcomeUnknown` for a write whose answer was lost, `Timeout`).
    #[error(transparent)]
    Aspen(#[from] AspenError),
    /// No node could be reached.
    #[error("no node is reachable: tried {tried}")]
    Unreachable { tried: String },
    /// A connection broke before the request could be sent.
    #[error("connection to node {node} failed: {reason}")]
    Connection { node: String, reason: String },
    /// An answer that does not fit the request, or does not decode.
    #[error("protocol error: {0}")]
    Protocol(String),
}

impl KvError {
    /// The cluster's error, when this is one.
    pub fn aspen(&self) -> Option<&AspenError> {
        match self {
            KvError::Aspen(e) => Some(e),
            _ => None,
        }
    }

    /// True when the request may or may not have taken effect.
    pub fn is_outcome_unknown(&self) -> bool {
        matches!(self, KvError::Aspen(AspenError::OutcomeUnknown { .. }))
    }

    /// True when a later attempt of an idempotent request may succeed: the cluster was
    /// between leaders, unreachable, or lost the answer.
    pub fn is_transient(&self) -> bool {
        match self {
            KvError::Aspen(e) => matches!(
                e,
                AspenError::OutcomeUnknown { .. }
                    | AspenError::Unavailable { .. }
                    | AspenError::NotLeader { .. }
                    | AspenError::Timeout { .. }
            ),
            KvError::Unreachable { .. } | KvError::Connection { .. } => true,
            KvError::Protocol(_) => false,
        }
    }

    /// True when the lease a request named no longer exists.
    pub fn is_lease_not_found(&self) -> bool {
        matches!(self, KvError::Aspen(AspenError::LeaseNotFound { .. }))
    }
}
