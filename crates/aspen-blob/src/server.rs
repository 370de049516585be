//! Serving the blob app's protocol on a node: add (raw bytes follow the request on its
//! stream), batch add, get (raw bytes follow the answer, whole or a range), has, list,
//! status and the named pins; and the calls other members' blob apps make. Memory stays
//! constant whatever a blob's size: bytes pass through in QUIC-sized chunks.

use std::sync::Arc;

use aspen_app::{AppHandler, BoxFuture, Caller};
use aspen_core::AspenError;
use aspen_core::api::ReadConsistency;
use aspen_core::capability::Capability;
use aspen_core::command::{Compare, CompareOp, CompareTarget, Txn, TxnOp};
use aspen_core::keys::{key_successor, prefix_end};
use aspen_kv::{Kv, KvExt};
use bytes::Bytes;
use futures::StreamExt;
use iroh::endpoint::{RecvStream, SendStream};
use iroh::protocol::DynProtocolHandler;
use iroh_blobs::Hash;
use tracing::Instrument;

use crate::protocol::{
    Added, BlobRequest, BlobResponse, ByteRange, MAX_BATCH, MAX_BATCH_ITEM_BYTES, MemberAnswer, MemberCall, PinEntry,
    READ, WRITE, list_limit,
};
use crate::records::{BlobHash, pin_hash, pin_key, pin_name, pin_ops, unpin_ops, validate_pin_name};
use crate::rights;
use crate::store::{BlobNode, MemberBlobs, kv_error};

/// Largest chunk read from a stream at once.
const CHUNK_BYTES: usize = 256 * 1024;
/// Attempts of a pin or unpin that lost a race with another writer of the same pin.
const PIN_ATTEMPTS: usize = 8;

/// The blob app, started on one node.
pub struct BlobHandler {
    node: Arc<BlobNode>,
    repair: tokio::task::JoinHandle<()>,
}

impl BlobHandler {
    pub fn new(node: Arc<BlobNode>) -> Self {
        let repair = crate::replication::spawn_repair(node.clone());
        BlobHandler { node, repair }
    }
}

impl AppHandler for BlobHandler {
    fn serve(self: Arc<Self>, caller: Caller, send: SendStream, recv: RecvStream) -> BoxFuture<'static, ()> {
        Box::pin(async move { serve_stream(&self.node, caller, send, recv).await })
    }

    fn serve_member(self: Arc<Self>, from: u64, send: SendStream, recv: RecvStream) -> BoxFuture<'static, ()> {
        Box::pin(async move { serve_member(&self.node, from, send, recv).await })
    }

    fn protocols(&self) -> Vec<(Vec<u8>, Box<dyn DynProtocolHandler>)> {
        let members = MemberBlobs::new(&self.node.store, self.node.ctx.cluster.clone());
        vec![(iroh_blobs::ALPN.to_vec(), Box::new(members))]
    }

    fn shutdown(&self) -> BoxFuture<'static, ()> {
        self.repair.abort();
        let store = self.node.store.clone();
        Box::pin(async move {
            let _ = store.shutdown().await;
        })
    }
}

async fn respond(send: &mut SendStream, response: BlobResponse) {
    let _ = aspen_net::write_frame(send, &response).await;
    let _ = send.finish();
}

async fn serve_stream(node: &BlobNode, caller: Caller, mut send: SendStream, mut recv: RecvStream) {
    let request = match aspen_net::read_frame::<BlobRequest>(&mut recv).await {
        Ok(Some(r)) => r,
        Ok(None) => return,
        Err(e) => {
            let error = match e {
                aspen_net::FrameError::TooLarge { len, max } => AspenError::FrameTooLarge { len, max },
                aspen_net::FrameError::Decode(d) => AspenError::UnknownRequest { detail: format!("blob request: {d}") },
                other => AspenError::invalid(other.to_string()),
            };
            respond(&mut send, BlobResponse::Error(error)).await;
            return;
        }
    };
    let span = tracing::debug_span!("blob", op = request.name());
    serve_request(node, caller, request, send, recv).instrument(span).await
}

