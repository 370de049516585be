//! The receiving side of Raft over iroh: the [`RAFT_ALPN`] protocol handler.
//!
//! Only members of the current configuration (voters and learners) may speak Raft to
//! this node. A node with no membership yet (fresh, waiting to be initialized or
//! added) accepts the first leader that contacts it.

use std::path::PathBuf;
use std::sync::Arc;

use aspen_core::limits::MAX_RAFT_FRAME_BYTES;
use aspen_net::frame::{decode_body, encode_frame_limited, read_frame_bytes_limited};
use futures::StreamExt;
use iroh::endpoint::{Connection, RecvStream, SendStream};
use iroh::protocol::{AcceptError, ProtocolHandler};
use openraft::raft::AppendEntriesRequest;
use openraft::storage::Snapshot;
use tokio::io::AsyncWriteExt;

use crate::Raft;
use crate::types::{RAFT_ALPN, RaftRequest, RaftResponse, StreamAppendReply, TypeConfig};

#[derive(Clone)]
pub struct RaftServer {
    raft: Raft,
    /// Connections and streams refused because the peer is not a member.
    refused: Arc<std::sync::atomic::AtomicU64>,
    incoming_snapshot: PathBuf,
    snapshot_lock: Arc<tokio::sync::Mutex<()>>,
}

impl std::fmt::Debug for RaftServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftServer").finish_non_exhaustive()
    }
}

impl RaftServer {
    pub fn new(raft: Raft, incoming_snapshot: PathBuf) -> Self {
        RaftServer { raft, refused: Default::default(), incoming_snapshot, snapshot_lock: Default::default() }
    }

    /// A shared count of the Raft connections and streams refused to non-members.
    pub fn refused_counter(&self) -> Arc<std::sync::atomic::AtomicU64> {
        self.refused.clone()
    }

