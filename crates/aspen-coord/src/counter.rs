//! Counters and sequences: a decimal `u64` in one key, changed by compare-and-swap
//! transactions on the key's mod revision.
//!
//! An `add` whose answer is lost (`outcome_unknown` during a leader change) is not retried:
//! it may have applied, and adding twice would be wrong. The error says so.

use aspen_kv::{Compare, CompareOp, CompareTarget, KeyValue, ReadConsistency, SharedKv, Txn, TxnOp};
use aspen_kv::{Kv as _, KvExt as _};

use crate::{COORD_PREFIX, CoordError};

/// A shared counter.
#[derive(Debug, Clone)]
pub struct Counter {
    client: SharedKv,
    key: Vec<u8>,
}

fn value_of(kv: &Option<KeyValue>) -> Result<u64, CoordError> {
    match kv {
        None => Ok(0),
        Some(kv) => std::str::from_utf8(&kv.value)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| CoordError::Corrupt(format!("counter value {:?} is not a number", kv.value))),
    }
}

fn unchanged(key: &[u8], kv: &Option<KeyValue>) -> Compare {
    Compare {
        key: key.to_vec(),
        op: CompareOp::Equal,
        target: CompareTarget::ModRevision(kv.as_ref().map_or(0, |kv| kv.mod_revision)),
    }
}

impl Counter {
    pub fn new(kv: impl aspen_kv::IntoSharedKv, name: &str) -> Counter {
        Counter { client: kv.into_shared_kv(), key: format!("{COORD_PREFIX}counter/{name}").into_bytes() }
    }

    pub async fn get(&self) -> Result<u64, CoordError> {
        value_of(&self.client.get(&self.key, ReadConsistency::Linearizable).await?)
    }

    /// Adds `delta` (negative subtracts, saturating at 0) and returns the new value.
    pub async fn add(&self, delta: i64) -> Result<u64, CoordError> {
        loop {
            let kv = self.client.get(&self.key, ReadConsistency::Linearizable).await?;
            let now = value_of(&kv)?;
            let next = now.saturating_add_signed(delta);
            if self.swap(&kv, next).await? {
                return Ok(next);
            }
        }
    }

    /// Sets the value to `new` only if it is `expected`; returns whether it did.
    pub async fn compare_and_swap(&self, expected: u64, new: u64) -> Result<bool, CoordError> {
        loop {
            let kv = self.client.get(&self.key, ReadConsistency::Linearizable).await?;
            if value_of(&kv)? != expected {
                return Ok(false);
            }
            if self.swap(&kv, new).await? {
                return Ok(true);
            }
        }
    }

    /// Writes `next` if the key is still as read; `false` if someone else changed it first.
    async fn swap(&self, read: &Option<KeyValue>, next: u64) -> Result<bool, CoordError> {
        let txn = Txn {
            compare: vec![unchanged(&self.key, read)],
            success: vec![TxnOp::Put { key: self.key.clone(), value: next.to_string().into_bytes(), lease: None }],
            failure: vec![],
        };
        Ok(self.client.txn(txn).await?.succeeded)
    }
}

/// Unique, increasing ids, reserved from a counter in blocks: one write per block.
#[derive(Debug)]
pub struct Sequence {
    counter: Counter,
    block: u64,
    next: u64,
    end: u64,
}

impl Sequence {
    /// A sequence that reserves `block` ids at a time (at least 1).
    pub fn new(kv: impl aspen_kv::IntoSharedKv, name: &str, block: u64) -> Sequence {
        Sequence { counter: Counter::new(kv, &format!("seq/{name}")), block: block.max(1), next: 1, end: 1 }
    }

    /// Reserves `n` ids for the caller: `[first, first + n)`, never handed out again.
    pub async fn reserve(&self, n: u64) -> Result<std::ops::Range<u64>, CoordError> {
        let n = n.max(1);
        let delta = i64::try_from(n).map_err(|_| CoordError::Corrupt("block too large".into()))?;
        let last = self.counter.add(delta).await?;
        Ok(last - n + 1..last + 1)
    }

    /// The next id: greater than every id this sequence handed out before, unique across
    /// every client of the same sequence.
    pub async fn next(&mut self) -> Result<u64, CoordError> {
        if self.next >= self.end {
            let range = self.reserve(self.block).await?;
            self.next = range.start;
            self.end = range.end;
        }
        let id = self.next;
        self.next += 1;
        Ok(id)
    }
}
