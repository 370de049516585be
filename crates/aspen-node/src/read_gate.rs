//! Linearizable reads: concurrent reads share one ReadIndex round.
//!
//! A read joins the next round that starts after it arrived (never one already in
//! flight), so the leadership confirmation always happens after the read began.

use aspen_core::error::AspenError;
use aspen_raft::Raft;
use openraft::ReadPolicy;
use openraft::errors::{LinearizableReadError, RaftError};
use tokio::sync::{mpsc, oneshot};

type Waiter = oneshot::Sender<Result<(), AspenError>>;

#[derive(Clone)]
pub struct ReadGate {
    tx: mpsc::Sender<Waiter>,
}

impl ReadGate {
    pub fn start(raft: Raft) -> Self {
        let (tx, rx) = mpsc::channel(16 * 1024);
        tokio::spawn(run(raft, rx));
        ReadGate { tx }
    }

    /// Returns once this node's state machine reflects every write acknowledged before
    /// the call, or an error if this node cannot confirm it leads.
    pub async fn wait(&self) -> Result<(), AspenError> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(tx).await.map_err(|_| AspenError::Unavailable { reason: "node is shutting down".into() })?;
        rx.await.map_err(|_| AspenError::Unavailable { reason: "read round dropped".into() })?
    }
}

async fn run(raft: Raft, mut rx: mpsc::Receiver<Waiter>) {
    while let Some(first) = rx.recv().await {
        let mut waiters = vec![first];
        while let Ok(w) = rx.try_recv() {
            waiters.push(w);
        }
        let result = raft.ensure_linearizable(ReadPolicy::ReadIndex).await.map(|_| ()).map_err(map_read_error);
        for w in waiters {
            let _ = w.send(result.clone());
        }
    }
}

fn map_read_error(e: RaftError<aspen_raft::TypeConfig, LinearizableReadError<aspen_raft::TypeConfig>>) -> AspenError {
    match e {
        RaftError::APIError(LinearizableReadError::ForwardToLeader(f)) => AspenError::NotLeader { leader: f.leader_id },
        RaftError::APIError(e) => AspenError::Unavailable { reason: format!("cannot confirm leadership: {e}") },
        RaftError::Fatal(f) => AspenError::Unavailable { reason: format!("raft stopped: {f}") },
    }
}
