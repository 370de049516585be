//! A fair, lease-backed mutex with fencing tokens.
//!
//! Each contender puts one key, `_aspen/coord/lock/<name>/<lease>`, attached to its
//! session's lease. The key's `create_revision` orders the contenders (revisions only grow,
//! cluster-wide) and is the holder's **fencing token**: strictly greater than every earlier
//! holder's. The contender with the smallest create revision holds the lock; each other one
//! watches only the key just before its own and re-checks when that key is deleted (released,
//! or expired with its lease), so a release wakes one waiter, not all of them.
//!
//! The KV can enforce the token: [`LockGuard::fenced_put`] and [`LockGuard::fenced_txn`] run
//! a transaction whose first compare is "my lock key still has create revision == token".
//! A holder that was paused or cut off long enough for its lease to expire has lost its key,
//! so its late write is refused instead of overwriting the next holder's work.
//!
//! Every write here is idempotent (put-if-absent on a key named by the lease; delete of a
//! key), so an `outcome_unknown` answer during a leader change is simply retried.

use std::time::Duration;

use aspen_kv::{
    Compare, CompareOp, CompareTarget, EventKind, KeyValue, KvError, ReadConsistency, Txn, TxnOp, TxnResponse,
};
use aspen_kv::{Kv as _, KvExt as _};

use crate::{COORD_PREFIX, CoordError, Session};

/// Most contenders read per scan of a lock's queue.
const MAX_CONTENDERS: u32 = 10_000;

/// A named lock; cheap to clone. Holds belong to the session.
#[derive(Debug, Clone)]
pub struct Lock {
    pub(crate) session: Session,
    name: String,
    pub(crate) prefix: Vec<u8>,
    pub(crate) my_key: Vec<u8>,
}

/// Proof of holding a lock, with its fencing token. Dropping it does not release the lock
/// (release is a network call): call [`LockGuard::release`], or let the session end.
#[derive(Debug)]
pub struct LockGuard {
    pub(crate) lock: Lock,
    pub(crate) token: u64,
}

impl Lock {
    pub fn new(session: &Session, name: &str) -> Lock {
        Lock::queue(session, "lock", name)
    }

    /// The queue of contenders for `kind/name`, shared by the primitives built like a lock.
    pub(crate) fn queue(session: &Session, kind: &str, name: &str) -> Lock {
        let prefix = format!("{COORD_PREFIX}{kind}/{name}/").into_bytes();
        let mut my_key = prefix.clone();
        my_key.extend_from_slice(format!("{:016x}", session.lease().0).as_bytes());
        Lock { session: session.clone(), name: name.to_string(), prefix, my_key }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Joins the queue (idempotently) and returns this session's create revision.
    pub(crate) async fn enqueue(&self) -> Result<u64, CoordError> {
        self.enqueue_with(Vec::new()).await
    }

    /// [`Lock::enqueue`], with `value` in this contender's key.
    pub(crate) async fn enqueue_with(&self, value: Vec<u8>) -> Result<u64, CoordError> {
        if self.session.ended() {
            return Err(CoordError::SessionEnded);
        }
        let txn = Txn {
            compare: vec![Compare {
                key: self.my_key.clone(),
                op: CompareOp::Equal,
                target: CompareTarget::CreateRevision(0),
            }],
            success: vec![TxnOp::Put { key: self.my_key.clone(), value, lease: Some(self.session.lease()) }],
            failure: vec![TxnOp::Get { key: self.my_key.clone() }],
        };
        let resp = self.retry_write(|| self.session.kv().txn(txn.clone())).await?;
        if resp.succeeded {
            return Ok(resp.revision);
        }
        match resp.results.into_iter().next() {
            Some(aspen_kv::TxnOpResult::Get { kv: Some(kv) }) => Ok(kv.create_revision),
            _ => Err(CoordError::Corrupt("lock key vanished while joining the queue".into())),
        }
    }

    pub(crate) async fn retry_write<T, F, Fut>(&self, op: F) -> Result<T, CoordError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, KvError>>,
    {
        crate::idempotent::retry(&format!("lock {}", self.name), op).await
    }

    /// The contenders in queue order, and the revision they were read at.
    pub(crate) async fn contenders(&self) -> Result<(Vec<KeyValue>, u64), CoordError> {
        let page = self.session.kv().scan_prefix(&self.prefix, MAX_CONTENDERS, ReadConsistency::Linearizable).await?;
        let mut kvs = page.kvs;
        kvs.sort_by_key(|kv| kv.create_revision);
        Ok((kvs, page.revision))
    }

    /// Waits for the lock for at most `timeout`. On timeout this session leaves the queue.
    pub async fn acquire(&self, timeout: Duration) -> Result<LockGuard, CoordError> {
        match tokio::time::timeout(timeout, self.acquire_forever()).await {
            Ok(r) => r,
            Err(_) => {
                let _ = self.leave().await;
                Err(CoordError::Timeout(timeout, format!("lock {}", self.name)))
            }
        }
    }

    /// Takes the lock only if nobody holds or waits for it.
    pub async fn try_acquire(&self) -> Result<Option<LockGuard>, CoordError> {
        let token = self.enqueue().await?;
        let (kvs, _) = self.contenders().await?;
        if kvs.first().is_some_and(|kv| kv.key == self.my_key) {
            return Ok(Some(LockGuard { lock: self.clone(), token }));
        }
        self.leave().await?;
        Ok(None)
    }

    async fn acquire_forever(&self) -> Result<LockGuard, CoordError> {
        self.acquire_with(Vec::new()).await
    }

    /// Waits until first in the queue, having joined it with `value`.
    pub(crate) async fn acquire_with(&self, value: Vec<u8>) -> Result<LockGuard, CoordError> {
        let token = self.enqueue_with(value).await?;
        loop {
            let (kvs, revision) = self.contenders().await?;
            let Some(mine) = kvs.iter().position(|kv| kv.key == self.my_key) else {
                // Our key is gone: the session's lease ended.
                return Err(CoordError::SessionEnded);
            };
            if mine == 0 {
                return Ok(LockGuard { lock: self.clone(), token });
            }
            // Wait for the contender just before us to go, then look again.
            let before = kvs[mine - 1].key.clone();
            let mut watch = self.session.kv().watch(&before, revision + 1);
            loop {
                match watch.next().await {
                    Some(Ok(event)) if event.kind == EventKind::Delete && event.kv.key == before => break,
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        tracing::debug!(lock = %self.name, "watch ended, re-reading the queue: {e}");
                        break;
                    }
                    None => break,
                }
            }
            if self.session.ended() {
                return Err(CoordError::SessionEnded);
            }
        }
    }