    pub fn alpn() -> &'static [u8] {
        RAFT_ALPN
    }

    /// Whether `peer` (an iroh endpoint id) may speak Raft to this node.
    fn is_member(&self, peer: &[u8; 32]) -> bool {
        let metrics = self.raft.metrics();
        let m = openraft::async_runtime::watch::WatchReceiver::borrow_watched(&metrics);
        let membership = m.membership_config.membership();
        let mut nodes = membership.nodes().peekable();
        if nodes.peek().is_none() {
            return true;
        }
        nodes.any(|(_, n)| &n.endpoint_id == peer)
    }

    async fn handle_stream(&self, mut send: SendStream, mut recv: RecvStream, peer: [u8; 32]) -> Result<(), String> {
        let body = read_frame_bytes_limited(&mut recv, MAX_RAFT_FRAME_BYTES)
            .await
            .map_err(|e| e.to_string())?
            .ok_or("stream closed before a request")?;
        let request: RaftRequest = decode_body(&body).map_err(|e| format!("undecodable raft request: {e}"))?;
        let response = match request {
            RaftRequest::StreamAppend => return self.serve_append_stream(send, recv, peer).await,
            RaftRequest::Append(rpc) => match self.raft.append_entries(rpc).await {
                Ok(r) => RaftResponse::Append(r),
                Err(e) => RaftResponse::Error(e.to_string()),
            },
            RaftRequest::Vote(rpc) => match self.raft.vote(rpc).await {
                Ok(r) => RaftResponse::Vote(r),
                Err(e) => RaftResponse::Error(e.to_string()),
            },
            RaftRequest::PreVote(rpc) => match self.raft.pre_vote(rpc).await {
                Ok(r) => RaftResponse::Vote(r),
                Err(e) => RaftResponse::Error(e.to_string()),
            },
            RaftRequest::TransferLeader(req) => match self.raft.handle_transfer_leader(req).await {
                Ok(r) => RaftResponse::TransferLeader(r),
                Err(e) => RaftResponse::Error(e.to_string()),
            },
            RaftRequest::Snapshot { vote, meta } => self.receive_snapshot(&mut recv, vote, meta).await,
        };
        let frame = encode_frame_limited(&response, MAX_RAFT_FRAME_BYTES).map_err(|e| e.to_string())?;
        send.write_all(&frame).await.map_err(|e| e.to_string())?;
        let _ = send.finish();
        Ok(())
    }

    /// Feeds a pipelined append stream into Raft and writes each answer back, in order.
    /// The sender's membership is checked for every request, as for separate RPCs.
    async fn serve_append_stream(&self, mut send: SendStream, recv: RecvStream, peer: [u8; 32]) -> Result<(), String> {
        let this = self.clone();
        let requests = futures::stream::unfold(recv, move |mut recv| {
            let this = this.clone();
            async move {
                let body = match read_frame_bytes_limited(&mut recv, MAX_RAFT_FRAME_BYTES).await {
                    Ok(Some(body)) => body,
                    Ok(None) => return None,
                    Err(e) => {
                        tracing::debug!("append stream read failed: {e}");
                        return None;
                    }
                };
                if !this.is_member(&peer) {
                    this.refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::warn!("ended an append stream from a node that is no longer a member");
                    return None;
                }
                match decode_body::<AppendEntriesRequest<TypeConfig>>(&body) {
                    Ok(request) => Some((request, recv)),
                    Err(e) => {
                        tracing::warn!("undecodable append on an append stream: {e}");
                        None
                    }
                }
            }
        });
        let mut answers = std::pin::pin!(self.raft.stream_append(requests));
        while let Some(answer) = answers.next().await {
            let (reply, last) = match answer {
                Ok(result) => {
                    let last = result.is_err();
                    (StreamAppendReply::Result(result), last)
                }
                Err(fatal) => (StreamAppendReply::Fatal(fatal.to_string()), true),
            };
            let frame = encode_frame_limited(&reply, MAX_RAFT_FRAME_BYTES).map_err(|e| e.to_string())?;
            send.write_all(&frame).await.map_err(|e| e.to_string())?;
            if last {
                break;
            }
        }
        let _ = send.finish();
        Ok(())
    }

    async fn receive_snapshot(
        &self,
        recv: &mut RecvStream,
        vote: crate::types::Vote,
        meta: crate::types::SnapshotMeta,
    ) -> RaftResponse {
        let _guard = self.snapshot_lock.lock().await;
        let result = async {
            let mut file = tokio::fs::File::create(&self.incoming_snapshot).await.map_err(|e| e.to_string())?;
            loop {
                let body = read_frame_bytes_limited(recv, MAX_RAFT_FRAME_BYTES)
                    .await
                    .map_err(|e| e.to_string())?
                    .ok_or("snapshot stream ended without its end marker")?;
                let chunk: serde_bytes::ByteBuf = decode_body(&body).map_err(|e| e.to_string())?;
                if chunk.is_empty() {
                    break;
                }
                file.write_all(&chunk).await.map_err(|e| e.to_string())?;
            }
            file.sync_all().await.map_err(|e| e.to_string())?;
            drop(file);
            let file = tokio::fs::File::open(&self.incoming_snapshot).await.map_err(|e| e.to_string())?;
            self.raft.install_full_snapshot(vote, Snapshot { meta, snapshot: file }).await.map_err(|e| e.to_string())
        }
        .await;
        match result {
            Ok(r) => RaftResponse::Snapshot(r),
            Err(e) => {
                tracing::warn!("snapshot install failed: {e}");
                RaftResponse::Error(e)
            }
        }
    }
}

impl ProtocolHandler for RaftServer {
    async fn accept(&self, connection: Connection) -> Result<(), AcceptError> {
        let peer = *connection.remote_id().as_bytes();
        loop {
            // Checked per stream, not once per connection: a node removed from the
            // membership is refused from its next RPC on, even on a connection it already has.
            if !self.is_member(&peer) {
                tracing::warn!(peer = %connection.remote_id().fmt_short(), "refused raft traffic from a non-member");
                self.refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                connection.close(1u32.into(), b"not a member of this cluster");
                return Ok(());
            }
            let (send, recv) = match connection.accept_bi().await {
                Ok(s) => s,
                Err(_) => return Ok(()),
            };
            if !self.is_member(&peer) {
                self.refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                continue;
            }
            let this = self.clone();
            tokio::spawn(async move {
                if let Err(e) = this.handle_stream(send, recv, peer).await {
                    tracing::debug!("raft stream failed: {e}");
                }
            });
        }
    }
}
