//! [`KvExt`]: the conveniences built on [`Kv`]'s requests, for every implementation.

use aspen_core::api::ReadConsistency;
use aspen_core::keys::prefix_end;
use aspen_core::{AspenError, KeyValue, LeaseId};

use crate::cas::{CasOutcome, cas_outcome, cas_txn};
use crate::{DeleteResult, Kv, KvError, PutResult, ScanPage, ScanRequest};

/// Most pages [`KvExt::scan_all`] reads before it refuses: with the node's page budget,
/// far more than any prefix an app should read whole.
pub const MAX_SCAN_ALL_PAGES: usize = 10_000;

/// Conveniences over [`Kv`], for any implementation (`Arc<dyn Kv>` included).
pub trait KvExt: Kv {
    /// Reads `key`.
    fn get(
        &self,
        key: impl AsRef<[u8]> + Send,
        consistency: ReadConsistency,
    ) -> impl std::future::Future<Output = Result<Option<KeyValue>, KvError>> + Send {
        async move { Ok(self.get_with_revision(key.as_ref(), consistency).await?.kv) }
    }

    /// Reads keys in `[start, end)` in order, at most `limit` (0: the node's default).
    fn scan(
        &self,
        start: impl AsRef<[u8]> + Send,
        end: impl AsRef<[u8]> + Send,
        limit: u32,
        consistency: ReadConsistency,
    ) -> impl std::future::Future<Output = Result<ScanPage, KvError>> + Send {
        let request = ScanRequest::range(start.as_ref(), end.as_ref()).limit(limit).consistency(consistency);
        self.scan_range(request)
    }

    /// Reads keys starting with `prefix`, at most `limit`.
    fn scan_prefix(
        &self,
        prefix: impl AsRef<[u8]> + Send,
        limit: u32,
        consistency: ReadConsistency,
    ) -> impl std::future::Future<Output = Result<ScanPage, KvError>> + Send {
        self.scan_range(ScanRequest::prefix(prefix).limit(limit).consistency(consistency))
    }

    /// Every key starting with `prefix`, page by page, all pages read from one snapshot
    /// (the first page's revision, returned beside them). Refuses past
    /// [`MAX_SCAN_ALL_PAGES`] pages.
    fn scan_all(
        &self,
        prefix: impl AsRef<[u8]> + Send,
        consistency: ReadConsistency,
    ) -> impl std::future::Future<Output = Result<(Vec<KeyValue>, u64), KvError>> + Send {
        let first = ScanRequest::prefix(prefix).consistency(consistency).snapshot();
        async move {
            let mut request = first;
            let mut all = Vec::new();
            for _ in 0..MAX_SCAN_ALL_PAGES {
                let page = self.scan_range(request.clone()).await?;
                let next = page.next_start();
                all.extend(page.kvs);
                match next {
                    Some(start) if page.more => {
                        request.start = start;
                        request.at_revision = Some(page.revision);
                    }
                    _ => return Ok((all, page.revision)),
                }
            }
            Err(KvError::Aspen(AspenError::invalid(format!(
                "scan of more than MAX_SCAN_ALL_PAGES = {MAX_SCAN_ALL_PAGES} pages; page through it instead"
            ))))
        }
    }

    /// Sets `key` to `value`.
    fn put(
        &self,
        key: impl AsRef<[u8]> + Send,
        value: impl Into<Vec<u8>> + Send,
    ) -> impl std::future::Future<Output = Result<PutResult, KvError>> + Send {
        let value = value.into();
        async move { self.put_with(key.as_ref(), value, None).await }
    }

    /// Sets `key` to `value`, attached to `lease`: the key is deleted when the lease ends.
    fn put_with_lease(
        &self,
        key: impl AsRef<[u8]> + Send,
        value: impl Into<Vec<u8>> + Send,
        lease: LeaseId,
    ) -> impl std::future::Future<Output = Result<PutResult, KvError>> + Send {
        let value = value.into();
        async move { self.put_with(key.as_ref(), value, Some(lease)).await }
    }

    /// Deletes `key`.
    fn delete(
        &self,
        key: impl AsRef<[u8]> + Send,
    ) -> impl std::future::Future<Output = Result<DeleteResult, KvError>> + Send {
        async move { self.delete_key(key.as_ref()).await }
    }

    /// Deletes every key starting with `prefix`. An empty prefix deletes everything.
    fn delete_prefix(
        &self,
        prefix: impl AsRef<[u8]> + Send,
    ) -> impl std::future::Future<Output = Result<DeleteResult, KvError>> + Send {
        async move {
            let prefix = prefix.as_ref();
            self.delete_range(prefix, &prefix_end(prefix)).await
        }
    }

    /// Sets `key` to `new` only if it holds `expected` (`None`: only if it does not exist).
    fn cas(
        &self,
        key: impl AsRef<[u8]> + Send,
        expected: Option<Vec<u8>>,
        new: impl Into<Vec<u8>> + Send,
    ) -> impl std::future::Future<Output = Result<CasOutcome, KvError>> + Send {
        let txn = cas_txn(key.as_ref(), expected, new.into());
        async move {
            let resp = self.txn(txn).await?;
            Ok(cas_outcome(resp.succeeded, resp.revision, &resp.results))
        }
    }
}

impl<K: Kv + ?Sized> KvExt for K {}
