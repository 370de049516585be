//! What every request handler shares: the Raft handle, the applied-state reader, the
//! watch hub and the write/read machinery.

use std::sync::Arc;
use std::time::Duration;

use aspen_core::api::NodeAddr;
use aspen_core::error::AspenError;
use aspen_raft::watch::WatchHub;
use aspen_raft::{KvReader, Raft};
use openraft::async_runtime::watch::WatchReceiver;

use crate::batcher::Batcher;
use crate::forward::Forwarder;
use crate::read_gate::ReadGate;

pub struct NodeState {
    pub node_id: u64,
    pub addr: NodeAddr,
    pub raft: Raft,
    pub reader: KvReader,
    pub hub: Arc<WatchHub>,
    pub batcher: Batcher,
    pub reads: ReadGate,
    pub forwarder: Forwarder,
}

/// Where a request should be served.
pub enum Route {
    Local,
    Leader(u64, NodeAddr),
}

impl NodeState {
    pub fn is_initialized(&self) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow_watched();
        m.membership_config.membership().nodes().next().is_some()
    }

    pub fn member_addr(&self, node_id: u64) -> Option<NodeAddr> {
        let m = self.raft.metrics();
        let m = m.borrow_watched();
        m.membership_config.membership().get_node(&node_id).cloned()
    }

    /// Decides whether this node serves a leader-only request or forwards it, waiting
    /// (bounded) for an election in progress to produce a leader.
    pub async fn route_to_leader(&self) -> Result<Route, AspenError> {
        if !self.is_initialized() {
            return Err(AspenError::NotInitialized);
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let leader = self.raft.metrics().borrow_watched().current_leader;
            match leader {
                Some(id) if id == self.node_id => return Ok(Route::Local),
                Some(id) => {
                    if let Some(addr) = self.member_addr(id) {
                        return Ok(Route::Leader(id, addr));
                    }
                }
                None => {}
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(AspenError::Unavailable {
                    reason: "no leader elected (is a majority of voters up?)".into(),
                });
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}
