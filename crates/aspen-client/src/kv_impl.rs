//! The remote [`Kv`]: the client's typed calls behind the one KV interface every app and
//! the coordination primitives use.

use std::time::Duration;

use aspen_core::api::{LeaseInfo, ReadConsistency, ScanRequest};
use aspen_core::command::Txn;
use aspen_core::queue::{QueueCommand, QueueResult};
use aspen_core::ratelimit::{RateLimitResult, RateLimitTake};
use aspen_kv::{
    BoxFuture, DeleteResult, GetResult, Kv, KvError, KvWatch, LeaseGrant, LeaseRevoked, PutResult, ScanPage,
    TxnResponse,
};
use futures::StreamExt;

use crate::client::Client;
use crate::error::ClientError;

impl From<ClientError> for KvError {
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::Aspen(e) => KvError::Aspen(e),
            ClientError::Unreachable { tried } => KvError::Unreachable { tried },
            ClientError::Connection { node, reason } => KvError::Connection { node, reason },
            other => KvError::Protocol(other.to_string()),
        }
    }
}

impl From<KvError> for ClientError {
    fn from(e: KvError) -> Self {
        match e {
            KvError::Aspen(e) => ClientError::Aspen(e),
            KvError::Unreachable { tried } => ClientError::Unreachable { tried },
            KvError::Connection { node, reason } => ClientError::Connection { node, reason },
            KvError::Protocol(reason) => ClientError::Protocol { node: "?".into(), reason },
        }
    }
}

fn kv<T>(r: Result<T, ClientError>) -> Result<T, KvError> {
    r.map_err(KvError::from)
}

impl Kv for Client {
    fn get_with_revision<'a>(
        &'a self,
        key: &'a [u8],
        consistency: ReadConsistency,
    ) -> BoxFuture<'a, Result<GetResult, KvError>> {
        Box::pin(async move { kv(Client::get_with_revision(self, key, consistency).await) })
    }

    fn scan_range(&self, request: ScanRequest) -> BoxFuture<'_, Result<ScanPage, KvError>> {
        Box::pin(async move { kv(Client::scan_range(self, request).await) })
    }

    fn put_with<'a>(
        &'a self,
        key: &'a [u8],
        value: Vec<u8>,
        lease: Option<aspen_core::LeaseId>,
    ) -> BoxFuture<'a, Result<PutResult, KvError>> {
        Box::pin(async move {
            kv(match lease {
                Some(lease) => Client::put_with_lease(self, key, value, lease).await,
                None => Client::put(self, key, value).await,
            })
        })
    }

    fn delete_range<'a>(&'a self, start: &'a [u8], end: &'a [u8]) -> BoxFuture<'a, Result<DeleteResult, KvError>> {
        Box::pin(async move { kv(Client::delete_range(self, start, end).await) })
    }

    fn delete_key<'a>(&'a self, key: &'a [u8]) -> BoxFuture<'a, Result<DeleteResult, KvError>> {
        Box::pin(async move { kv(Client::delete(self, key).await) })
    }

    fn txn(&self, txn: Txn) -> BoxFuture<'_, Result<TxnResponse, KvError>> {
        Box::pin(async move { kv(Client::txn(self, txn).await) })
    }

    fn lease_grant(&self, ttl: Duration) -> BoxFuture<'_, Result<LeaseGrant, KvError>> {
        Box::pin(async move { kv(Client::lease_grant(self, ttl).await) })
    }

    fn lease_keepalive(&self, id: aspen_core::LeaseId) -> BoxFuture<'_, Result<LeaseGrant, KvError>> {
        Box::pin(async move { kv(Client::lease_keepalive(self, id).await) })
    }

    fn lease_revoke(&self, id: aspen_core::LeaseId) -> BoxFuture<'_, Result<LeaseRevoked, KvError>> {
        Box::pin(async move { kv(Client::lease_revoke(self, id).await) })
    }

    fn lease_list(&self) -> BoxFuture<'_, Result<Vec<LeaseInfo>, KvError>> {
        Box::pin(async move { kv(Client::lease_list(self).await) })
    }

    fn watch(&self, prefix: &[u8], start_revision: u64) -> KvWatch {
        KvWatch::new(Client::watch(self, prefix, start_revision).map(kv))
    }

    fn queue(&self, command: QueueCommand) -> BoxFuture<'_, Result<QueueResult, KvError>> {
        Box::pin(async move { kv(Client::queue(self, command).await) })
    }

    fn rate_limit(&self, take: RateLimitTake) -> BoxFuture<'_, Result<RateLimitResult, KvError>> {
        Box::pin(async move { kv(Client::rate_limit(self, take).await) })
    }
}

impl Client {
    /// This client as a shared [`Kv`] handle, for code written against the KV interface.
    pub fn kv(&self) -> aspen_kv::SharedKv {
        std::sync::Arc::new(self.clone())
    }
}

impl aspen_kv::IntoSharedKv for Client {
    fn into_shared_kv(self) -> aspen_kv::SharedKv {
        std::sync::Arc::new(self)
    }
}

impl aspen_kv::IntoSharedKv for &Client {
    fn into_shared_kv(self) -> aspen_kv::SharedKv {
        std::sync::Arc::new(self.clone())
    }
}
