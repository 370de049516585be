//! The Aspen node: one iroh endpoint carrying Raft, the client protocol, the members-only
//! protocol and the protocols of the apps it is assembled with (`aspen_app::App`); storage
//! in two redb files (`aspen-raft`); the background duties of a leader (lease expiry).
//!
//! The node knows no app by name: the binary that runs it (`aspen node`, `aspen-node`) passes
//! the list to [`run`] or [`start`]. Not a library for clients: those use `aspen-client`.

mod apps;
mod args;
mod auth;
mod batcher;
mod bootstrap;
mod build;
mod cluster;
mod drain;
mod forward;
mod leases;
mod local_kv;
mod member;
mod node;
mod notify;
mod ops;
mod read_gate;
mod root;
mod service;
mod state;

pub use args::NodeArgs;
pub use node::{JOIN_TICKET_FILE, READY_TICKET_FILE, RunningNode, run, start};
pub use root::{CLUSTER_KEY_FILE, ROOT_TOKEN_FILE};
