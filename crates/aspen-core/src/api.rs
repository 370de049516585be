//! The client protocol's request and response types (ALPN [`CLIENT_ALPN`]).
//!
//! Each request travels on its own QUIC bi-stream as one length-prefixed postcard frame,
//! so many requests pipeline on one connection. A watch keeps its stream open and the
//! node sends [`WatchMessage`] frames until either side closes it.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::command::{Txn, WriteResult};
use crate::error::AspenError;
use crate::types::{Event, KeyValue, LeaseId};

/// ALPN of the client protocol; the trailing number is the protocol version.
pub const CLIENT_ALPN: &[u8] = b"aspen/client/1";

/// How fresh a read must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum ReadConsistency {
    /// Linearizable: confirmed by the leader with a ReadIndex round.
    #[default]
    Linearizable,
    /// Whatever the contacted node has applied; may be behind.
    Stale,
}

/// A node's address as clients and peers reach it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct NodeAddr {
    /// The node's iroh endpoint id (ed25519 public key).
    pub endpoint_id: [u8; 32],
    pub addrs: Vec<SocketAddr>,
}

/// A range scan, one page at a time.
///
/// A page ends at `limit` entries (0: the node's default) or at the node's byte budget per
/// answer, whichever comes first; `more` then says whether keys remain. With `at_revision`
/// set (to the revision an earlier page reported), the page is read from the same snapshot
/// as that page, so the pages of one scan form one consistent view; a node that no longer
/// holds that snapshot refuses with `AspenError::RevisionUnavailable` and the scan must start
/// over. `keys_only` leaves every value empty (metadata is kept).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScanRequest {
    #[serde(with = "serde_bytes")]
    pub start: Vec<u8>,
    /// Exclusive; empty means no upper bound.
    #[serde(with = "serde_bytes")]
    pub end: Vec<u8>,
    pub limit: u32,
    pub consistency: ReadConsistency,
    pub keys_only: bool,
    /// Read from the snapshot of an earlier page at this revision. `Some(0)` asks the node
    /// to keep a snapshot of this first page for the pages that follow.
    pub at_revision: Option<u64>,
}

impl ScanRequest {
    /// Keys in `[start, end)`, linearizable, the node's default page size.
    pub fn range(start: impl Into<Vec<u8>>, end: impl Into<Vec<u8>>) -> Self {
        ScanRequest {
            start: start.into(),
            end: end.into(),
            limit: 0,
            consistency: ReadConsistency::Linearizable,
            keys_only: false,
            at_revision: None,
        }
    }

    /// Keys starting with `prefix`.
    pub fn prefix(prefix: impl AsRef<[u8]>) -> Self {
        let prefix = prefix.as_ref();
        ScanRequest::range(prefix, crate::keys::prefix_end(prefix))
    }

    pub fn limit(mut self, limit: u32) -> Self {
        self.limit = limit;
        self
    }

    pub fn consistency(mut self, consistency: ReadConsistency) -> Self {
        self.consistency = consistency;
        self
    }

    pub fn keys_only(mut self) -> Self {
        self.keys_only = true;
        self
    }

    /// Every page from one snapshot: the first page asks for one, later pages name it.
    pub fn snapshot(mut self) -> Self {
        self.at_revision = Some(self.at_revision.unwrap_or(0));
        self
    }