async fn serve_request(
    node: &BlobNode,
    caller: Caller,
    request: BlobRequest,
    mut send: SendStream,
    mut recv: RecvStream,
) {
    let caps = match caller.capabilities() {
        Ok(caps) => caps,
        Err(e) => {
            let _ = recv.stop(0u32.into());
            respond(&mut send, BlobResponse::Error(e)).await;
            return;
        }
    };
    if let BlobRequest::Get { hash, range } = request {
        get(node, &caps, hash, range, &mut send).await;
        return;
    }
    let response = handle(node, &caps, request, &mut recv).await.unwrap_or_else(|e| {
        let _ = recv.stop(0u32.into());
        BlobResponse::Error(e)
    });
    respond(&mut send, response).await;
}

async fn handle(
    node: &BlobNode,
    caps: &[Capability],
    request: BlobRequest,
    recv: &mut RecvStream,
) -> Result<BlobResponse, AspenError> {
    let kv = &*node.ctx.kv;
    match request {
        BlobRequest::Add { expected } => {
            rights::require_some(caps, WRITE)?;
            add(node, recv, expected).await.map(BlobResponse::Added)
        }
        BlobRequest::AddBatch { count } => {
            rights::require_some(caps, WRITE)?;
            add_batch(node, recv, count).await.map(|blobs| BlobResponse::AddedBatch { blobs })
        }
        BlobRequest::Has { hash } => {
            rights::require_read_blob(kv, caps, &hash).await?;
            node.cluster_has(&hash).await.map(|size| BlobResponse::Has { size })
        }
        BlobRequest::List { after, limit } => {
            rights::require(caps, READ, b"")?;
            let (blobs, more) = node.cluster_list(after, list_limit(limit)?).await?;
            Ok(BlobResponse::List { blobs, more })
        }
        BlobRequest::Status { hash } => {
            rights::require_read_blob(kv, caps, &hash).await?;
            node.status(&hash).await.map(|holders| BlobResponse::Status { holders })
        }
        BlobRequest::Pin { name, hash } => {
            validate_pin_name(&name)?;
            rights::require(caps, WRITE, name.as_bytes())?;
            pin(node, &name, &hash).await.map(|()| BlobResponse::Done)
        }
        BlobRequest::Unpin { name } => {
            validate_pin_name(&name)?;
            rights::require(caps, WRITE, name.as_bytes())?;
            unpin(kv, &name).await.map(|existed| BlobResponse::Unpinned { existed })
        }
        BlobRequest::Pins { prefix, after, limit } => {
            rights::require(caps, READ, prefix.as_bytes())?;
            let (pins, more) = pins(kv, &prefix, after.as_deref(), list_limit(limit)?).await?;
            Ok(BlobResponse::Pins { pins, more })
        }
        BlobRequest::Get { .. } => Err(AspenError::internal("a get is answered on its own stream")),
    }
}

/// Streams the rest of `recv` into the store and keeps it (see [`BlobNode::add_stream`]). A
/// client that stops before finishing its side of the stream adds nothing.
async fn add(node: &BlobNode, recv: &mut RecvStream, expected: Option<BlobHash>) -> Result<Added, AspenError> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(8);
    let pump = async move {
        loop {
            match recv.read_chunk(CHUNK_BYTES).await {
                Ok(Some(bytes)) => {
                    if tx.send(Ok(bytes)).await.is_err() {
                        return;
                    }
                }
                Ok(None) => return,
                Err(e) => {
                    let _ = tx.send(Err(std::io::Error::other(format!("the upload broke off: {e}")))).await;
                    return;
                }
            }
        }
    };
    let chunks = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
    let ((), added) = tokio::join!(pump, node.add_stream(chunks, expected));
    added
}

