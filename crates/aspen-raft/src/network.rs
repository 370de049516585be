//! The sending side of Raft over iroh: one cached QUIC connection per peer. Log
//! replication runs pipelined on one long-lived bi-stream ([`PeerClient::stream_append`]):
//! the leader sends the next append without waiting for the previous answer, and the
//! follower answers in order. Other RPCs take one bi-stream each; snapshots are streamed
//! in chunks.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aspen_core::api::NodeAddr;
use aspen_core::limits::{MAX_RAFT_FRAME_BYTES, SNAPSHOT_CHUNK_BYTES};
use aspen_net::frame::{decode_body, encode_frame_limited, read_frame_bytes_limited};
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use iroh::Endpoint;
use iroh::endpoint::Connection;
use iroh::endpoint::{RecvStream, SendStream};
use openraft::errors::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, StreamAppendResult, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::storage::Snapshot;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

use crate::types::{RAFT_ALPN, RaftRequest, RaftResponse, StreamAppendReply, TypeConfig, Vote};

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

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Send times of the appends not answered yet, oldest first.
type InFlight = Arc<Mutex<VecDeque<Instant>>>;

/// Writes each request of `input` as a frame, recording when it was sent.
async fn write_appends<S>(mut send: SendStream, mut input: S, in_flight: InFlight, target: u64)
where
    S: Stream<Item = AppendEntriesRequest<TypeConfig>> + Unpin,
{
    while let Some(request) = input.next().await {
        let frame = match encode_frame_limited(&request, MAX_RAFT_FRAME_BYTES) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(target, "cannot encode an append: {e}");
                return;
            }
        };
        if let Ok(mut q) = in_flight.lock() {
            q.push_back(Instant::now());
        }
        if let Err(e) = send.write_all(&frame).await {
            tracing::debug!(target, "append stream write failed: {e}");
            return;
        }
    }
    // openraft ended the session: let the follower finish its answers.
    let _ = send.finish();
}

/// Forwards answer frames to the stream side, where waiting on them is cancel-safe.
async fn read_replies(mut recv: RecvStream, tx: mpsc::Sender<Result<Vec<u8>, String>>) {
    loop {
        let item = match read_frame_bytes_limited(&mut recv, MAX_RAFT_FRAME_BYTES).await {
            Ok(Some(body)) => Ok(body),
            Ok(None) => return,
            Err(e) => Err(e.to_string()),
        };
        let failed = item.is_err();
        if tx.send(item).await.is_err() || failed {
            return;
        }
    }
}

/// The answer side of one pipelined append stream.
struct ReplyStream {
    replies: mpsc::Receiver<Result<Vec<u8>, String>>,
    in_flight: InFlight,
    ttl: Duration,
    target: u64,
    conn: Connection,
    done: bool,
    _writer: AbortOnDrop,
    _reader: AbortOnDrop,
}

impl ReplyStream {
    /// The next answer; an append unanswered for `ttl` fails the stream (and drops the
    /// connection, so the next session starts on a fresh one).
    async fn next_reply(&mut self) -> Option<Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>> {
        if self.done {
            return None;
        }
        let target = self.target;
        let item = loop {
            let oldest = self.in_flight.lock().ok().and_then(|q| q.front().copied());
            let wait = oldest.map_or(self.ttl, |t| (t + self.ttl).saturating_duration_since(Instant::now()));
            match tokio::time::timeout(wait, self.replies.recv()).await {
                Ok(Some(Ok(body))) => {
                    if let Ok(mut q) = self.in_flight.lock() {
                        q.pop_front();
                    }
                    break match decode_body::<StreamAppendReply>(&body) {
                        Ok(StreamAppendReply::Result(r)) => Ok(r),
                        Ok(StreamAppendReply::Fatal(e)) => Err(network(format!("node {target} stopped: {e}"))),
                        Err(e) => Err(network(format!("bad append answer from node {target}: {e}"))),
                    };
                }
                Ok(Some(Err(e))) => break Err(network(format!("read from node {target}: {e}"))),
                // The follower finished the stream after the last answer.
                Ok(None) => return None,
                Err(_) if oldest.is_some() => {
                    self.conn.close(0u32.into(), b"append timed out");
                    break Err(unreachable(format!("append to node {target} unanswered after {:?}", self.ttl)));
                }
                // Nothing was in flight: keep waiting.
                Err(_) => {}
            }
        };
        // openraft ends a session at its first error; so does this stream.
        self.done = !matches!(item, Ok(Ok(_)));
        Some(item)
    }
}

impl RaftNetworkV2<TypeConfig> for PeerClient {
    type SnapshotData = tokio::fs::File;

    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        option: RPCOption,
    ) -> BoxFuture<
        's,
        Result<BoxStream<'s, Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>>, RPCError<TypeConfig>>,
    >
    where
        S: Stream<Item = AppendEntriesRequest<TypeConfig>> + Send + Unpin + 'static,
    {
        Box::pin(async move {
            let target = self.target;
            let ttl = option.hard_ttl();
            let open = async {
                let conn = self.connection().await?;
                let (mut send, recv) = conn.open_bi().await.map_err(|e| {
                    self.conn = None;
                    network(format!("open stream to node {target}: {e}"))
                })?;
                let header = encode_frame_limited(&RaftRequest::StreamAppend, MAX_RAFT_FRAME_BYTES)
                    .map_err(|e| network(e.to_string()))?;
                send.write_all(&header).await.map_err(|e| network(format!("send to node {target}: {e}")))?;
                Ok::<_, RPCError<TypeConfig>>((conn, send, recv))
            };
            let (conn, send, recv) = match tokio::time::timeout(ttl, open).await {
                Ok(r) => r?,
                Err(_) => {
                    self.conn = None;
                    return Err(unreachable(format!("opening an append stream to node {target} timed out")));
                }
            };
            let in_flight = InFlight::default();
            let (tx, replies) = mpsc::channel(64);
            let writer = AbortOnDrop(tokio::spawn(write_appends(send, input, in_flight.clone(), target)));
            let reader = AbortOnDrop(tokio::spawn(read_replies(recv, tx)));
            let state =
                ReplyStream { replies, in_flight, ttl, target, conn, done: false, _writer: writer, _reader: reader };
            let stream = futures::stream::unfold(state, |mut st| async move { st.next_reply().await.map(|r| (r, st)) });
            Ok(stream.boxed())
        })
    }

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
                let chunk = encode_frame_limited(&serde_bytes::Bytes::new(&buf[..n]), MAX_RAFT_FRAME_BYTES)
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
