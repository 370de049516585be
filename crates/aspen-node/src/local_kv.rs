//! [`LocalKv`]: the KV interface served inside the node, with no network hop.
//!
//! Every call goes through the same path as a client request on this node: the same
//! capability check (against the rights it was made with: an app's own prefix, or a
//! caller's token), the same limits, the same placement (writes and linearizable reads on
//! the leader, forwarded over the members-only ALPN when this node does not lead) and the
//! same read gate. Watches read this node's watch hub directly and resume themselves when
//! they fall behind.

use std::sync::{Arc, Weak};
use std::time::Duration;

use aspen_core::api::{ClientRequest, ClientResponse, LeaseInfo, ReadConsistency, ScanRequest};
use aspen_core::capability::{Capability, first_unmet, required};
use aspen_core::command::{Txn, WriteResult};
use aspen_core::queue::{QueueCommand, QueueResult};
use aspen_core::ratelimit::{RateLimitResult, RateLimitTake};
use aspen_core::{AspenError, Event, LeaseId};
use aspen_kv::{
    BoxFuture, DeleteResult, GetResult, Kv, KvError, KvWatch, LeaseGrant, LeaseRevoked, PutResult, ScanPage,
    TxnResponse,
};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;

use crate::state::NodeState;

pub struct LocalKv {
    state: Weak<NodeState>,
    caps: Vec<Capability>,
}

impl LocalKv {
    pub fn new(state: Weak<NodeState>, caps: Vec<Capability>) -> Self {
        LocalKv { state, caps }
    }

    fn state(&self) -> Result<Arc<NodeState>, KvError> {
        self.state
            .upgrade()
            .ok_or_else(|| AspenError::Unavailable { reason: "the node is shutting down".into() }.into())
    }

    /// The capability check a client with these rights would meet.
    fn authorize(&self, request: &ClientRequest) -> Result<(), KvError> {
        let needs = required(request).ok_or_else(|| AspenError::PermissionDenied {
            reason: format!("{} is not a KV request", request.name()),
        })?;
        match first_unmet(&self.caps, &needs) {
            None => Ok(()),
            Some(need) => Err(AspenError::PermissionDenied {
                reason: format!("the app's rights do not allow {} ({})", need.describe(), request.name()),
            }
            .into()),
        }
    }

    async fn call(&self, request: ClientRequest) -> Result<ClientResponse, KvError> {
        self.authorize(&request)?;
        let state = self.state()?;
        match crate::ops::dispatch(&state, request, false).await {
            ClientResponse::Error(e) => Err(e.into()),
            other => Ok(other),
        }
    }
}

fn unexpected(request: &str, response: &ClientResponse) -> KvError {
    KvError::Protocol(format!("unexpected answer to {request}: {response:?}"))
}

fn write_result(response: ClientResponse, request: &str) -> Result<WriteResult, KvError> {
    match response {
        ClientResponse::Write(w) => Ok(w),
        other => Err(unexpected(request, &other)),
    }
}

fn lease_grant(w: WriteResult, request: &str) -> Result<LeaseGrant, KvError> {
    match w {
        WriteResult::Lease { id, ttl_ms, expires_at_ms } => {
            Ok(LeaseGrant { id, ttl: Duration::from_millis(ttl_ms), expires_at_ms })
        }
        other => Err(KvError::Protocol(format!("unexpected result of {request}: {other:?}"))),
    }
}

fn delete_result(w: WriteResult) -> Result<DeleteResult, KvError> {
    match w {
        WriteResult::Delete { revision, deleted } => Ok(DeleteResult { revision, deleted }),
        other => Err(KvError::Protocol(format!("unexpected result of a delete: {other:?}"))),
    }
}

