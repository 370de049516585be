//! Typed errors of the testkit that callers may want to match on (via
//! `anyhow::Error::downcast_ref::<TestkitError>()`); everything else is `anyhow` with context.

use std::process::ExitStatus;
use std::time::Duration;

/// A failure the caller can react to, e.g. skip a partition test in loopback mode.
#[derive(Debug, thiserror::Error)]
pub enum TestkitError {
    /// The cluster runs in loopback mode, where nodes share one network stack.
    #[error(
        "network partitions need root and Linux network namespaces; this cluster runs in \
         loopback mode ({reason})"
    )]
    PartitionsUnsupported {
        /// Why network namespaces are not in use.
        reason: String,
    },
    /// A node index past the end of the cluster.
    #[error("node index {index} out of range (cluster has {len} nodes)")]
    NoSuchNode {
        /// The index asked for.
        index: usize,
        /// Number of nodes in the cluster.
        len: usize,
    },
    /// A partition description that names a node twice.
    #[error("invalid partition: {0}")]
    BadPartition(String),
    /// The operation needs a running node process.
    #[error("node {index} is not running")]
    NotRunning {
        /// Node index.
        index: usize,
    },
    /// `start` on a node whose process is still alive.
    #[error("node {index} is already running (pid {pid})")]
    AlreadyRunning {
        /// Node index.
        index: usize,
        /// Its process id.
        pid: u32,
    },
    /// The node process died before writing its ticket.
    #[error("node {index} exited ({status}) before it became ready; last log lines:\n{log}")]
    ExitedBeforeReady {
        /// Node index.
        index: usize,
        /// How it exited.
        status: ExitStatus,
        /// Tail of its `node.log`.
        log: String,
    },
    /// The node did not write its ticket in time.
    #[error("node {index} not ready after {waited:?}; last log lines:\n{log}")]
    NotReady {
        /// Node index.
        index: usize,
        /// How long the testkit waited.
        waited: Duration,
        /// Tail of its `node.log`.
        log: String,
    },
}
