//! [`NodeCluster`]: the node as its apps see it (`aspen_app::Cluster`).
//!
//! It holds the node weakly: apps keep it for their whole life, and the node's state must
//! still go away when the node stops (an in-process restart reopens the same files).

use std::sync::{Arc, Weak};

use aspen_app::{BoxFuture, Cluster, Members};
use aspen_core::AspenError;
use aspen_core::api::AppInfo;
use aspen_core::capability::Capability;
use aspen_kv::SharedKv;
use iroh::endpoint::{RecvStream, SendStream};

use crate::local_kv::LocalKv;
use crate::state::NodeState;

pub struct NodeCluster {
    state: Weak<NodeState>,
    node_id: u64,
}

impl NodeCluster {
    pub fn new(state: &Arc<NodeState>) -> Arc<Self> {
        Arc::new(NodeCluster { state: Arc::downgrade(state), node_id: state.node_id })
    }

    fn state(&self) -> Option<Arc<NodeState>> {
        self.state.upgrade()
    }
}

fn stopped() -> AspenError {
    AspenError::Unavailable { reason: "the node is shutting down".into() }
}

impl Cluster for NodeCluster {
    fn node_id(&self) -> u64 {
        self.node_id
    }

    fn is_initialized(&self) -> bool {
        self.state().is_some_and(|s| s.is_initialized())
    }

    fn members(&self) -> Members {
        self.state().map(|s| s.members()).unwrap_or_else(|| Members { node_id: self.node_id, ..Members::default() })
    }

    fn is_member_key(&self, key: &[u8; 32]) -> bool {
        self.state().is_some_and(|s| s.is_member_key(key))
    }

    fn open_member_stream<'a>(
        &'a self,
        node: u64,
        app: &'a str,
    ) -> BoxFuture<'a, Result<(SendStream, RecvStream), AspenError>> {
        Box::pin(async move {
            let state = self.state().ok_or_else(stopped)?;
            let addr = state
                .member_addr(node)
                .ok_or_else(|| AspenError::Membership { reason: format!("node {node} is not a member") })?;
            state.forwarder.open_app_stream(&addr, app).await
        })
    }

    fn recently_unreachable(&self, node: u64) -> bool {
        self.state()
            .and_then(|s| s.member_addr(node).map(|addr| s.forwarder.recently_unreachable(&addr)))
            .unwrap_or(false)
    }

    fn kv_with_rights(&self, caps: Vec<Capability>) -> SharedKv {
        Arc::new(LocalKv::new(self.state.clone(), caps))
    }

    fn root_key(&self) -> Option<[u8; 32]> {
        self.state().and_then(|s| s.security.root())
    }

    fn is_revoked(&self, link: &[u8; 32]) -> bool {
        // A stopped node accepts nothing.
        self.state().is_none_or(|s| s.security.is_revoked(link))
    }

    fn served_apps(&self) -> Vec<AppInfo> {
        self.state().map(|s| s.apps.clone()).unwrap_or_default()
    }
}
