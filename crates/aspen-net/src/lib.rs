//! Aspen's transport edge: the iroh endpoint every node and client binds, the
//! length-prefixed postcard framing every protocol uses, persisted node identities,
//! and cluster tickets.
//!
//! Protocol logic lives elsewhere (`aspen-raft` for Raft, `aspen-node` for the client
//! service); this crate only moves typed frames and knows who is who.

pub mod clock;
pub mod endpoint;
pub mod frame;
pub mod identity;
pub mod ports;
pub mod ticket;
pub mod token;

pub use clock::now_ms;
pub use endpoint::{EndpointConfig, EndpointError, bind_endpoint, endpoint_addr};
pub use frame::{FrameError, read_frame, write_frame};
pub use ticket::{ClusterTicket, TicketError};
pub use token::{Token, TokenError};
