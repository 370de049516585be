//! A counting semaphore: at most N holders, each a key on its session's lease, so a dead
//! holder's permit comes back when its lease ends.
//!
//! Contenders queue like a lock's (by create revision); the first N hold a permit. A
//! waiter watches the queue for any departure and looks again.

use std::time::Duration;

use aspen_kv::EventKind;
use aspen_kv::Kv as _;

use crate::lock::Lock;
use crate::{CoordError, Session};

#[derive(Debug, Clone)]
pub struct Semaphore {
    queue: Lock,
    permits: usize,
}

/// One permit; release it with [`Permit::release`] (or let the session end).
#[derive(Debug)]
pub struct Permit {
    queue: Lock,
}

impl Semaphore {
    /// A semaphore of `permits` (at least 1). Every user must agree on the number.
    pub fn new(session: &Session, name: &str, permits: usize) -> Semaphore {
        Semaphore { queue: Lock::queue(session, "semaphore", name), permits: permits.max(1) }
    }

    /// Waits for a permit for at most `timeout`; on timeout leaves the queue.
    pub async fn acquire(&self, timeout: Duration) -> Result<Permit, CoordError> {
        match tokio::time::timeout(timeout, self.acquire_forever()).await {
            Ok(r) => r,
            Err(_) => {
                let _ = self.queue.leave().await;
                Err(CoordError::Timeout(timeout, format!("semaphore {}", self.queue.name())))
            }
        }
    }

    async fn acquire_forever(&self) -> Result<Permit, CoordError> {
        self.queue.enqueue().await?;
        loop {
            let (kvs, revision) = self.queue.contenders().await?;
            let Some(mine) = kvs.iter().position(|kv| kv.key == self.queue.my_key) else {
                return Err(CoordError::SessionEnded);
            };
            if mine < self.permits {
                return Ok(Permit { queue: self.queue.clone() });
            }
            let mut watch = self.queue.session.kv().watch(&self.queue.prefix, revision + 1);
            loop {
                match watch.next().await {
                    Some(Ok(event)) if event.kind == EventKind::Delete => break,
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => break,
                }
            }
        }
    }
}

impl Permit {
    pub async fn release(self) -> Result<(), CoordError> {
        self.queue.leave().await
    }
}
