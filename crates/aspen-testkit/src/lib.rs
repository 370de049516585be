//! Test harness for Aspen: starts real node processes and injects faults into them.
//!
//! * [`ProcessCluster`] runs node binaries with their own data dirs and fixed addresses, and
//!   kills (`-9`), pauses (SIGSTOP), resumes, stops and restarts them on the same data.
//! * [`TestNet`] gives each node its own Linux network namespace on a private bridge, so
//!   partitions are real packet loss the nodes cannot tell from a network fault (needs root; falls
//!   back to loopback without partitions otherwise).
//! * [`harness::TestCluster`] is an initialized cluster of real `aspen` nodes with its root
//!   token, for the integration tests of any crate.
//! * [`cluster_up::ClusterUp`] runs `aspen cluster up`, the supervisor users run.
//! * [`git::GitEnv`] runs the real `git` against a cluster's forge through `git-remote-aspen`.
//! * [`linearizability`] checks recorded client histories.
//! * [`writer::AckedWriter`] writes throughout a disruption; no acknowledged write may be lost.

pub mod cluster_up;
pub mod git;
pub mod harness;
pub mod linearizability;
pub mod vm;
pub mod writer;

mod alloc;
mod bpf;
mod cluster;
mod cmd;
mod error;
mod logs;
mod names;
mod net;
mod netns;
mod partition;
mod process;
mod ready;

pub use cluster::{ClusterOptions, LOG_FILE, NodeSpec, ProcessCluster, TICKET_FILE};
pub use error::TestkitError;
pub use harness::{TestCluster, eventually};
pub use net::{NETNS_ENV, NETNS_NODE_PORT, NetMode, TestNet};
pub use process::process_state;
