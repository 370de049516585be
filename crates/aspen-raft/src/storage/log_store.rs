//! openraft's log storage over the `raft_log` and `raft_meta` tables.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use redb::{Database, Durability, ReadableDatabase, ReadableTable};

use super::io_err;
use super::tables::{self, LOG, RAFT_META};
use crate::types::{Entry, LogId, TypeConfig, Vote};

#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
    /// Latest committed log id openraft told us; persisted with the next append.
    committed: Arc<std::sync::Mutex<Option<LogId>>>,
    appends: Arc<AtomicU64>,
}

impl LogStore {
    pub(super) fn new(db: Arc<Database>) -> Self {
        LogStore { db, committed: Default::default(), appends: Default::default() }
    }

    /// Number of durable append commits so far (one fsync each).
    pub fn append_count(&self) -> u64 {
        self.appends.load(Ordering::Relaxed)
    }

    fn read_meta<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<Option<T>, std::io::Error> {
        let txn = self.db.begin_read().map_err(io_err)?;
        let table = txn.open_table(RAFT_META).map_err(io_err)?;
        match table.get(key).map_err(io_err)? {
            Some(v) => Ok(Some(tables::decode(v.value())?)),
            None => Ok(None),
        }
    }

    async fn write<F>(&self, durability: Durability, f: F) -> Result<(), std::io::Error>
    where
        F: FnOnce(&redb::WriteTransaction) -> Result<(), std::io::Error> + Send + 'static,
    {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let mut txn = db.begin_write().map_err(io_err)?;
            txn.set_durability(durability).map_err(io_err)?;
            f(&txn)?;
            txn.commit().map_err(io_err)
        })
        .await
        .map_err(io_err)?
    }
}

fn to_bounds<RB: RangeBounds<u64>>(range: &RB) -> (Bound<u64>, Bound<u64>) {
    (range.start_bound().cloned(), range.end_bound().cloned())
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, std::io::Error> {
        let txn = self.db.begin_read().map_err(io_err)?;
        let table = txn.open_table(LOG).map_err(io_err)?;
        let mut out = Vec::new();
        for item in table.range::<u64>(to_bounds(&range)).map_err(io_err)? {
            let (_, v) = item.map_err(io_err)?;
            out.push(tables::decode(v.value())?);
        }
        Ok(out)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, std::io::Error> {
        self.read_meta(tables::META_VOTE)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, std::io::Error> {
        let purged: Option<LogId> = self.read_meta(tables::META_PURGED)?;
        let txn = self.db.begin_read().map_err(io_err)?;
        let table = txn.open_table(LOG).map_err(io_err)?;
        let last = match table.last().map_err(io_err)? {
            Some((_, v)) => Some(tables::decode::<Entry>(v.value())?.log_id()),
            None => purged,
        };
        Ok(LogState { last_purged_log_id: purged, last_log_id: last })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), std::io::Error> {
        let bytes = tables::encode(vote)?;
        self.write(Durability::Immediate, move |txn| {
            let mut t = txn.open_table(RAFT_META).map_err(io_err)?;
            t.insert(tables::META_VOTE, bytes.as_slice()).map_err(io_err)?;
            Ok(())
        })
        .await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), std::io::Error> {
        // Kept in memory and written with the next append: no extra commit per entry.
        if let Ok(mut c) = self.committed.lock() {
            *c = committed;
        }
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, std::io::Error> {
        self.read_meta(tables::META_COMMITTED)
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> Result<(), std::io::Error>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut encoded = Vec::new();
        for entry in entries {
            encoded.push((entry.log_id().index, tables::encode(&entry)?));
        }
        let committed = self.committed.lock().map(|c| *c).unwrap_or(None);
        let committed = committed.map(|c| tables::encode(&c)).transpose()?;
        let result = self
            .write(Durability::Immediate, move |txn| {
                let mut t = txn.open_table(LOG).map_err(io_err)?;
                for (index, bytes) in &encoded {
                    t.insert(*index, bytes.as_slice()).map_err(io_err)?;
                }
                if let Some(c) = committed {
                    let mut m = txn.open_table(RAFT_META).map_err(io_err)?;
                    m.insert(tables::META_COMMITTED, c.as_slice()).map_err(io_err)?;
                }
                Ok(())
            })
            .await;
        self.appends.fetch_add(1, Ordering::Relaxed);
        match result {
            Ok(()) => {
                callback.io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.io_completed(Err(std::io::Error::other(e.to_string())));
                Err(e)
            }
        }
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), std::io::Error> {
        let from = last_log_id.map_or(0, |l| l.index + 1);
        self.write(Durability::Immediate, move |txn| {
            let mut t = txn.open_table(LOG).map_err(io_err)?;
            t.retain_in::<u64, _>(from.., |_, _| false).map_err(io_err)?;
            Ok(())
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), std::io::Error> {
        let upto = log_id.index;
        let bytes = tables::encode(&log_id)?;
        // Durable: this commit also persists every earlier non-durable state machine
        // commit, so the purged prefix is never needed for replay.
        self.write(Durability::Immediate, move |txn| {
            let mut t = txn.open_table(LOG).map_err(io_err)?;
            t.retain_in::<u64, _>(..=upto, |_, _| false).map_err(io_err)?;
            let mut m = txn.open_table(RAFT_META).map_err(io_err)?;
            m.insert(tables::META_PURGED, bytes.as_slice()).map_err(io_err)?;
            Ok(())
        })
        .await
    }
}
