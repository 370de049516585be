//! Leader election: candidates queue like a lock's; the first is the leader, its key's
//! value is the leader's proclamation, and its create revision is the term (a fencing
//! token: each new leader's term is greater than every earlier one's).

use std::time::Duration;

use aspen_kv::ReadConsistency;
use aspen_kv::{Kv as _, KvExt as _};

use crate::lock::{Lock, LockGuard};
use crate::{CoordError, Session};

#[derive(Debug, Clone)]
pub struct Election {
    queue: Lock,
}

/// This candidate's leadership, until it resigns or its session ends.
#[derive(Debug)]
pub struct Leadership {
    guard: LockGuard,
}

/// Who leads, as observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leader {
    pub term: u64,
    pub value: Vec<u8>,
}

impl Election {
    pub fn new(session: &Session, name: &str) -> Election {
        Election { queue: Lock::queue(session, "election", name) }
    }

    /// Stands with `value` and waits (at most `timeout`) until elected.
    pub async fn campaign(&self, value: impl Into<Vec<u8>>, timeout: Duration) -> Result<Leadership, CoordError> {
        let value = value.into();
        match tokio::time::timeout(timeout, self.queue.acquire_with(value)).await {
            Ok(r) => r.map(|guard| Leadership { guard }),
            Err(_) => {
                let _ = self.queue.leave().await;
                Err(CoordError::Timeout(timeout, format!("election {}", self.queue.name())))
            }
        }
    }

    /// The current leader, if any.
    pub async fn leader(&self) -> Result<Option<Leader>, CoordError> {
        let (kvs, _) = self.queue.contenders().await?;
        Ok(kvs.into_iter().next().map(|kv| Leader { term: kv.create_revision, value: kv.value }))
    }

    /// Waits until the leader differs from `known` (by term or value), then returns it.
    pub async fn observe_change(&self, known: Option<&Leader>) -> Result<Option<Leader>, CoordError> {
        loop {
            let (kvs, revision) = self.queue.contenders().await?;
            let now = kvs.into_iter().next().map(|kv| Leader { term: kv.create_revision, value: kv.value });
            if now.as_ref() != known {
                return Ok(now);
            }
            let mut watch = self.queue.session.kv().watch(&self.queue.prefix, revision + 1);
            let _ = watch.next().await;
        }
    }

    /// Whether `leadership` still holds: its key is still there, with its term (no key can
    /// move ahead of it, since later keys get later revisions).
    pub async fn is_leader(&self, leadership: &Leadership) -> Result<bool, CoordError> {
        let kv = self.queue.session.kv().get(&self.queue.my_key, ReadConsistency::Linearizable).await?;
        Ok(kv.is_some_and(|kv| kv.create_revision == leadership.term()))
    }
}

impl Leadership {
    /// The term: this leader's fencing token.
    pub fn term(&self) -> u64 {
        self.guard.token
    }

    /// Publishes a new value as leader; refused if leadership was lost.
    pub async fn proclaim(&self, value: impl Into<Vec<u8>>) -> Result<(), CoordError> {
        self.guard.set_own_value(value.into()).await
    }

    /// The guard, for fenced writes made as leader.
    pub fn guard(&self) -> &LockGuard {
        &self.guard
    }

    /// Steps down: the next candidate becomes leader.
    pub async fn resign(self) -> Result<(), CoordError> {
        self.guard.release().await
    }
}
