//! Typed key-value calls: get, scan, put, delete, transactions and compare-and-swap.

use aspen_core::api::{ClientRequest, ClientResponse, ReadConsistency};
use aspen_core::command::{Txn, WriteResult};
use aspen_core::{KeyValue, LeaseId};

use crate::client::Client;
use crate::error::ClientError;
use crate::keys::prefix_end;
use aspen_kv::{
    CasOutcome, DeleteResult, GetResult, PutResult, ScanPage, ScanRequest, TxnResponse, cas_outcome, cas_txn,
};

impl Client {
    /// Reads `key`.
    pub async fn get(
        &self,
        key: impl AsRef<[u8]>,
        consistency: ReadConsistency,
    ) -> Result<Option<KeyValue>, ClientError> {
        Ok(self.get_with_revision(key, consistency).await?.kv)
    }

    /// Reads `key`, with the store revision of the read.
    pub async fn get_with_revision(
        &self,
        key: impl AsRef<[u8]>,
        consistency: ReadConsistency,
    ) -> Result<GetResult, ClientError> {
        let req = ClientRequest::Get { key: key.as_ref().to_vec(), consistency };
        match self.request(req).await? {
            ClientResponse::Get { kv, revision } => Ok(GetResult { kv, revision }),
            other => Err(ClientError::unexpected("get", &other)),
        }
    }

    /// One page of a scan with options (keys only, all pages from one snapshot).
    pub async fn scan_range(&self, request: ScanRequest) -> Result<ScanPage, ClientError> {
        let req = if request.is_plain() {
            let ScanRequest { start, end, limit, consistency, .. } = request;
            ClientRequest::Scan { start, end, limit, consistency }
        } else {
            ClientRequest::ScanWith(request)
        };
        match self.request(req).await? {
            ClientResponse::Scan { kvs, more, revision } => Ok(ScanPage { kvs, more, revision }),
            other => Err(ClientError::unexpected("scan", &other)),
        }
    }

    /// Reads keys in `[start, end)` in order, at most `limit` (0: the node's default);
    /// an empty `end` means no upper bound.
    pub async fn scan(
        &self,
        start: impl AsRef<[u8]>,
        end: impl AsRef<[u8]>,
        limit: u32,
        consistency: ReadConsistency,
    ) -> Result<ScanPage, ClientError> {
        let req =
            ClientRequest::Scan { start: start.as_ref().to_vec(), end: end.as_ref().to_vec(), limit, consistency };
        match self.request(req).await? {
            ClientResponse::Scan { kvs, more, revision } => Ok(ScanPage { kvs, more, revision }),
            other => Err(ClientError::unexpected("scan", &other)),
        }
    }

    /// Reads keys starting with `prefix`, at most `limit`.
    pub async fn scan_prefix(
        &self,
        prefix: impl AsRef<[u8]>,
        limit: u32,
        consistency: ReadConsistency,
    ) -> Result<ScanPage, ClientError> {
        let end = prefix_end(prefix.as_ref());
        self.scan(prefix, end, limit, consistency).await
    }

    /// Sets `key` to `value`.
    pub async fn put(&self, key: impl AsRef<[u8]>, value: impl Into<Vec<u8>>) -> Result<PutResult, ClientError> {
        self.put_inner(key.as_ref(), value.into(), None).await
    }

    /// Sets `key` to `value`, attached to `lease`: the key is deleted when the lease ends.
    pub async fn put_with_lease(
        &self,
        key: impl AsRef<[u8]>,
        value: impl Into<Vec<u8>>,
        lease: LeaseId,
    ) -> Result<PutResult, ClientError> {
        self.put_inner(key.as_ref(), value.into(), Some(lease)).await
    }

    async fn put_inner(&self, key: &[u8], value: Vec<u8>, lease: Option<LeaseId>) -> Result<PutResult, ClientError> {
        let req = ClientRequest::Put { key: key.to_vec(), value, lease };
        match self.request(req).await? {
            ClientResponse::Write(WriteResult::Put { revision, prev }) => Ok(PutResult { revision, prev }),
            other => Err(ClientError::unexpected("put", &other)),
        }
    }

    /// Deletes `key`.
    pub async fn delete(&self, key: impl AsRef<[u8]>) -> Result<DeleteResult, ClientError> {
        self.delete_request(ClientRequest::Delete { key: key.as_ref().to_vec() }, "delete").await
    }

    /// Deletes every key in `[start, end)`; an empty `end` means no upper bound.
    pub async fn delete_range(
        &self,
        start: impl AsRef<[u8]>,
        end: impl AsRef<[u8]>,
    ) -> Result<DeleteResult, ClientError> {
        let req = ClientRequest::DeleteRange { start: start.as_ref().to_vec(), end: end.as_ref().to_vec() };
        self.delete_request(req, "delete_range").await
    }

    /// Deletes every key starting with `prefix`. An empty prefix deletes everything.
    pub async fn delete_prefix(&self, prefix: impl AsRef<[u8]>) -> Result<DeleteResult, ClientError> {
        let end = prefix_end(prefix.as_ref());
        self.delete_range(prefix, end).await
    }

    async fn delete_request(&self, req: ClientRequest, name: &'static str) -> Result<DeleteResult, ClientError> {
        match self.request(req).await? {
            ClientResponse::Write(WriteResult::Delete { revision, deleted }) => Ok(DeleteResult { revision, deleted }),
            other => Err(ClientError::unexpected(name, &other)),
        }
    }

    /// Runs a transaction.
    pub async fn txn(&self, txn: Txn) -> Result<TxnResponse, ClientError> {
        match self.request(ClientRequest::Txn(txn)).await? {
            ClientResponse::Write(WriteResult::Txn { revision, succeeded, results }) => {
                Ok(TxnResponse { revision, succeeded, results })
            }
            other => Err(ClientError::unexpected("txn", &other)),
        }
    }

    /// Sets `key` to `new` only if it holds `expected` (`None`: only if it does not exist).
    pub async fn cas(
        &self,
        key: impl AsRef<[u8]>,
        expected: Option<Vec<u8>>,
        new: impl Into<Vec<u8>>,
    ) -> Result<CasOutcome, ClientError> {
        let resp = self.txn(cas_txn(key.as_ref(), expected, new.into())).await?;
        Ok(cas_outcome(resp.succeeded, resp.revision, &resp.results))
    }
}
