//! The leader's lease duties: expire leases its clock has seen run out, and refresh
//! every lease once when it takes over, so a leader change never expires one early.
//! Both decisions go through the log, so every replica applies the same outcome. Expired
//! leases are found through the state machine's expiry index: a tick reads only the leases
//! due, however many are live.

use std::sync::Arc;
use std::time::Duration;

use aspen_core::command::WriteCommand;
use aspen_core::limits::MAX_EXPIRE_PER_ENTRY;
use openraft::async_runtime::watch::WatchReceiver;

use crate::state::NodeState;
use aspen_net::now_ms;

/// How often the leader looks for expired leases.
const EXPIRY_TICK: Duration = Duration::from_millis(250);

pub fn spawn(state: Arc<NodeState>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut leading_term = None;
        loop {
            tokio::time::sleep(EXPIRY_TICK).await;
            let (leader, term) = {
                let m = state.raft.metrics();
                let m = m.borrow_watched();
                (m.current_leader, m.current_term)
            };
            if leader != Some(state.node_id) {
                leading_term = None;
                continue;
            }
            if leading_term != Some(term) {
                match state.batcher.write(WriteCommand::LeaseRefreshAll).await {
                    Ok(_) => leading_term = Some(term),
                    Err(e) => {
                        tracing::debug!("lease refresh after election failed: {e}");
                        continue;
                    }
                }
            }
            let due = match state.reader.expired_leases(now_ms(), MAX_EXPIRE_PER_ENTRY) {
                Ok(due) => due,
                Err(e) => {
                    tracing::warn!("reading expired leases failed: {e}");
                    continue;
                }
            };
            if !due.is_empty() {
                let n = due.len();
                match state.batcher.write(WriteCommand::LeaseExpire { ids: due }).await {
                    Ok(_) => tracing::debug!(n, "expired leases"),
                    Err(e) => tracing::debug!("lease expiry failed: {e}"),
                }
            }
        }
    })
}
