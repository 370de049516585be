//! The sending side of Raft over iroh: one cached QUIC connection per peer, one
//! bi-stream per RPC, snapshots streamed in chunks.

use std::time::Duration;

use aspen_core::api::NodeAddr;
use aspen_core::limits::{MAX_RAFT_FRAME_BYTES, SNAPSHOT_CHUNK_BYTES};
use aspen_net::frame::{decode_body, encode_frame_limited, read_frame_bytes_limited};
use iroh::Endpoint;
use iroh::endpoint::Connection;
use openraft::errors::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest, TransferLeaderResponse,
    VoteRequest, VoteResponse,
};
use openraft::storage::Snapshot;
use tokio::io::AsyncReadExt;

use crate::types::{RAFT_ALPN, RaftRequest, RaftResponse, TypeConfig, Vote};

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RpcFailure(pub String);

/// Creates a [`PeerClient`] per target node.
#[derive(Clone)]
pub struct NetworkFactory {
    endpoint: Endpoint,
}

impl NetworkFactory {
    pub fn new(endpoint: Endpoint) -> Self {
        NetworkFactory { endpoint }
    }
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerClient;

    async fn new_client(&mut self, target: u64, node: &NodeAddr) -> PeerClient {
        PeerClient { endpoint: self.endpoint.clone(), target, addr: node.clone(), conn: None }
    }
}

pub struct PeerClient {
    endpoint: Endpoint,
    target: u64,
    addr: NodeAddr,
    conn: Option<Connection>,
}

type Rpc<T> = Result<T, RPCError<TypeConfig>>;

fn unreachable(msg: String) -> RPCError<TypeConfig> {
    RPCError::Unreachable(Unreachable::new(&RpcFailure(msg)))
}

fn network(msg: String) -> RPCError<TypeConfig> {
    RPCError::Network(NetworkError::new(&RpcFailure(msg)))
}

impl PeerClient {
    async fn connection(&mut self) -> Rpc<Connection> {
        if let Some(c) = &self.conn
            && c.close_reason().is_none()
        {
            return Ok(c.clone());
        }
        let addr = aspen_net::endpoint_addr(&self.addr)
            .map_err(|e| unreachable(format!("bad address of node {}: {e}", self.target)))?;
        let conn = self
            .endpoint
            .connect(addr, RAFT_ALPN)
            .await
            .map_err(|e| unreachable(format!("connect to node {}: {e}", self.target)))?;
        self.conn = Some(conn.clone());
        Ok(conn)
    }

    async fn call(&mut self, request: RaftRequest, ttl: Duration) -> Rpc<RaftResponse> {
        let target = self.target;
        let fut = async {
            let conn = self.connection().await?;
            let (mut send, mut recv) = conn.open_bi().await.map_err(|e| {
                self.conn = None;
                network(format!("open stream to node {target}: {e}"))
            })?;
            let frame = encode_frame_limited(&request, MAX_RAFT_FRAME_BYTES).map_err(|e| network(e.to_string()))?;
            send.write_all(&frame).await.map_err(|e| network(format!("send to node {target}: {e}")))?;
            let _ = send.finish();
            let body = read_frame_bytes_limited(&mut recv, MAX_RAFT_FRAME_BYTES)
                .await
                .map_err(|e| network(format!("read from node {target}: {e}")))?
                .ok_or_else(|| network(format!("node {target} closed the stream without answering")))?;
            decode_body::<RaftResponse>(&body).map_err(|e| network(format!("bad answer from node {target}: {e}")))
        };
        match tokio::time::timeout(ttl, fut).await {
            Ok(r) => r,
            Err(_) => {
                // A stalled connection (paused or partitioned peer) is dropped so the next
                // RPC starts afresh.
                self.conn = None;
                Err(unreachable(format!("rpc to node {target} timed out after {ttl:?}")))
            }
        }
    }
}

fn unexpected(resp: RaftResponse) -> RPCError<TypeConfig> {
    match resp {
        RaftResponse::Error(e) => network(format!("peer refused: {e}")),
        other => network(format!("unexpected answer {other:?}")),
    }
}

