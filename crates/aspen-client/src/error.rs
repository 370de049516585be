//! [`ClientError`]: everything a client call can fail with, from the cluster's own typed
//! [`AspenError`] to transport failures and tickets that do not parse.

use aspen_core::AspenError;
use aspen_net::TicketError;

/// Why a client call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// The cluster answered with an error, or the client concluded one on its behalf
    /// (`OutcomeUnknown` for a write whose answer was lost, `Timeout` for a read).
    #[error(transparent)]
    Aspen(#[from] AspenError),
    /// No node named in the ticket accepted a connection.
    #[error("no node in the ticket is reachable: tried {tried}")]
    Unreachable {
        /// Each node tried, with why it failed.
        tried: String,
    },
    /// A connection was made but broke before the request could be sent.
    #[error("connection to node {node} failed: {reason}")]
    Connection {
        /// The node's address.
        node: String,
        /// What went wrong.
        reason: String,
    },
    /// The ticket string does not decode.
    #[error("bad ticket: {0}")]
    BadTicket(#[from] TicketError),
    /// The node answered with a response that does not fit the request.
    #[error("unexpected response to {request}: {response}")]
    UnexpectedResponse {
        /// The request's name.
        request: &'static str,
        /// The response, abbreviated.
        response: String,
    },
    /// The node sent bytes that are not a valid answer (a different protocol version?).
    #[error("protocol error talking to node {node}: {reason}")]
    Protocol {
        /// The node's address.
        node: String,
        /// What could not be decoded.
        reason: String,
    },
    /// The client's own endpoint could not be created.
    #[error("cannot start the client endpoint: {0}")]
    Endpoint(String),
    /// A blob's bytes did not hash to the blob's name, or ended early: nothing read may be
    /// used.
    #[error("blob {expected} failed verification: {reason}")]
    BlobCorrupt {
        /// The hash asked for, hex.
        expected: String,
        /// What was wrong.
        reason: String,
    },
    /// Reading the data to add, or writing the data read, failed locally.
    #[error("blob I/O failed: {0}")]
    BlobIo(String),
    /// The client was built with an unusable configuration (for example a ticket with no node).
    #[error("invalid client configuration: {0}")]
    Config(String),
}

impl ClientError {
    /// The cluster's error, when this is one.
    pub fn aspen(&self) -> Option<&AspenError> {
        match self {
            ClientError::Aspen(e) => Some(e),
            _ => None,
        }
    }

    /// True when the request may or may not have taken effect.
    pub fn is_outcome_unknown(&self) -> bool {
        matches!(self, ClientError::Aspen(AspenError::OutcomeUnknown { .. }))
    }

    /// True when a watch asked for history the node no longer has.
    pub fn is_compacted(&self) -> bool {
        matches!(self, ClientError::Aspen(AspenError::Compacted { .. }))
    }

    pub(crate) fn unexpected(request: &'static str, response: &aspen_core::api::ClientResponse) -> Self {
        let mut text = format!("{response:?}");
        if text.len() > 200 {
            let cut = (0..=200).rev().find(|i| text.is_char_boundary(*i)).unwrap_or(0);
            text.truncate(cut);
            text.push('…');
        }
        ClientError::UnexpectedResponse { request, response: text }
    }
}
