//! A read-write lock: many readers or one writer, FIFO, so a waiting writer is never
//! starved (readers that arrive after it wait behind it).
//!
//! Contenders queue like a lock's, each key's value saying `r` or `w`. A writer holds when it
//! is first; a reader holds when every contender before it is a reader. A writer may
//! downgrade to a reader (its key's value becomes `r`), letting the readers behind it in.

use std::time::Duration;

use aspen_kv::Kv as _;
use aspen_kv::{EventKind, KeyValue};

use crate::lock::{Lock, LockGuard};
use crate::{CoordError, Session};

const READ: &[u8] = b"r";
const WRITE: &[u8] = b"w";

#[derive(Debug, Clone)]
pub struct RwLock {
    queue: Lock,
}

/// A read or write hold; the token is its create revision, as for a lock.
#[derive(Debug)]
pub struct RwGuard {
    guard: LockGuard,
    write: bool,
}

impl RwLock {
    pub fn new(session: &Session, name: &str) -> RwLock {
        RwLock { queue: Lock::queue(session, "rwlock", name) }
    }

    pub async fn read(&self, timeout: Duration) -> Result<RwGuard, CoordError> {
        self.acquire(false, timeout).await
    }

    pub async fn write(&self, timeout: Duration) -> Result<RwGuard, CoordError> {
        self.acquire(true, timeout).await
    }

    async fn acquire(&self, write: bool, timeout: Duration) -> Result<RwGuard, CoordError> {
        match tokio::time::timeout(timeout, self.acquire_forever(write)).await {
            Ok(r) => r,
            Err(_) => {
                let _ = self.queue.leave().await;
                Err(CoordError::Timeout(timeout, format!("rwlock {}", self.queue.name())))
            }
        }
    }

    async fn acquire_forever(&self, write: bool) -> Result<RwGuard, CoordError> {
        let token = self.queue.enqueue_with(if write { WRITE } else { READ }.to_vec()).await?;
        loop {
            let (kvs, revision) = self.queue.contenders().await?;
            let Some(mine) = kvs.iter().position(|kv| kv.key == self.queue.my_key) else {
                return Err(CoordError::SessionEnded);
            };
            // What we wait on: for a writer, anyone ahead; for a reader, the last writer ahead.
            let blocker: Option<&KeyValue> =
                if write { kvs[..mine].last() } else { kvs[..mine].iter().rev().find(|kv| kv.value != READ) };
            let Some(blocker) = blocker else {
                let guard = LockGuard { lock: self.queue.clone(), token };
                return Ok(RwGuard { guard, write });
            };
            // A delete frees us; a downgrade (w -> r) may too.
            let key = blocker.key.clone();
            let mut watch = self.queue.session.kv().watch(&key, revision + 1);
            loop {
                match watch.next().await {
                    Some(Ok(event))
                        if event.kv.key == key && (event.kind == EventKind::Delete || event.kv.value == READ) =>
                    {
                        break;
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => break,
                }
            }
        }
    }
}

impl RwGuard {
    pub fn token(&self) -> u64 {
        self.guard.token
    }

    pub fn is_write(&self) -> bool {
        self.write
    }

    /// Turns a write hold into a read hold without letting another writer in between.
    pub async fn downgrade(&mut self) -> Result<(), CoordError> {
        if !self.write {
            return Ok(());
        }
        self.guard.set_own_value(READ.to_vec()).await?;
        self.write = false;
        Ok(())
    }

    /// Fenced writes, as for a lock.
    pub fn guard(&self) -> &LockGuard {
        &self.guard
    }

    pub async fn release(self) -> Result<(), CoordError> {
        self.guard.release().await
    }
}
