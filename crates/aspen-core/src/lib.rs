//! Aspen's core vocabulary: keys, values, revisions, leases, errors, limits, the
//! client API types and the pure KV state machine step.
//!
//! This crate does no I/O. The Raft layer (`aspen-raft`) feeds committed entries into
//! [`apply::apply_batch`] over a [`store::KvStore`]; the node and client crates speak the
//! [`api`] types on the wire. It is not a place for networking, storage engines or
//! anything async.

pub mod api;
pub mod apply;
pub mod capability;
pub mod command;
pub mod error;
pub mod golden;
pub mod keys;
pub mod limits;
pub mod mem_store;
pub mod queue;
pub mod ratelimit;
pub mod store;
pub mod types;
pub mod validate;

pub use error::{AspenError, ErrorCode};
pub use types::{Event, EventKind, KeyValue, KvEntry, LeaseId, LeaseRecord};