    /// Whether this request needs more than the first version of the scan request carries.
    pub fn is_plain(&self) -> bool {
        !self.keys_only && self.at_revision.is_none()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientRequest {
    Get {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        consistency: ReadConsistency,
    },
    /// Keys in `[start, end)` in order, at most `limit`; empty `end` means no upper bound.
    Scan {
        #[serde(with = "serde_bytes")]
        start: Vec<u8>,
        #[serde(with = "serde_bytes")]
        end: Vec<u8>,
        limit: u32,
        consistency: ReadConsistency,
    },
    Put {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        lease: Option<LeaseId>,
    },
    Delete {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
    DeleteRange {
        #[serde(with = "serde_bytes")]
        start: Vec<u8>,
        #[serde(with = "serde_bytes")]
        end: Vec<u8>,
    },
    Txn(Txn),
    LeaseGrant {
        ttl_ms: u64,
    },
    LeaseKeepAlive {
        id: LeaseId,
    },
    LeaseRevoke {
        id: LeaseId,
    },
    LeaseList,
    /// Streams events for keys starting with `prefix` from `start_revision` (0 = from now).
    Watch {
        #[serde(with = "serde_bytes")]
        prefix: Vec<u8>,
        start_revision: u64,
    },
    /// Admin: initialize a cluster whose voters are this node and `members`.
    Init {
        members: Vec<(u64, NodeAddr)>,
    },
    AddLearner {
        node_id: u64,
        addr: NodeAddr,
    },
    Promote {
        node_id: u64,
    },
    Remove {
        node_id: u64,
    },
    TransferLeader {
        node_id: u64,
    },
    TriggerSnapshot,
    Status,
    /// Returns a ticket naming every member of the cluster.
    Ticket,
    /// Who this node is, whether or not it is initialized.
    NodeInfo,
    /// A request another node forwarded to the leader; never forwarded again.
    Forwarded(Box<ClientRequest>),
    /// Presents a capability token for this connection; later requests on it are
    /// checked against it. Sent first on every connection.
    Authenticate {
        #[serde(with = "serde_bytes")]
        token: Vec<u8>,
    },
    /// Admin: revokes every token whose chain contains the link with this hash.
    RevokeToken {
        id: [u8; 32],
    },
    /// Records the cluster root public key. Accepted only from a member node (the one
    /// that ran `init` and holds the key), forwarded to the leader.
    SetClusterRoot {
        public_key: [u8; 32],
    },
    /// A work-queue operation, applied atomically through the log.
    Queue(crate::queue::QueueCommand),
    /// Takes tokens from a cluster-wide token bucket.
    RateLimit(crate::ratelimit::RateLimitTake),
    /// Adds a blob to the receiving node's store: the blob's bytes follow this frame on the
    /// same stream, raw, until the sender finishes it. Answered with `BlobAdded`.
    BlobAdd,
    /// Reads a blob. Answered with `BlobData { size }` followed by exactly `size` raw bytes
    /// on the stream; a node that lacks the blob fetches it from a member first.
    BlobGet {
        hash: [u8; 32],
    },
    /// Node to node (sent `Forwarded`): fetch this blob from the other members now, so an
    /// add or a repair can count this node as a holder; `from` is a member known to hold it,
    /// asked first. Answered with `BlobHas`.
    BlobReplicate {
        hash: [u8; 32],
        from: Option<u64>,
    },
    /// Whether the receiving node holds the blob, complete (no fetch).
    BlobHas {
        hash: [u8; 32],
    },
    /// The complete blobs the receiving node holds, in hash order, starting after `after`.
    BlobList {
        after: Option<[u8; 32]>,
        limit: u32,
    },
    /// Which members hold the blob, asked of each of them now. Answered with `BlobStatus`.
    BlobStatus {
        hash: [u8; 32],
    },
    /// Names a blob with a pin, which keeps it from garbage collection and keeps it
    /// replicated. The blob must be stored somewhere in the cluster. Answered with `Done`.
    BlobPin {
        name: String,
        hash: [u8; 32],
    },
    /// Removes a pin. Answered with `BlobUnpinned`.
    BlobUnpin {
        name: String,
    },
    /// Pins in name order after `after`. Answered with `BlobPins`.
    BlobPins {
        after: Option<String>,
        limit: u32,
    },
    /// A scan with options: keys only, and pages read from one snapshot. Answered with
    /// `Scan`.
    ScanWith(ScanRequest),
    /// The applications this node serves, each with its ALPN and rights. Answered with
    /// `Apps`.
    Apps,
    /// Which build the answering node runs. Answered with `Build`. A rolling upgrade asks
    /// it to know that a restarted node runs the new binary.
    NodeBuild,
}

impl ClientRequest {
    /// Short name used in logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            ClientRequest::Get { .. } => "get",
            ClientRequest::Scan { .. } => "scan",
            ClientRequest::Put { .. } => "put",
            ClientRequest::Delete { .. } => "delete",
            ClientRequest::DeleteRange { .. } => "delete_range",
            ClientRequest::Txn(_) => "txn",
            ClientRequest::LeaseGrant { .. } => "lease_grant",
            ClientRequest::LeaseKeepAlive { .. } => "lease_keepalive",
            ClientRequest::LeaseRevoke { .. } => "lease_revoke",
            ClientRequest::LeaseList => "lease_list",
            ClientRequest::Watch { .. } => "watch",
            ClientRequest::Init { .. } => "init",
            ClientRequest::AddLearner { .. } => "add_learner",
            ClientRequest::Promote { .. } => "promote",
            ClientRequest::Remove { .. } => "remove",
            ClientRequest::TransferLeader { .. } => "transfer_leader",
            ClientRequest::TriggerSnapshot => "trigger_snapshot",
            ClientRequest::Status => "status",
            ClientRequest::Ticket => "ticket",
            ClientRequest::NodeInfo => "node_info",
            ClientRequest::Forwarded(inner) => inner.name(),
            ClientRequest::Authenticate { .. } => "authenticate",
            ClientRequest::RevokeToken { .. } => "revoke_token",
            ClientRequest::SetClusterRoot { .. } => "set_cluster_root",
            ClientRequest::Queue(_) => "queue",
            ClientRequest::RateLimit(_) => "rate_limit",
            ClientRequest::BlobAdd => "blob_add",
            ClientRequest::BlobGet { .. } => "blob_get",
            ClientRequest::BlobHas { .. } => "blob_has",
            ClientRequest::BlobReplicate { .. } => "blob_replicate",
            ClientRequest::BlobList { .. } => "blob_list",
            ClientRequest::BlobStatus { .. } => "blob_status",
            ClientRequest::BlobPin { .. } => "blob_pin",
            ClientRequest::BlobUnpin { .. } => "blob_unpin",
            ClientRequest::BlobPins { .. } => "blob_pins",
            ClientRequest::ScanWith(_) => "scan",
            ClientRequest::Apps => "apps",
            ClientRequest::NodeBuild => "node_build",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientResponse {
    Get {
        kv: Option<KeyValue>,
        revision: u64,
    },
    Scan {
        kvs: Vec<KeyValue>,
        more: bool,
        revision: u64,
    },
    Write(WriteResult),
    Leases {
        leases: Vec<LeaseInfo>,
    },
    Status(ClusterStatus),
    Ticket {
        ticket: String,
    },
    NodeInfo {
        node_id: u64,
        addr: NodeAddr,
        initialized: bool,
    },
    /// The cluster was initialized: its id, and where the initializing node wrote the
    /// root token (mode 0600).
    Initialized {
        cluster_id: String,
        root_token_file: String,
    },
    /// A blob was stored: its BLAKE3 hash and size, and how many nodes hold it now.
    BlobAdded {
        hash: [u8; 32],
        size: u64,
        replicas: u32,
    },
    /// `size` raw bytes of the blob follow this frame.
    BlobData {
        size: u64,
    },
    BlobHas {
        present: bool,
        size: Option<u64>,
    },
    BlobList {
        blobs: Vec<BlobEntry>,
        more: bool,
    },
    /// One entry per member of the cluster.
    BlobStatus {
        holders: Vec<BlobHolder>,
    },
    /// Whether the pin existed.
    BlobUnpinned {
        existed: bool,
    },
    BlobPins {
        pins: Vec<BlobPinEntry>,
        more: bool,
    },
    Done,
    Error(AspenError),
    /// The applications a node serves.
    Apps {
        apps: Vec<AppInfo>,
    },
    /// The build a node runs.
    Build(NodeBuild),
}

/// The build a node runs and since when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeBuild {
    pub node_id: u64,
    /// The node crate's version.
    pub version: String,
    /// The commit it was built from, when the build set `ASPEN_GIT_COMMIT`.
    pub commit: Option<String>,
    /// BLAKE3 of the running executable: the blob hash of the artifact the node was started
    /// from. None when the executable could not be read.
    pub exe_blake3: Option<[u8; 32]>,
    /// Wall-clock start of the node process, in ms since the epoch.
    pub started_ms: u64,
    pub pid: u32,
}

/// An application a node serves beside the KV: its name (the `app` of its capabilities),
/// the ALPN of its protocol and the rights its requests need.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppInfo {
    pub name: String,
    #[serde(with = "serde_bytes")]
    pub alpn: Vec<u8>,
    pub rights: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobEntry {
    pub hash: [u8; 32],
    pub size: u64,
}

/// What one member said of a blob: its size when it holds it complete, or why it could not
/// be asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobHolder {
    pub node_id: u64,
    pub size: Option<u64>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobPinEntry {
    pub name: String,
    pub hash: [u8; 32],
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseInfo {
    pub id: LeaseId,
    pub ttl_ms: u64,
    pub remaining_ms: i64,
}

/// One frame on a watch stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WatchMessage {
    /// The watch is registered; events from `start_revision` on follow.
    Started { start_revision: u64 },
    /// Events of one revision (or several), in revision order.
    Events { events: Vec<Event> },
    /// Sent after the last event of a revision, so idle watchers can record progress.
    Progress { revision: u64 },
    /// The watch ended; a client resumes from `resume_revision` if it wants more.
    Error { error: AspenError },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberStatus {
    pub node_id: u64,
    pub addr: NodeAddr,
    pub voter: bool,
    /// Last log index this member is known to have, when the answering node leads.
    pub matched_index: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    pub node_id: u64,
    pub initialized: bool,
    pub state: String,
    pub leader: Option<u64>,
    pub term: u64,
    pub last_log_index: Option<u64>,
    pub last_applied: Option<u64>,
    pub snapshot_index: Option<u64>,
    pub purged_index: Option<u64>,
    pub revision: u64,
    pub members: Vec<MemberStatus>,
    pub cluster_id: String,
    /// Raft connections and streams this node refused because the peer is not a member.
    pub raft_refused: u64,
}