impl RaftNetworkV2<TypeConfig> for PeerClient {
    type SnapshotData = tokio::fs::File;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Rpc<AppendEntriesResponse<TypeConfig>> {
        match self.call(RaftRequest::Append(rpc), option.hard_ttl()).await? {
            RaftResponse::Append(r) => Ok(r),
            other => Err(unexpected(other)),
        }
    }

    async fn vote(&mut self, rpc: VoteRequest<TypeConfig>, option: RPCOption) -> Rpc<VoteResponse<TypeConfig>> {
        match self.call(RaftRequest::Vote(rpc), option.hard_ttl()).await? {
            RaftResponse::Vote(r) => Ok(r),
            other => Err(unexpected(other)),
        }
    }

    async fn pre_vote(&mut self, rpc: VoteRequest<TypeConfig>, option: RPCOption) -> Rpc<VoteResponse<TypeConfig>> {
        match self.call(RaftRequest::PreVote(rpc), option.hard_ttl()).await? {
            RaftResponse::Vote(r) => Ok(r),
            other => Err(unexpected(other)),
        }
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Rpc<TransferLeaderResponse<TypeConfig>> {
        match self.call(RaftRequest::TransferLeader(req), option.hard_ttl()).await? {
            RaftResponse::TransferLeader(r) => Ok(r),
            other => Err(unexpected(other)),
        }
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot<
            openraft::type_config::alias::CommittedLeaderIdOf<TypeConfig>,
            u64,
            NodeAddr,
            tokio::fs::File,
        >,
        cancel: impl std::future::Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let target = self.target;
        let stream_err = |msg: String| StreamingError::Network(NetworkError::new(&RpcFailure(msg)));
        let send_all = async {
            let conn = self.connection().await.map_err(|e| stream_err(e.to_string()))?;
            let (mut send, mut recv) = conn.open_bi().await.map_err(|e| stream_err(format!("open stream: {e}")))?;
            let header = RaftRequest::Snapshot { vote, meta: snapshot.meta.clone() };
            let frame = encode_frame_limited(&header, MAX_RAFT_FRAME_BYTES).map_err(|e| stream_err(e.to_string()))?;
            send.write_all(&frame).await.map_err(|e| stream_err(format!("send: {e}")))?;
            let mut file = snapshot.snapshot;
            let mut buf = vec![0u8; SNAPSHOT_CHUNK_BYTES];
            let mut sent = 0u64;
            loop {
                let n = file.read(&mut buf).await.map_err(|e| stream_err(format!("read snapshot file: {e}")))?;
                let chunk = encode_frame_limited(&buf[..n].to_vec(), MAX_RAFT_FRAME_BYTES)
                    .map_err(|e| stream_err(e.to_string()))?;
                send.write_all(&chunk).await.map_err(|e| stream_err(format!("send chunk: {e}")))?;
                sent += n as u64;
                if n == 0 {
                    break;
                }
            }
            let _ = send.finish();
            tracing::info!(target, bytes = sent, "sent snapshot");
            let body = read_frame_bytes_limited(&mut recv, MAX_RAFT_FRAME_BYTES)
                .await
                .map_err(|e| stream_err(format!("read answer: {e}")))?
                .ok_or_else(|| stream_err("peer closed the snapshot stream".into()))?;
            match decode_body::<RaftResponse>(&body).map_err(|e| stream_err(e.to_string()))? {
                RaftResponse::Snapshot(r) => Ok(r),
                other => Err(stream_err(format!("unexpected answer {other:?}"))),
            }
        };
        // Snapshots are large: allow far longer than one RPC, but never forever.
        let limit = option.hard_ttl().max(Duration::from_secs(600));
        tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            r = tokio::time::timeout(limit, send_all) => match r {
                Ok(r) => r,
                Err(_) => {
                    self.conn = None;
                    Err(stream_err(format!("snapshot to node {target} timed out")))
                }
            },
        }
    }
}
