//! openraft type configuration and the Raft wire messages.

use aspen_core::api::NodeAddr;
use aspen_core::command::{BatchResult, WriteBatch};
use serde::{Deserialize, Serialize};

/// ALPN of the Raft protocol between nodes.
pub const RAFT_ALPN: &[u8] = b"aspen/raft/1";

openraft::declare_raft_types!(
    pub TypeConfig:
        D = WriteBatch,
        R = BatchResult,
        NodeId = u64,
        Node = NodeAddr,
);

pub type LogId = openraft::type_config::alias::LogIdOf<TypeConfig>;
pub type Vote = openraft::type_config::alias::VoteOf<TypeConfig>;
pub type Entry = openraft::type_config::alias::EntryOf<TypeConfig>;
pub type StoredMembership = openraft::type_config::alias::StoredMembershipOf<TypeConfig>;
pub type SnapshotMeta = openraft::type_config::alias::SnapshotMetaOf<TypeConfig>;

/// A request from one Raft peer to another, one per bi-stream.
#[derive(Debug, Serialize, Deserialize)]
pub enum RaftRequest {
    Append(openraft::raft::AppendEntriesRequest<TypeConfig>),
    Vote(openraft::raft::VoteRequest<TypeConfig>),
    PreVote(openraft::raft::VoteRequest<TypeConfig>),
    /// Followed on the same stream by snapshot chunks (`Vec<u8>` frames, empty = end).
    Snapshot {
        vote: Vote,
        meta: SnapshotMeta,
    },
    TransferLeader(openraft::raft::TransferLeaderRequest<TypeConfig>),
    /// Opens a pipelined append stream: followed on the same stream by
    /// `AppendEntriesRequest` frames, each answered in order by a [`StreamAppendReply`].
    StreamAppend,
}

/// One answer on a pipelined append stream, in request order.
#[derive(Debug, Serialize, Deserialize)]
pub enum StreamAppendReply {
    Result(openraft::raft::StreamAppendResult<TypeConfig>),
    /// The peer's Raft stopped; the stream ends after this.
    Fatal(String),
}

#[derive(Debug, Serialize, Deserialize)]
pub enum RaftResponse {
    Append(openraft::raft::AppendEntriesResponse<TypeConfig>),
    Vote(openraft::raft::VoteResponse<TypeConfig>),
    Snapshot(openraft::raft::SnapshotResponse<TypeConfig>),
    TransferLeader(openraft::raft::TransferLeaderResponse<TypeConfig>),
    /// The peer refused or failed the request.
    Error(String),
}
