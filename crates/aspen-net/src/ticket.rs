//! Cluster tickets: the short string a client or a joining node needs to reach a
//! cluster. `aspen` + lowercase base32 of a versioned postcard record.
//!
//! A ticket names the cluster and some of its nodes, and may carry a token. It never
//! carries a secret key.

use aspen_core::api::NodeAddr;
use serde::{Deserialize, Serialize};

const PREFIX: &str = "aspen";
/// Most nodes a ticket may name.
pub const MAX_TICKET_NODES: usize = 64;
/// Most addresses per node in a ticket.
pub const MAX_TICKET_ADDRS: usize = 8;
/// Largest token a ticket may embed.
pub const MAX_TICKET_TOKEN_BYTES: usize = 16 * 1024;
/// Longest ticket string accepted (checked before decoding).
pub const MAX_TICKET_CHARS: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterTicket {
    /// Empty until the cluster is initialized.
    pub cluster_id: String,
    pub nodes: Vec<NodeAddr>,
    pub token: Option<Vec<u8>>,
}

#[derive(Serialize, Deserialize)]
enum TicketWire {
    V1 { cluster_id: String, nodes: Vec<NodeAddr>, token: Option<Vec<u8>> },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TicketError {
    #[error("malformed ticket: it must start with \"{PREFIX}\"")]
    BadPrefix,
    #[error("malformed ticket: {0}")]
    BadEncoding(String),
    #[error("malformed ticket: it is {0} characters, over the limit of {MAX_TICKET_CHARS}")]
    TooLong(usize),
    #[error("malformed ticket: it names no node")]
    NoNodes,
    #[error("malformed ticket: {0}")]
    OverLimit(String),
}

impl ClusterTicket {
    pub fn encode(&self) -> String {
        let wire = TicketWire::V1 {
            cluster_id: self.cluster_id.clone(),
            nodes: self.nodes.clone(),
            token: self.token.clone(),
        };
        // Serializing plain owned data into a Vec cannot fail.
        let bytes = postcard::to_allocvec(&wire).unwrap_or_default();
        format!("{PREFIX}{}", data_encoding::BASE32_NOPAD.encode(&bytes).to_ascii_lowercase())
    }

    pub fn decode(text: &str) -> Result<Self, TicketError> {
        let text = text.trim();
        if text.len() > MAX_TICKET_CHARS {
            return Err(TicketError::TooLong(text.len()));
        }
        let body = text.strip_prefix(PREFIX).ok_or(TicketError::BadPrefix)?;
        let bytes = data_encoding::BASE32_NOPAD
            .decode(body.to_ascii_uppercase().as_bytes())
            .map_err(|e| TicketError::BadEncoding(format!("not base32: {e}")))?;
        let TicketWire::V1 { cluster_id, nodes, token } =
            postcard::from_bytes(&bytes).map_err(|e| TicketError::BadEncoding(format!("cannot decode: {e}")))?;
        if nodes.is_empty() {
            return Err(TicketError::NoNodes);
        }
        if nodes.len() > MAX_TICKET_NODES {
            return Err(TicketError::OverLimit(format!("{} nodes, max {MAX_TICKET_NODES}", nodes.len())));
        }
        if let Some(n) = nodes.iter().find(|n| n.addrs.len() > MAX_TICKET_ADDRS) {
            return Err(TicketError::OverLimit(format!(
                "{} addresses for one node, max {MAX_TICKET_ADDRS}",
                n.addrs.len()
            )));
        }
        if token.as_ref().is_some_and(|t| t.len() > MAX_TICKET_TOKEN_BYTES) {
            return Err(TicketError::OverLimit(format!("token over {MAX_TICKET_TOKEN_BYTES} bytes")));
        }
        Ok(ClusterTicket { cluster_id, nodes, token })
    }
}

impl std::fmt::Display for ClusterTicket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.encode())
    }
}

impl std::str::FromStr for ClusterTicket {
    type Err = TicketError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::decode(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> ClusterTicket {
        ClusterTicket {
            cluster_id: "c1".into(),
            nodes: vec![NodeAddr { endpoint_id: [7; 32], addrs: vec!["127.0.0.1:7000".parse().unwrap()] }],
            token: None,
        }
    }

    #[test]
    fn ticket_round_trips() {
        let t = sample();
        assert_eq!(ClusterTicket::decode(&t.encode()).unwrap(), t);
    }

    #[test]
    fn malformed_tickets_name_the_problem() {
        assert_eq!(ClusterTicket::decode("hello"), Err(TicketError::BadPrefix));
        assert!(matches!(ClusterTicket::decode("aspen!!!"), Err(TicketError::BadEncoding(_))));
        let truncated = &sample().encode()[..20];
        assert!(matches!(ClusterTicket::decode(truncated), Err(TicketError::BadEncoding(_))));
        let empty = ClusterTicket { nodes: vec![], ..sample() };
        assert_eq!(ClusterTicket::decode(&empty.encode()), Err(TicketError::NoNodes));
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_text_never_panics(s in ".{0,300}") {
            let _ = ClusterTicket::decode(&s);
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics(b in proptest::collection::vec(any::<u8>(), 0..300)) {
            let text = format!("aspen{}", data_encoding::BASE32_NOPAD.encode(&b).to_ascii_lowercase());
            let _ = ClusterTicket::decode(&text);
        }
    }
}
