//! Reads of the applied state, from redb read transactions (which see every commit,
//! durable or not, and never an uncommitted Raft entry: only applied entries are
//! written to these tables).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aspen_core::error::AspenError;
use aspen_core::limits::{MAX_SCAN_SNAPSHOTS, SCAN_SNAPSHOT_IDLE_MS};
use aspen_core::types::{KeyValue, KvEntry, LeaseId, LeaseRecord};
use redb::{ReadTransaction, ReadableDatabase, ReadableTable};

use super::db::Db;
use super::redb_kv::read_u64;
use super::tables::{self, KV, LEASES, SM_META};

#[derive(Clone)]
pub struct KvReader {
    db: Arc<Db>,
    /// Read transactions kept for scans whose pages all read one revision.
    snapshots: Arc<Mutex<HashMap<u64, Snapshot>>>,
}

struct Snapshot {
    txn: Arc<ReadTransaction>,
    last_used: Instant,
}

/// How one page of a scan is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScanOptions {
    /// Most entries in the page.
    pub limit: u32,
    /// Most bytes of keys and values in the page; it ends early (with `more`) past this,
    /// but always holds at least one entry.
    pub max_bytes: usize,
    /// Leave every value empty.
    pub keys_only: bool,
    /// `None`: the current state. `Some(0)`: the current state, kept for later pages.
    /// `Some(r)`: the state kept at revision `r` (or the current one, if still at `r`).
    pub at_revision: Option<u64>,
}

fn st(e: impl std::fmt::Display) -> AspenError {
    AspenError::storage(e)
}

impl KvReader {
    pub(super) fn new(db: Arc<Db>) -> Self {
        KvReader { db, snapshots: Arc::default() }
    }

    /// The value at `key` and the store's revision, read in one consistent view.
    pub fn get(&self, key: &[u8]) -> Result<(Option<KeyValue>, u64), AspenError> {
        let txn = self.db.begin_read().map_err(st)?;
        let revision = read_u64(&txn.open_table(SM_META).map_err(st)?, tables::SM_REVISION)?.unwrap_or(0);
        let table = txn.open_table(KV).map_err(st)?;
        let kv = match table.get(key).map_err(st)? {
            Some(v) => Some(tables::decode::<KvEntry>(v.value()).map_err(st)?.into_key_value(key.to_vec())),
            None => None,
        };
        Ok((kv, revision))
    }

    /// Up to `limit` keys in `[start, end)`; `more` says whether the range holds more.
    pub fn scan(&self, start: &[u8], end: &[u8], limit: u32) -> Result<(Vec<KeyValue>, bool, u64), AspenError> {
        let options = ScanOptions {
            limit,
            max_bytes: aspen_core::limits::MAX_SCAN_PAGE_BYTES,
            keys_only: false,
            at_revision: None,
        };
        self.scan_page(start, end, options)
    }

    /// One page of keys in `[start, end)`, read as `options` says; `more` says whether the
    /// range holds more. Returns the revision the page was read at.
    pub fn scan_page(
        &self,
        start: &[u8],
        end: &[u8],
        options: ScanOptions,
    ) -> Result<(Vec<KeyValue>, bool, u64), AspenError> {
        let txn = match options.at_revision {
            None => Arc::new(self.db.begin_read().map_err(st)?),
            Some(0) => {
                let txn = Arc::new(self.db.begin_read().map_err(st)?);
                let revision = txn_revision(&txn)?;
                self.keep_snapshot(revision, txn.clone());
                txn
            }
            Some(revision) => self.snapshot(revision)?,
        };
        let revision = txn_revision(&txn)?;
        if !end.is_empty() && end <= start {
            return Ok((Vec::new(), false, revision));
        }
        let table = txn.open_table(KV).map_err(st)?;
        let iter = if end.is_empty() { table.range::<&[u8]>(start..) } else { table.range::<&[u8]>(start..end) };
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let mut more = false;
        for item in iter.map_err(st)? {
            if out.len() == options.limit as usize || (!out.is_empty() && bytes >= options.max_bytes) {
                more = true;
                break;
            }
            let (k, v) = item.map_err(st)?;
            let mut kv = tables::decode::<KvEntry>(v.value()).map_err(st)?.into_key_value(k.value().to_vec());
            if options.keys_only {
                kv.value = Vec::new();
            }
            bytes += kv.key.len() + kv.value.len();
            if bytes > options.max_bytes && !out.is_empty() {
                more = true;
                break;
            }
            out.push(kv);
        }
        Ok((out, more, revision))
    }

    /// Keeps `txn` for later pages at `revision`, forgetting idle and excess snapshots.
    fn keep_snapshot(&self, revision: u64, txn: Arc<ReadTransaction>) {
        let Ok(mut kept) = self.snapshots.lock() else { return };
        let idle = Duration::from_millis(SCAN_SNAPSHOT_IDLE_MS);
        kept.retain(|_, s| s.last_used.elapsed() < idle);
        while kept.len() >= MAX_SCAN_SNAPSHOTS {
            let Some(oldest) = kept.iter().min_by_key(|(_, s)| s.last_used).map(|(r, _)| *r) else { break };
            kept.remove(&oldest);
        }
        kept.insert(revision, Snapshot { txn, last_used: Instant::now() });
    }

