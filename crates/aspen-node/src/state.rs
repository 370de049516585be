//! What every request handler shares: the Raft handle, the applied-state reader, the
//! watch hub and the write/read machinery.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use aspen_app::Members;
use aspen_core::api::{AppInfo, NodeAddr};
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
    /// The replicated root key and revocations, as this node has applied them.
    pub security: Arc<aspen_raft::SecurityView>,
    pub data_dir: std::path::PathBuf,
    /// Raft connections and streams refused to non-members.
    pub raft_refused: Arc<std::sync::atomic::AtomicU64>,
    /// The apps this node serves (known before they start).
    pub apps: Vec<AppInfo>,
    /// Where initializing a cluster writes the root token.
    pub root_token_file: std::path::PathBuf,
    /// The streams being served, and whether the node is stopping.
    pub drain: crate::drain::Drain,
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

    /// The cluster id (from its root key), or empty before the root key is known.
    pub fn cluster_id(&self) -> String {
        match self.security.root().map(|r| iroh::PublicKey::from_bytes(&r)) {
            Some(Ok(pk)) => aspen_net::token::cluster_id_text(&aspen_net::token::cluster_id(&pk)),
            _ => String::new(),
        }
    }

    /// Whether an iroh key belongs to a member (voter or learner) of the cluster.
    pub fn is_member_key(&self, key: &[u8; 32]) -> bool {
        self.member_with_key(key).is_some()
    }

    /// The node id of the member (voter or learner) with this iroh key.
    pub fn member_with_key(&self, key: &[u8; 32]) -> Option<u64> {
        let m = self.raft.metrics();
        let m = m.borrow_watched();
        m.membership_config.membership().nodes().find(|(_, n)| &n.endpoint_id == key).map(|(id, _)| *id)
    }

    /// The membership and leader as this node knows them.
    pub fn members(&self) -> Members {
        let m = self.raft.metrics();
        let m = m.borrow_watched();
        let membership = m.membership_config.membership();
        Members {
            node_id: self.node_id,
            leader: m.current_leader,
            voters: membership.voter_ids().collect::<BTreeSet<u64>>(),
            nodes: membership.nodes().map(|(id, n)| (*id, n.clone())).collect(),
        }
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