/// Reads `count` length-prefixed blobs from `recv`, stores them, and keeps them as [`add`]
/// does, with one replication round for all.
async fn add_batch(node: &BlobNode, recv: &mut RecvStream, count: u32) -> Result<Vec<Added>, AspenError> {
    if count > MAX_BATCH {
        return Err(AspenError::invalid(format!("a batch of {count} blobs is over MAX_BATCH = {MAX_BATCH}")));
    }
    let mut kept = Vec::with_capacity(count as usize);
    for i in 0..count {
        let mut len = [0u8; 8];
        recv.read_exact(&mut len).await.map_err(|e| AspenError::invalid(format!("batch item {i}: {e}")))?;
        let len = u64::from_be_bytes(len);
        if len > MAX_BATCH_ITEM_BYTES {
            return Err(AspenError::invalid(format!(
                "batch item {i} is {len} bytes, over MAX_BATCH_ITEM_BYTES = {MAX_BATCH_ITEM_BYTES}; add it alone"
            )));
        }
        let mut bytes = vec![0u8; len as usize];
        recv.read_exact(&mut bytes).await.map_err(|e| AspenError::invalid(format!("batch item {i}: {e}")))?;
        let tag = node
            .store
            .add_bytes(bytes)
            .temp_tag()
            .await
            .map_err(|e| AspenError::invalid(format!("batch item {i} was not stored: {e}")))?;
        kept.push((tag, len));
    }
    if recv.read_chunk(1).await.is_ok_and(|c| c.is_some()) {
        return Err(AspenError::invalid(format!("more bytes follow the {count} blobs the batch announced")));
    }
    for (tag, _) in &kept {
        node.persist(tag.hash()).await?;
    }
    let blobs: Vec<(BlobHash, u64)> = kept.iter().map(|(tag, size)| (*tag.hash().as_bytes(), *size)).collect();
    let marks = futures::future::join_all(blobs.iter().map(|(hash, _)| node.mark_fresh(hash))).await;
    marks.into_iter().collect::<Result<Vec<()>, _>>()?;
    let replicas = if blobs.is_empty() { Vec::new() } else { node.replicate_added(&blobs).await? };
    drop(kept);
    Ok(blobs
        .iter()
        .zip(replicas)
        .map(|((hash, size), replicas)| Added { hash: *hash, size: *size, replicas })
        .collect())
}

/// Names `hash` with pin `name` (replacing what the name pinned before), with its index
/// entry, in one transaction. The blob must be somewhere in the cluster: it is fetched to
/// this node first if need be.
async fn pin(node: &BlobNode, name: &str, hash: &BlobHash) -> Result<(), AspenError> {
    let (_size, _tag) = node.ensure_local(Hash::from_bytes(*hash), None).await?;
    let kv = &*node.ctx.kv;
    let key = pin_key(name);
    for _ in 0..PIN_ATTEMPTS {
        let current = kv.get(&key, ReadConsistency::Linearizable).await.map_err(kv_error)?;
        let replaced = current.as_ref().and_then(|kv| pin_hash(&kv.value));
        let success = pin_ops(name, hash, replaced.as_ref());
        let txn = Txn { compare: vec![unchanged(&key, current.as_ref())], success, failure: Vec::new() };
        match kv.txn(txn).await {
            Ok(r) if r.succeeded => return Ok(()),
            Ok(_) => continue,
            // Pinning again is harmless: look again and retry.
            Err(e) if e.is_transient() => continue,
            Err(e) => return Err(kv_error(e)),
        }
    }
    Err(AspenError::Unavailable { reason: format!("pin {name:?} kept changing under this pin; try again") })
}

/// Removes pin `name` and its index entry in one transaction; whether it existed.
async fn unpin(kv: &dyn Kv, name: &str) -> Result<bool, AspenError> {
    let key = pin_key(name);
    let mut existed = None;
    for _ in 0..PIN_ATTEMPTS {
        let current = kv.get(&key, ReadConsistency::Linearizable).await.map_err(kv_error)?;
        let Some(current) = current else { return Ok(existed.unwrap_or(false)) };
        existed.get_or_insert(true);
        let success = match pin_hash(&current.value) {
            Some(hash) => unpin_ops(name, &hash),
            None => vec![TxnOp::Delete { key: key.clone() }],
        };
        let txn = Txn { compare: vec![unchanged(&key, Some(&current))], success, failure: Vec::new() };
        match kv.txn(txn).await {
            Ok(r) if r.succeeded => return Ok(true),
            Ok(_) => continue,
            // Whether it applied or not, the next look tells.
            Err(e) if e.is_transient() => continue,
            Err(e) => return Err(kv_error(e)),
        }
    }
    Err(AspenError::Unavailable { reason: format!("pin {name:?} kept changing under this unpin; try again") })
}