impl Kv for LocalKv {
    fn get_with_revision<'a>(
        &'a self,
        key: &'a [u8],
        consistency: ReadConsistency,
    ) -> BoxFuture<'a, Result<GetResult, KvError>> {
        Box::pin(async move {
            match self.call(ClientRequest::Get { key: key.to_vec(), consistency }).await? {
                ClientResponse::Get { kv, revision } => Ok(GetResult { kv, revision }),
                other => Err(unexpected("get", &other)),
            }
        })
    }

    fn scan_range(&self, request: ScanRequest) -> BoxFuture<'_, Result<ScanPage, KvError>> {
        Box::pin(async move {
            match self.call(ClientRequest::ScanWith(request)).await? {
                ClientResponse::Scan { kvs, more, revision } => Ok(ScanPage { kvs, more, revision }),
                other => Err(unexpected("scan", &other)),
            }
        })
    }

    fn put_with<'a>(
        &'a self,
        key: &'a [u8],
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> BoxFuture<'a, Result<PutResult, KvError>> {
        Box::pin(async move {
            match write_result(self.call(ClientRequest::Put { key: key.to_vec(), value, lease }).await?, "put")? {
                WriteResult::Put { revision, prev } => Ok(PutResult { revision, prev }),
                other => Err(KvError::Protocol(format!("unexpected result of a put: {other:?}"))),
            }
        })
    }

    fn delete_range<'a>(&'a self, start: &'a [u8], end: &'a [u8]) -> BoxFuture<'a, Result<DeleteResult, KvError>> {
        Box::pin(async move {
            let request = ClientRequest::DeleteRange { start: start.to_vec(), end: end.to_vec() };
            delete_result(write_result(self.call(request).await?, "delete_range")?)
        })
    }

    fn delete_key<'a>(&'a self, key: &'a [u8]) -> BoxFuture<'a, Result<DeleteResult, KvError>> {
        Box::pin(async move {
            delete_result(write_result(self.call(ClientRequest::Delete { key: key.to_vec() }).await?, "delete")?)
        })
    }

    fn txn(&self, txn: Txn) -> BoxFuture<'_, Result<TxnResponse, KvError>> {
        Box::pin(async move {
            match write_result(self.call(ClientRequest::Txn(txn)).await?, "txn")? {
                WriteResult::Txn { revision, succeeded, results } => Ok(TxnResponse { revision, succeeded, results }),
                other => Err(KvError::Protocol(format!("unexpected result of a txn: {other:?}"))),
            }
        })
    }

    fn lease_grant(&self, ttl: Duration) -> BoxFuture<'_, Result<LeaseGrant, KvError>> {
        Box::pin(async move {
            let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
            lease_grant(write_result(self.call(ClientRequest::LeaseGrant { ttl_ms }).await?, "lease_grant")?, "grant")
        })
    }

    fn lease_keepalive(&self, id: LeaseId) -> BoxFuture<'_, Result<LeaseGrant, KvError>> {
        Box::pin(async move {
            let w = write_result(self.call(ClientRequest::LeaseKeepAlive { id }).await?, "lease_keepalive")?;
            lease_grant(w, "keepalive")
        })
    }

    fn lease_revoke(&self, id: LeaseId) -> BoxFuture<'_, Result<LeaseRevoked, KvError>> {
        Box::pin(async move {
            match write_result(self.call(ClientRequest::LeaseRevoke { id }).await?, "lease_revoke")? {
                WriteResult::LeaseRevoked { revision, deleted_keys } => Ok(LeaseRevoked { revision, deleted_keys }),
                other => Err(KvError::Protocol(format!("unexpected result of a lease revoke: {other:?}"))),
            }
        })
    }

    fn lease_list(&self) -> BoxFuture<'_, Result<Vec<LeaseInfo>, KvError>> {
        Box::pin(async move {
            match self.call(ClientRequest::LeaseList).await? {
                ClientResponse::Leases { leases } => Ok(leases),
                other => Err(unexpected("lease_list", &other)),
            }
        })
    }

    fn watch(&self, prefix: &[u8], start_revision: u64) -> KvWatch {
        let request = ClientRequest::Watch { prefix: prefix.to_vec(), start_revision };
        if let Err(e) = self.authorize(&request) {
            return KvWatch::failed(e);
        }
        let (tx, mut rx) = mpsc::channel(aspen_core::limits::WATCH_CHANNEL_EVENTS.min(1024));
        let task = tokio::spawn(run_watch(self.state.clone(), prefix.to_vec(), start_revision, tx));
        let stream = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
        KvWatch::new(AbortOnDrop { stream, task: task.abort_handle() })
    }

    fn queue(&self, command: QueueCommand) -> BoxFuture<'_, Result<QueueResult, KvError>> {
        Box::pin(async move {
            match write_result(self.call(ClientRequest::Queue(command)).await?, "queue")? {
                WriteResult::Queue(result) => Ok(result),
                other => Err(KvError::Protocol(format!("unexpected result of a queue command: {other:?}"))),
            }
        })
    }

    fn rate_limit(&self, take: RateLimitTake) -> BoxFuture<'_, Result<RateLimitResult, KvError>> {
        Box::pin(async move {
            match write_result(self.call(ClientRequest::RateLimit(take)).await?, "rate_limit")? {
                WriteResult::RateLimit(result) => Ok(result),
                other => Err(KvError::Protocol(format!("unexpected result of a rate-limit take: {other:?}"))),
            }
        })
    }
}

/// A stream that ends its producing task when dropped.
struct AbortOnDrop<S> {
    stream: S,
    task: tokio::task::AbortHandle,
}

impl<S> Drop for AbortOnDrop<S> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl<S: futures::Stream + Unpin> futures::Stream for AbortOnDrop<S> {
    type Item = S::Item;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        std::pin::Pin::new(&mut self.stream).poll_next(cx)
    }
}

/// Feeds `tx` with the events under `prefix` from `start_revision` (0: from now on),
/// resubscribing from the last delivered revision when the hub reports this watcher fell
/// behind, until the receiver goes away or the history no longer reaches back far enough.
async fn run_watch(
    state: Weak<NodeState>,
    prefix: Vec<u8>,
    start_revision: u64,
    tx: mpsc::Sender<Result<Event, KvError>>,
) {
    let mut from = start_revision;
    let mut last = start_revision.saturating_sub(1);
    loop {
        let Some(node) = state.upgrade() else {
            let _ = tx.send(Err(AspenError::Unavailable { reason: "the node is shutting down".into() }.into())).await;
            return;
        };
        if !node.is_initialized() {
            let _ = tx.send(Err(AspenError::NotInitialized.into())).await;
            return;
        }
        if from == 0 {
            // "From now": everything after the revision applied at this moment, so an event
            // applied while subscribing is neither missed nor repeated.
            from = node.reader.revision().unwrap_or(0) + 1;
            last = from - 1;
        }
        let (backlog, mut live) = match node.hub.subscribe(&prefix, from) {
            Ok(s) => s,
            Err(e) => {
                let _ = tx.send(Err(e.into())).await;
                return;
            }
        };
        drop(node);
        for event in backlog {
            if event.revision() > last {
                last = event.revision();
                if tx.send(Ok(event)).await.is_err() {
                    return;
                }
            }
        }
        loop {
            let batch = tokio::select! {
                batch = live.recv() => batch,
                _ = tx.closed() => return,
            };
            match batch {
                Ok(batch) => {
                    for event in batch.iter() {
                        if event.revision() <= last || !event.kv.key.starts_with(&prefix) {
                            continue;
                        }
                        last = event.revision();
                        if tx.send(Ok(event.clone())).await.is_err() {
                            return;
                        }
                    }
                }
                Err(RecvError::Lagged(_)) => break,
                Err(RecvError::Closed) => return,
            }
        }
        from = last + 1;
    }
}