    /// The state at `revision`: a kept snapshot, or the current state if nothing changed since.
    fn snapshot(&self, revision: u64) -> Result<Arc<ReadTransaction>, AspenError> {
        if let Ok(mut kept) = self.snapshots.lock()
            && let Some(s) = kept.get_mut(&revision)
        {
            if s.last_used.elapsed() < Duration::from_millis(SCAN_SNAPSHOT_IDLE_MS) {
                s.last_used = Instant::now();
                return Ok(s.txn.clone());
            }
            kept.remove(&revision);
        }
        let txn = Arc::new(self.db.begin_read().map_err(st)?);
        if txn_revision(&txn)? == revision {
            self.keep_snapshot(revision, txn.clone());
            return Ok(txn);
        }
        Err(AspenError::RevisionUnavailable {
            revision,
            reason: "this node keeps no snapshot at that revision (it expired, or another node read the first page)"
                .into(),
        })
    }

    /// Drops every kept scan snapshot (after a snapshot install replaced the state).
    pub fn forget_snapshots(&self) {
        if let Ok(mut kept) = self.snapshots.lock() {
            kept.clear();
        }
    }

    pub fn revision(&self) -> Result<u64, AspenError> {
        let txn = self.db.begin_read().map_err(st)?;
        Ok(read_u64(&txn.open_table(SM_META).map_err(st)?, tables::SM_REVISION)?.unwrap_or(0))
    }

    /// Up to `max` leases whose expiry is at or before `now_ms`, soonest first: a range read
    /// of the expiry index, whatever the number of live leases.
    pub fn expired_leases(&self, now_ms: u64, max: usize) -> Result<Vec<LeaseId>, AspenError> {
        let txn = self.db.begin_read().map_err(st)?;
        let index = txn.open_table(tables::LEASE_EXPIRY).map_err(st)?;
        let end = tables::expiry_key(now_ms, u64::MAX);
        let mut due = Vec::new();
        for item in index.range::<&[u8]>(..=end.as_slice()).map_err(st)?.take(max) {
            let (key, _) = item.map_err(st)?;
            let id = key.value().get(8..16).and_then(|b| <[u8; 8]>::try_from(b).ok()).map(u64::from_be_bytes);
            due.push(LeaseId(id.ok_or_else(|| AspenError::storage("a lease expiry key is not 16 bytes"))?));
        }
        Ok(due)
    }

    pub fn leases(&self) -> Result<Vec<LeaseRecord>, AspenError> {
        let txn = self.db.begin_read().map_err(st)?;
        let table = txn.open_table(LEASES).map_err(st)?;
        let mut out = Vec::new();
        for item in table.iter().map_err(st)? {
            let (_, v) = item.map_err(st)?;
            out.push(tables::decode(v.value()).map_err(st)?);
        }
        Ok(out)
    }
}

fn txn_revision(txn: &ReadTransaction) -> Result<u64, AspenError> {
    Ok(read_u64(&txn.open_table(SM_META).map_err(st)?, tables::SM_REVISION)?.unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use aspen_core::apply::{apply_batch, expired_leases};
    use aspen_core::command::{WriteBatch, WriteCommand};
    use aspen_core::mem_store::MemStore;
    use aspen_core::store::KvStore;
    use proptest::prelude::*;

    use super::*;
    use crate::storage::redb_kv::RedbKv;

    #[derive(Debug, Clone)]
    enum Op {
        Grant(u64),
        KeepAlive(u64),
        Revoke(u64),
        RefreshAll,
        Expire(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (1_000u64..20_000).prop_map(Op::Grant),
            (1u64..8).prop_map(Op::KeepAlive),
            (1u64..8).prop_map(Op::Revoke),
            Just(Op::RefreshAll),
            (1u64..8).prop_map(Op::Expire),
        ]
    }

    fn command(op: &Op) -> WriteCommand {
        match op {
            Op::Grant(ttl_ms) => WriteCommand::LeaseGrant { ttl_ms: *ttl_ms },
            Op::KeepAlive(id) => WriteCommand::LeaseKeepAlive { id: LeaseId(*id) },
            Op::Revoke(id) => WriteCommand::LeaseRevoke { id: LeaseId(*id) },
            Op::RefreshAll => WriteCommand::LeaseRefreshAll,
            Op::Expire(id) => WriteCommand::LeaseExpire { ids: vec![LeaseId(*id)] },
        }
    }

    proptest! {
        /// The reaper's index answers what scanning every lease would, after any sequence of
        /// grants, keepalives, revocations, refreshes and expiries.
        #[test]
        fn the_expiry_index_agrees_with_a_scan_of_every_lease(
            ops in proptest::collection::vec((op(), 0u64..5_000), 1..40),
            now in 0u64..40_000,
            max in 1usize..6,
        ) {
            let dir = tempfile::tempdir().unwrap();
            let db = Arc::new(Db::new(redb::Database::create(dir.path().join("state.redb")).unwrap()));
            tables::ensure_state_tables(&db).unwrap();
            let mut model = MemStore::new();
            let mut clock = 0u64;
            for (op, advance) in &ops {
                clock += advance;
                let batch = WriteBatch { leader_time_ms: clock, commands: vec![command(op)] };
                apply_batch(&mut model, &batch).unwrap();
                let txn = db.begin_write().unwrap();
                let mut store = RedbKv::open(&txn).unwrap();
                apply_batch(&mut store, &batch).unwrap();
                store.finish(&txn).unwrap();
                txn.commit().unwrap();
            }
            let reader = KvReader::new(db.clone());
            let want = expired_leases(&model.leases().unwrap(), now, max);
            prop_assert_eq!(reader.expired_leases(now, max).unwrap(), want.clone());
            // An index lost (or never written) is rebuilt on open to the same answer.
            let txn = db.begin_write().unwrap();
            txn.open_table(tables::LEASE_EXPIRY).unwrap().retain(|_, _| false).unwrap();
            txn.commit().unwrap();
            tables::ensure_lease_expiry_index(&db).unwrap();
            prop_assert_eq!(reader.expired_leases(now, max).unwrap(), want);
        }
    }
}