    /// Leaves the queue (or releases the lock): deletes this session's key.
    pub(crate) async fn leave(&self) -> Result<(), CoordError> {
        self.retry_write(|| self.session.kv().delete(&self.my_key)).await.map(drop)
    }
}

impl LockGuard {
    /// The fencing token: strictly greater than every earlier holder's token of this lock.
    pub fn token(&self) -> u64 {
        self.token
    }

    pub fn lock(&self) -> &Lock {
        &self.lock
    }

    /// The compare that holds only while this guard's hold is current.
    pub fn fence(&self) -> Compare {
        Compare {
            key: self.lock.my_key.clone(),
            op: CompareOp::Equal,
            target: CompareTarget::CreateRevision(self.token),
        }
    }

    /// Runs `txn` only if this hold is still current; refused with [`CoordError::StaleToken`]
    /// otherwise (the other compares of `txn` then decide between its branches as usual).
    pub async fn fenced_txn(&self, mut txn: Txn) -> Result<TxnResponse, CoordError> {
        // Check the fence first, separately from the caller's compares, so a failed fence
        // is told apart from a failed caller compare.
        let fence = Txn { compare: vec![self.fence()], success: vec![], failure: vec![] };
        txn.compare.insert(0, self.fence());
        let resp = self.lock.session.kv().txn(txn).await?;
        if !resp.succeeded {
            let check = self.lock.session.kv().txn(fence).await?;
            if !check.succeeded {
                return Err(CoordError::StaleToken { lock: self.lock.name.clone(), token: self.token });
            }
        }
        Ok(resp)
    }

    /// Rewrites this hold's own key with `value` (keeping its lease and token), if current.
    pub(crate) async fn set_own_value(&self, value: Vec<u8>) -> Result<(), CoordError> {
        let lock = &self.lock;
        let txn = Txn {
            compare: vec![],
            success: vec![TxnOp::Put { key: lock.my_key.clone(), value, lease: Some(lock.session.lease()) }],
            failure: vec![],
        };
        self.fenced_txn(txn).await.map(drop)
    }

    /// Puts `key` = `value` only if this hold is still current.
    pub async fn fenced_put(&self, key: impl AsRef<[u8]>, value: impl Into<Vec<u8>>) -> Result<u64, CoordError> {
        let txn = Txn {
            compare: vec![],
            success: vec![TxnOp::Put { key: key.as_ref().to_vec(), value: value.into(), lease: None }],
            failure: vec![],
        };
        Ok(self.fenced_txn(txn).await?.revision)
    }

    /// Releases the lock: the next contender in the queue gets it.
    pub async fn release(self) -> Result<(), CoordError> {
        // Delete only our own hold: if the lease already ended, someone else may hold now.
        let txn = Txn {
            compare: vec![self.fence()],
            success: vec![TxnOp::Delete { key: self.lock.my_key.clone() }],
            failure: vec![],
        };
        self.lock.retry_write(|| self.lock.session.kv().txn(txn.clone())).await.map(drop)
    }
}
