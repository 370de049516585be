//! openraft's log storage over the `raft_log` and `raft_meta` tables.
//!
//! `append` commits entries without fsync, which makes them visible to replication at
//! once, and hands the flush callback to the [`Flusher`] thread. The flusher group-commits:
//! one empty durable commit persists every append before it, then it reports them all
//! flushed. So the leader replicates while its own fsync runs, and openraft counts an
//! entry as stored here only once it is on disk. Vote, truncation and purge are durable
//! before they return, and wait for earlier appends' flushes first, so callbacks are
//! reported in log order.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use redb::{Database, Durability, ReadableDatabase, ReadableTable};

use super::db::Db;
use super::tables::{self, LOG, RAFT_META};
use super::{durable_commit, io_err};
use crate::types::{Entry, LogId, TypeConfig, Vote};

/// Work for the flusher thread.
enum FlushWork {
    /// Report this append flushed once it is durable.
    Append(IOFlushed<TypeConfig>),
    /// Answer once every earlier append is durable and reported.
    Barrier(std::sync::mpsc::SyncSender<Result<(), String>>),
}

/// The thread that makes non-durable log appends durable, many per fsync.
struct Flusher {
    tx: std::sync::mpsc::Sender<FlushWork>,
}

impl Flusher {
    fn start(db: Arc<Db>, fsyncs: Arc<AtomicU64>) -> Self {
        let (tx, rx) = std::sync::mpsc::channel::<FlushWork>();
        let spawned = std::thread::Builder::new().name("aspen-log-flush".into()).spawn(move || {
            while let Ok(first) = rx.recv() {
                let mut work = vec![first];
                work.extend(rx.try_iter());
                let result = durable_commit(&db).map_err(|e| e.to_string());
                fsyncs.fetch_add(1, Ordering::Relaxed);
                for item in work {
                    match item {
                        FlushWork::Append(cb) => cb.io_completed(result.clone().map_err(std::io::Error::other)),
                        FlushWork::Barrier(done) => {
                            let _ = done.send(result.clone());
                        }
                    }
                }
            }
        });
        if let Err(e) = spawned {
            tracing::error!("cannot start the log flusher thread: {e}");
        }
        Flusher { tx }
    }

    fn flush_later(&self, callback: IOFlushed<TypeConfig>) -> Result<(), std::io::Error> {
        self.tx.send(FlushWork::Append(callback)).map_err(|_| io_err("log flusher stopped"))
    }

    /// Waits until every append handed over before this call is durable and reported.
    fn barrier(&self) -> Result<(), std::io::Error> {
        let (done, wait) = std::sync::mpsc::sync_channel(1);
        self.tx.send(FlushWork::Barrier(done)).map_err(|_| io_err("log flusher stopped"))?;
        wait.recv().map_err(|_| io_err("log flusher stopped"))?.map_err(std::io::Error::other)
    }
}

#[derive(Clone)]
pub struct LogStore {
    db: Arc<Db>,
    /// The state machine's file, made durable before any purge.
    state_db: Arc<Db>,
    flusher: Arc<Flusher>,
    /// Latest committed log id openraft told us; persisted with the next append.
    committed: Arc<std::sync::Mutex<Option<LogId>>>,
    appends: Arc<AtomicU64>,
    /// Encoded bytes of every entry appended since this process started.
    appended_bytes: Arc<AtomicU64>,
}

impl LogStore {
    pub(super) fn new(db: Arc<Db>, state_db: Arc<Db>) -> Self {
        let appends = Arc::new(AtomicU64::new(0));
        let flusher = Arc::new(Flusher::start(db.clone(), appends.clone()));
        LogStore { db, state_db, flusher, committed: Default::default(), appends, appended_bytes: Default::default() }
    }

    /// Number of log fsyncs so far (each covers every append before it).
    pub fn append_count(&self) -> u64 {
        self.appends.load(Ordering::Relaxed)
    }

    /// Encoded bytes of every entry appended since this process started.
    pub fn appended_bytes(&self) -> u64 {
        self.appended_bytes.load(Ordering::Relaxed)
    }

    fn read_meta<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<Option<T>, std::io::Error> {
        let txn = self.db.begin_read().map_err(io_err)?;
        let table = txn.open_table(RAFT_META).map_err(io_err)?;
        match table.get(key).map_err(io_err)? {
            Some(v) => Ok(Some(tables::decode(v.value())?)),
            None => Ok(None),
        }
    }

    /// Runs one write transaction. A non-durable one (an append) runs inline: it is short.
    /// A durable one (vote, truncation, purge) first waits for earlier appends to be
    /// flushed and reported, so flush reports never cross it, and runs on a blocking
    /// thread, so its fsync never stalls the node's async thread.
    async fn write<F>(&self, durability: Durability, f: F) -> Result<(), std::io::Error>
    where
        F: FnOnce(&redb::WriteTransaction) -> Result<(), std::io::Error> + Send + 'static,
    {
        let db = self.db.clone();
        let run = move |db: &Database| {
            let mut txn = db.begin_write().map_err(io_err)?;
            txn.set_durability(durability).map_err(io_err)?;
            f(&txn)?;
            txn.commit().map_err(io_err)
        };
        if matches!(durability, Durability::None) {
            return super::blocking(|| run(&db));
        }
        let flusher = self.flusher.clone();
        tokio::task::spawn_blocking(move || {
            flusher.barrier()?;
            run(&db)
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
        let bytes: usize = encoded.iter().map(|(_, b)| b.len()).sum();
        self.appended_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        let committed = self.committed.lock().map(|c| *c).unwrap_or(None);
        let committed = committed.map(|c| tables::encode(&c)).transpose()?;
        // Visible to readers (replication) now; durable when the flusher reports it.
        self.write(Durability::None, move |txn| {
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
        .await?;
        self.flusher.flush_later(callback)
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
        // openraft purges only what a snapshot covers, so the state machine has applied
        // it; making that durable first means the purged prefix is never needed for replay.
        let state_db = self.state_db.clone();
        tokio::task::spawn_blocking(move || durable_commit(&state_db)).await.map_err(io_err)??;
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
