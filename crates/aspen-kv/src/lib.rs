//! The one typed interface to an Aspen cluster's KV: [`Kv`].
//!
//! Two implementations exist and behave the same: the remote client (`aspen-client`, over
//! QUIC, with failover and safe retries) and a node's own (`aspen-node`, straight to its
//! Raft handle, no network hop). Both enforce the same limits, the same linearizability and
//! the same capability checks. Code written against [`Kv`] (the coordination primitives,
//! every app) therefore runs unchanged inside a node or outside it.
//!
//! The trait is object safe (its futures are boxed) so that a node can hand an app an
//! `Arc<dyn Kv>`; the cost is one allocation per call, small beside a Raft round.
//! [`KvExt`] adds the conveniences every caller wants (`get`, `scan_prefix`, `cas`, paging).
//!
//! Not for: blobs (each app reaches them through `aspen-blob`), cluster administration.

mod cas;
mod error;
mod ext;
mod types;
mod watch;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

pub use aspen_core::api::{LeaseInfo, ReadConsistency, ScanRequest};
pub use aspen_core::command::{Compare, CompareOp, CompareTarget, Txn, TxnOp, TxnOpResult};
pub use aspen_core::keys::{key_successor, prefix_end};
pub use aspen_core::queue::{QueueCommand, QueueResult};
pub use aspen_core::ratelimit::{RateLimitResult, RateLimitTake};
pub use aspen_core::{AspenError, Event, EventKind, KeyValue, LeaseId};
pub use cas::{CasOutcome, cas_outcome, cas_txn};
pub use error::KvError;
pub use ext::KvExt;
pub use types::{DeleteResult, GetResult, LeaseGrant, LeaseRevoked, PutResult, ScanPage, TxnResponse};
pub use watch::KvWatch;

/// A boxed future, as [`Kv`]'s methods return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A shared handle on some [`Kv`].
pub type SharedKv = std::sync::Arc<dyn Kv>;

/// What an app needs from the KV. Every method is one request; none retries a write whose
/// outcome is unknown (it fails with `AspenError::OutcomeUnknown`).
pub trait Kv: Send + Sync + 'static {
    /// Reads `key`, with the store revision of the read.
    fn get_with_revision<'a>(
        &'a self,
        key: &'a [u8],
        consistency: ReadConsistency,
    ) -> BoxFuture<'a, Result<GetResult, KvError>>;

    /// One page of a range scan (see [`ScanRequest`]).
    fn scan_range(&self, request: ScanRequest) -> BoxFuture<'_, Result<ScanPage, KvError>>;

    /// Sets `key` to `value`, attached to `lease` if given.
    fn put_with<'a>(
        &'a self,
        key: &'a [u8],
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> BoxFuture<'a, Result<PutResult, KvError>>;

    /// Deletes every key in `[start, end)`; an empty `end` has no upper bound.
    fn delete_range<'a>(&'a self, start: &'a [u8], end: &'a [u8]) -> BoxFuture<'a, Result<DeleteResult, KvError>>;

    /// Deletes `key`.
    fn delete_key<'a>(&'a self, key: &'a [u8]) -> BoxFuture<'a, Result<DeleteResult, KvError>>;

    /// Runs a transaction: compares, then the success or the failure branch, atomically.
    fn txn(&self, txn: Txn) -> BoxFuture<'_, Result<TxnResponse, KvError>>;

    /// Grants a lease that lives `ttl` (leader's clock) unless kept alive.
    fn lease_grant(&self, ttl: Duration) -> BoxFuture<'_, Result<LeaseGrant, KvError>>;

    /// Restarts a lease's countdown.
    fn lease_keepalive(&self, id: LeaseId) -> BoxFuture<'_, Result<LeaseGrant, KvError>>;

    /// Ends a lease now, deleting its keys.
    fn lease_revoke(&self, id: LeaseId) -> BoxFuture<'_, Result<LeaseRevoked, KvError>>;

    /// Every live lease.
    fn lease_list(&self) -> BoxFuture<'_, Result<Vec<LeaseInfo>, KvError>>;

    /// Events on keys starting with `prefix`, from `start_revision` (0: from now on), each
    /// once and in order, resumed across failures where that is possible.
    fn watch(&self, prefix: &[u8], start_revision: u64) -> KvWatch;

    /// A work-queue command, applied atomically by the state machine.
    fn queue(&self, command: QueueCommand) -> BoxFuture<'_, Result<QueueResult, KvError>>;

    /// Takes tokens from a cluster-wide token bucket.
    fn rate_limit(&self, take: RateLimitTake) -> BoxFuture<'_, Result<RateLimitResult, KvError>>;
}

impl<K: Kv + ?Sized> Kv for std::sync::Arc<K> {
    fn get_with_revision<'a>(
        &'a self,
        key: &'a [u8],
        consistency: ReadConsistency,
    ) -> BoxFuture<'a, Result<GetResult, KvError>> {
        (**self).get_with_revision(key, consistency)
    }
    fn scan_range(&self, request: ScanRequest) -> BoxFuture<'_, Result<ScanPage, KvError>> {
        (**self).scan_range(request)
    }
    fn put_with<'a>(
        &'a self,
        key: &'a [u8],
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> BoxFuture<'a, Result<PutResult, KvError>> {
        (**self).put_with(key, value, lease)
    }
    fn delete_range<'a>(&'a self, start: &'a [u8], end: &'a [u8]) -> BoxFuture<'a, Result<DeleteResult, KvError>> {
        (**self).delete_range(start, end)
    }
    fn delete_key<'a>(&'a self, key: &'a [u8]) -> BoxFuture<'a, Result<DeleteResult, KvError>> {
        (**self).delete_key(key)
    }
    fn txn(&self, txn: Txn) -> BoxFuture<'_, Result<TxnResponse, KvError>> {
        (**self).txn(txn)
    }
    fn lease_grant(&self, ttl: Duration) -> BoxFuture<'_, Result<LeaseGrant, KvError>> {
        (**self).lease_grant(ttl)
    }
    fn lease_keepalive(&self, id: LeaseId) -> BoxFuture<'_, Result<LeaseGrant, KvError>> {
        (**self).lease_keepalive(id)
    }
    fn lease_revoke(&self, id: LeaseId) -> BoxFuture<'_, Result<LeaseRevoked, KvError>> {
        (**self).lease_revoke(id)
    }
    fn lease_list(&self) -> BoxFuture<'_, Result<Vec<LeaseInfo>, KvError>> {
        (**self).lease_list()
    }
    fn watch(&self, prefix: &[u8], start_revision: u64) -> KvWatch {
        (**self).watch(prefix, start_revision)
    }
    fn queue(&self, command: QueueCommand) -> BoxFuture<'_, Result<QueueResult, KvError>> {
        (**self).queue(command)
    }
    fn rate_limit(&self, take: RateLimitTake) -> BoxFuture<'_, Result<RateLimitResult, KvError>> {
        (**self).rate_limit(take)
    }
}

impl std::fmt::Debug for dyn Kv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("dyn Kv")
    }
}

/// Anything that can become a [`SharedKv`]: a shared handle itself, or a client (by clone).
pub trait IntoSharedKv {
    fn into_shared_kv(self) -> SharedKv;
}

impl IntoSharedKv for SharedKv {
    fn into_shared_kv(self) -> SharedKv {
        self
    }
}

impl IntoSharedKv for &SharedKv {
    fn into_shared_kv(self) -> SharedKv {
        self.clone()
    }
}
