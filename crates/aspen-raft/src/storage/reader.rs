//! Reads of the applied state, from redb read transactions (which see every commit,
//! durable or not, and never an uncommitted Raft entry: only applied entries are
//! written to these tables).

use std::sync::Arc;

use aspen_core::error::AspenError;
use aspen_core::types::{KeyValue, KvEntry, LeaseRecord};
use redb::{Database, ReadableDatabase, ReadableTable};

use super::redb_kv::read_u64;
use super::tables::{self, KV, LEASES, SM_META};

#[derive(Clone)]
pub struct KvReader {
    db: Arc<Database>,
}

fn st(e: impl std::fmt::Display) -> AspenError {
    AspenError::storage(e)
}

impl KvReader {
    pub(super) fn new(db: Arc<Database>) -> Self {
        KvReader { db }
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
        let txn = self.db.begin_read().map_err(st)?;
        let revision = read_u64(&txn.open_table(SM_META).map_err(st)?, tables::SM_REVISION)?.unwrap_or(0);
        if !end.is_empty() && end <= start {
            return Ok((Vec::new(), false, revision));
        }
        let table = txn.open_table(KV).map_err(st)?;
        let iter = if end.is_empty() { table.range::<&[u8]>(start..) } else { table.range::<&[u8]>(start..end) };
        let mut out = Vec::new();
        let mut more = false;
        for item in iter.map_err(st)? {
            if out.len() == limit as usize {
                more = true;
                break;
            }
            let (k, v) = item.map_err(st)?;
            out.push(tables::decode::<KvEntry>(v.value()).map_err(st)?.into_key_value(k.value().to_vec()));
        }
        Ok((out, more, revision))
    }

    pub fn revision(&self) -> Result<u64, AspenError> {
        let txn = self.db.begin_read().map_err(st)?;
        Ok(read_u64(&txn.open_table(SM_META).map_err(st)?, tables::SM_REVISION)?.unwrap_or(0))
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
