//! Raft for Aspen: openraft's type configuration, the redb storage (the log and vote in
//! `raft-log.redb`, the state machine in `state.redb`), snapshots, the watch hub fed by the
//! apply step, and the Raft network over one iroh ALPN.
//!
//! The KV semantics themselves live in `aspen_core::apply`; this crate only moves
//! committed entries into redb through it and ships entries between peers.

pub mod network;
pub mod server;
pub mod storage;
pub mod types;
pub mod watch;

pub use storage::{KvReader, LogStore, ScanOptions, SecurityView, StateMachine, Storage, open_storage};
pub use types::{RAFT_ALPN, TypeConfig};

/// A node's Raft: Aspen's type config over its redb state machine.
pub type Raft = openraft::Raft<TypeConfig, storage::StateMachine>;
