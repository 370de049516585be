//! Groups concurrent client writes into one Raft entry.
//!
//! Writes queue on a channel; the batcher takes everything queued (up to
//! [`MAX_WRITE_BATCH`] commands and [`MAX_WRITE_BATCH_BYTES`]) into one [`WriteBatch`]
//! stamped with this leader's clock, and keeps a few proposals in flight so the log
//! pipeline stays full.

use std::sync::Arc;

use aspen_core::command::{WriteBatch, WriteCommand, WriteResult};
use aspen_core::error::AspenError;
use aspen_core::limits::{MAX_WRITE_BATCH, MAX_WRITE_BATCH_BYTES};
use aspen_core::validate;
use aspen_net::now_ms;
use aspen_raft::Raft;
use openraft::errors::{ClientWriteError, RaftError};
use tokio::sync::{Semaphore, mpsc, oneshot};

/// Proposals in flight at once.
const MAX_INFLIGHT_PROPOSALS: usize = 8;
/// Writes waiting for a batch before new ones are pushed back on.
const QUEUE_DEPTH: usize = 16 * 1024;

struct Pending {
    command: WriteCommand,
    reply: oneshot::Sender<Result<WriteResult, AspenError>>,
}

#[derive(Clone)]
pub struct Batcher {
    tx: mpsc::Sender<Pending>,
}

impl Batcher {
    pub fn start(raft: Raft) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        tokio::spawn(run(raft, rx));
        Batcher { tx }
    }

    /// Proposes `command` and waits for its result once applied.
    pub async fn write(&self, command: WriteCommand) -> Result<WriteResult, AspenError> {
        validate::command(&command)?;
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Pending { command, reply })
            .await
            .map_err(|_| AspenError::Unavailable { reason: "node is shutting down".into() })?;
        rx.await.map_err(|_| AspenError::OutcomeUnknown { reason: "the proposal was dropped".into() })?
    }
}

async fn run(raft: Raft, mut rx: mpsc::Receiver<Pending>) {
    let inflight = Arc::new(Semaphore::new(MAX_INFLIGHT_PROPOSALS));
    while let Some(first) = rx.recv().await {
        let mut bytes = validate::command_bytes(&first.command);
        let mut batch = vec![first];
        while batch.len() < MAX_WRITE_BATCH && bytes < MAX_WRITE_BATCH_BYTES {
            match rx.try_recv() {
                Ok(p) => {
                    bytes += validate::command_bytes(&p.command);
                    batch.push(p);
                }
                Err(_) => break,
            }
        }
        let Ok(permit) = inflight.clone().acquire_owned().await else { return };
        let raft = raft.clone();
        tokio::spawn(async move {
            let (commands, replies): (Vec<_>, Vec<_>) = batch.into_iter().map(|p| (p.command, p.reply)).unzip();
            let result = raft.client_write(WriteBatch { leader_time_ms: now_ms(), commands }).await;
            drop(permit);
            match result {
                Ok(resp) => {
                    let mut results = resp.data.results.into_iter();
                    for reply in replies {
                        let r = results
                            .next()
                            .unwrap_or_else(|| Err(AspenError::internal("state machine returned too few results")));
                        let _ = reply.send(r);
                    }
                }
                Err(e) => {
                    let err = map_write_error(e);
                    for reply in replies {
                        let _ = reply.send(Err(err.clone()));
                    }
                }
            }
        });
    }
}

fn map_write_error(e: RaftError<aspen_raft::TypeConfig, ClientWriteError<aspen_raft::TypeConfig>>) -> AspenError {
    match e {
        // Rejected before its entry was appended: certainly no effect, safe to retry.
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => AspenError::NotLeader { leader: f.leader_id },
        // Appended, then discarded on a leader change: it may still have committed.
        RaftError::APIError(ClientWriteError::LogEntryDiscarded(f)) => AspenError::OutcomeUnknown {
            reason: format!(
                "leadership changed while the write was in flight{}",
                f.leader_id.map(|l| format!(" (new leader: node {l})")).unwrap_or_default()
            ),
        },
        RaftError::APIError(ClientWriteError::PreconditionFailed(p)) => AspenError::internal(p),
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            AspenError::Membership { reason: e.to_string() }
        }
        RaftError::Fatal(f) => AspenError::Unavailable { reason: format!("raft stopped: {f}") },
    }
}
