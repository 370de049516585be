//! Typed cluster-administration calls: status, tickets, membership and snapshots.

use aspen_core::api::{ClientRequest, ClientResponse, ClusterStatus, NodeAddr};

use crate::client::Client;
use crate::error::ClientError;

/// Who a node is, whether or not it belongs to a cluster yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    pub node_id: u64,
    pub addr: NodeAddr,
    pub initialized: bool,
}

impl Client {
    /// The answering node's view of the cluster.
    pub async fn status(&self) -> Result<ClusterStatus, ClientError> {
        match self.request(ClientRequest::Status).await? {
            ClientResponse::Status(status) => Ok(status),
            other => Err(ClientError::unexpected("status", &other)),
        }
    }

    /// A ticket naming every member of the cluster.
    pub async fn ticket(&self) -> Result<String, ClientError> {
        match self.request(ClientRequest::Ticket).await? {
            ClientResponse::Ticket { ticket } => Ok(ticket),
            other => Err(ClientError::unexpected("ticket", &other)),
        }
    }

    /// Who the answering node is.
    pub async fn node_info(&self) -> Result<NodeInfo, ClientError> {
        match self.request(ClientRequest::NodeInfo).await? {
            ClientResponse::NodeInfo { node_id, addr, initialized } => Ok(NodeInfo { node_id, addr, initialized }),
            other => Err(ClientError::unexpected("node_info", &other)),
        }
    }

    /// The build the answering node runs. A node older than this request answers with an
    /// error naming a request it cannot read.
    pub async fn node_build(&self) -> Result<aspen_core::api::NodeBuild, ClientError> {
        match self.request(ClientRequest::NodeBuild).await? {
            ClientResponse::Build(build) => Ok(build),
            other => Err(ClientError::unexpected("node_build", &other)),
        }
    }

    /// Initializes a cluster whose voters are the answering node and `members`. Aim it at
    /// one node with [`Client::for_node`].
    pub async fn init(&self, members: Vec<(u64, NodeAddr)>) -> Result<Initialized, ClientError> {
        match self.request(ClientRequest::Init { members }).await? {
            ClientResponse::Initialized { cluster_id, root_token_file } => {
                Ok(Initialized { cluster_id, root_token_file })
            }
            other => Err(ClientError::unexpected("init", &other)),
        }
    }

    /// Adds a node as a learner: it receives the log but does not vote.
    pub async fn add_learner(&self, node_id: u64, addr: NodeAddr) -> Result<(), ClientError> {
        self.admin(ClientRequest::AddLearner { node_id, addr }).await
    }

    /// Makes a learner a voter.
    pub async fn promote(&self, node_id: u64) -> Result<(), ClientError> {
        self.admin(ClientRequest::Promote { node_id }).await
    }

    /// Removes a node from the cluster.
    pub async fn remove(&self, node_id: u64) -> Result<(), ClientError> {
        self.admin(ClientRequest::Remove { node_id }).await
    }

    /// Asks the leader to hand leadership to `node_id`.
    pub async fn transfer_leader(&self, node_id: u64) -> Result<(), ClientError> {
        self.admin(ClientRequest::TransferLeader { node_id }).await
    }

    /// Asks the answering node to snapshot its state machine now.
    pub async fn trigger_snapshot(&self) -> Result<(), ClientError> {
        self.admin(ClientRequest::TriggerSnapshot).await
    }

    /// Admin answers carry nothing beyond success; errors were already turned into `Err`.
    /// Revokes every token whose chain contains the link with hash `id` (a token's id is
    /// its last link's hash); in force on each node once it has applied the revocation.
    pub async fn revoke_token(&self, id: [u8; 32]) -> Result<(), ClientError> {
        self.admin(ClientRequest::RevokeToken { id }).await
    }

    async fn admin(&self, req: ClientRequest) -> Result<(), ClientError> {
        self.request(req).await.map(|_| ())
    }
}

/// What `init` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Initialized {
    /// The new cluster's id (derived from its root key).
    pub cluster_id: String,
    /// Where the initializing node wrote the root token (mode 0600), on its own machine.
    pub root_token_file: String,
}
