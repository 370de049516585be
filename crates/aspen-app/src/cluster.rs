//! [`Cluster`]: the cluster as the node an app runs on sees it.

use std::collections::{BTreeMap, BTreeSet};

use aspen_core::AspenError;
use aspen_core::api::{AppInfo, NodeAddr};
use aspen_core::capability::Capability;
use aspen_kv::{BoxFuture, SharedKv};
use iroh::endpoint::{RecvStream, SendStream};

/// The membership as this node last applied it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Members {
    /// The node asking.
    pub node_id: u64,
    pub leader: Option<u64>,
    pub voters: BTreeSet<u64>,
    /// Every member, voters and learners, with its address.
    pub nodes: BTreeMap<u64, NodeAddr>,
}

impl Members {
    /// Whether the asking node is the leader.
    pub fn is_leader(&self) -> bool {
        self.leader == Some(self.node_id)
    }

    /// Every member but the asking node, in node id order.
    pub fn others(&self) -> Vec<(u64, NodeAddr)> {
        self.nodes.iter().filter(|(id, _)| **id != self.node_id).map(|(id, a)| (*id, a.clone())).collect()
    }
}

/// What a node offers its apps beyond the KV: the membership, streams to other members,
/// and the cluster's token authority. Implemented by `aspen-node`.
pub trait Cluster: Send + Sync + 'static {
    fn node_id(&self) -> u64;

    /// Whether this node belongs to an initialized cluster.
    fn is_initialized(&self) -> bool;

    fn members(&self) -> Members;

    /// Whether an iroh key is a current member's (voter or learner).
    fn is_member_key(&self, key: &[u8; 32]) -> bool;

    /// Opens a stream to app `app` on member `node`, over the members-only ALPN, with the
    /// routing answered (an app the member does not serve is an error here).
    fn open_member_stream<'a>(
        &'a self,
        node: u64,
        app: &'a str,
    ) -> BoxFuture<'a, Result<(SendStream, RecvStream), AspenError>>;

    /// Whether connecting to `node` failed lately: choices among members try it last.
    fn recently_unreachable(&self, node: u64) -> bool;

    /// A node-local KV that acts with exactly `caps` (a caller's token): the same checks a
    /// remote client with that token meets.
    fn kv_with_rights(&self, caps: Vec<Capability>) -> SharedKv;

    /// The cluster's root public key, once this node has applied it.
    fn root_key(&self) -> Option<[u8; 32]>;

    /// Whether a token link has been revoked (as this node has applied revocations).
    fn is_revoked(&self, link: &[u8; 32]) -> bool;

    /// The apps this node serves.
    fn served_apps(&self) -> Vec<AppInfo>;
}