/// A compare that holds while `key` is as it was read (absent, or at that mod revision).
fn unchanged(key: &[u8], read: Option<&aspen_core::KeyValue>) -> Compare {
    Compare {
        key: key.to_vec(),
        op: CompareOp::Equal,
        target: CompareTarget::ModRevision(read.map_or(0, |kv| kv.mod_revision)),
    }
}

/// Pins whose names start with `prefix`, in name order after `after`, read linearizably.
async fn pins(kv: &dyn Kv, prefix: &str, after: Option<&str>, limit: u32) -> Result<(Vec<PinEntry>, bool), AspenError> {
    let range_start = pin_key(prefix);
    let start = match after {
        Some(after) => key_successor(&pin_key(after)).max(range_start.clone()),
        None => range_start.clone(),
    };
    let end = prefix_end(&range_start);
    let page = kv.scan(start, end, limit, ReadConsistency::Linearizable).await.map_err(kv_error)?;
    let pins = page
        .kvs
        .iter()
        .filter_map(|kv| Some(PinEntry { name: pin_name(&kv.key)?.to_string(), hash: pin_hash(&kv.value)? }))
        .collect();
    Ok((pins, page.more))
}

/// Answers `Data` and the bytes (the whole blob, or the range), fetching the blob from a
/// member first if this node lacks it. A failure before the header is an error frame;
/// after it, the stream is reset so the client cannot mistake a short blob for a whole one.
async fn get(node: &BlobNode, caps: &[Capability], hash: BlobHash, range: Option<ByteRange>, send: &mut SendStream) {
    let offset = range.map_or(0, |r| r.offset);
    let opened = async {
        rights::require_read_blob(&*node.ctx.kv, caps, &hash).await?;
        crate::local::read_range(node, hash, offset, range.map_or(u64::MAX, |r| r.len)).await
    };
    let mut chunks = match opened.await {
        Ok(chunks) => chunks,
        Err(e) => {
            respond(send, BlobResponse::Error(e)).await;
            return;
        }
    };
    let (size, len) = (chunks.blob_size(), chunks.remaining());
    if aspen_net::write_frame(send, &BlobResponse::Data { size, offset, len }).await.is_err() {
        return;
    }
    let mut sent = 0u64;
    while let Some(chunk) = chunks.next().await {
        match chunk {
            Ok(data) => {
                sent += data.len() as u64;
                if send.write_chunk(data).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                tracing::warn!(hash = %Hash::from_bytes(hash), "reading a blob failed: {e}");
                break;
            }
        }
    }
    if sent == len {
        let _ = send.finish();
    } else {
        tracing::warn!(hash = %Hash::from_bytes(hash), sent, len, "blob read ended early; resetting the stream");
        let _ = send.reset(1u32.into());
    }
}

/// A call from another member's blob app.
async fn serve_member(node: &BlobNode, from: u64, mut send: SendStream, mut recv: RecvStream) {
    let call = match aspen_net::read_frame::<MemberCall>(&mut recv).await {
        Ok(Some(c)) => c,
        Ok(None) => return,
        Err(e) => {
            let error = AspenError::UnknownRequest { detail: format!("blob member call: {e}") };
            let _ = aspen_net::write_frame(&mut send, &MemberAnswer::Error(error)).await;
            let _ = send.finish();
            return;
        }
    };
    let answer = match call {
        MemberCall::Replicate { hash, from: holder } => {
            async {
                let hash = Hash::from_bytes(hash);
                let (size, _tag) = node.ensure_local(hash, holder.or(Some(from))).await?;
                node.persist(hash).await?;
                Ok(MemberAnswer::Held { size: Some(size) })
            }
            .await
        }
        MemberCall::Has { hash } => {
            node.complete_size(Hash::from_bytes(hash)).await.map(|size| MemberAnswer::Held { size })
        }
        MemberCall::List { after, limit } => match list_limit(limit) {
            Ok(limit) => node.local_list(after, limit).await.map(|(blobs, more)| MemberAnswer::List { blobs, more }),
            Err(e) => Err(e),
        },
    };
    let answer = answer.unwrap_or_else(MemberAnswer::Error);
    let _ = aspen_net::write_frame(&mut send, &answer).await;
    let _ = send.finish();
}
