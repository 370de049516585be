//! The async Rust client of an Aspen cluster.
//!
//! A [`Client`] is made from a cluster ticket, keeps one QUIC connection to one node and
//! fails over to the others in the ticket when that node goes away. Every call is a thin
//! typed wrapper over [`Client::request`], which sends one
//! [`ClientRequest`](aspen_core::api::ClientRequest) per stream, so concurrent calls
//! pipeline. Reads are retried freely; a write is retried only when it certainly had no
//! effect, and otherwise fails with `AspenError::OutcomeUnknown`.
//!
//! Not for: running nodes (`aspen-node`) or the command line (`aspen-cli`).

mod admin;
mod client;
mod config;
mod coord_ops;
pub mod discovery;
mod error;
pub mod keys;
mod kv;
mod kv_impl;
mod lease;
mod pool;
pub mod retry;
mod watch;
pub mod watch_cursor;

pub use admin::NodeInfo;
pub use aspen_core::api::{ClusterStatus, LeaseInfo, MemberStatus, NodeAddr, ReadConsistency};
pub use aspen_core::command::{Compare, CompareOp, CompareTarget, Txn, TxnOp, TxnOpResult};
pub use aspen_core::{AspenError, Event, EventKind, KeyValue, LeaseId};
pub use aspen_kv::{
    CasOutcome, DeleteResult, GetResult, Kv, KvError, KvExt, KvWatch, LeaseGrant, LeaseRevoked, PutResult, ScanPage,
    ScanRequest, SharedKv, TxnResponse,
};
pub use aspen_net::{ClusterTicket, TicketError};
pub use client::{Answer, AppChannel, AppStream, Client};
pub use config::ClientConfig;
pub use discovery::Discovery;
pub use error::ClientError;
pub use keys::{key_successor, prefix_end};
pub use pool::describe as describe_node;
pub use watch::{WATCH_CLIENT_BUFFER, WatchStream};
