//! The Aspen node: one iroh endpoint carrying Raft and the client service, storage in
//! one redb file, and the background duties of a leader (lease expiry).
//!
//! `aspen-node` (and `aspen node`) call [`run`]. Not a library for clients: those use
//! `aspen-client`.

mod args;
mod auth;
mod batcher;
mod blob_replication;
mod blobs;
mod forward;
mod leases;
mod node;
mod notify;
mod read_gate;
mod root;
mod service;
mod state;

pub use args::NodeArgs;
pub use node::{READY_TICKET_FILE, run};
pub use root::{CLUSTER_KEY_FILE, ROOT_TOKEN_FILE};
