//! A node's storage: two redb files in its data dir.
//!
//! - `raft-log.redb` holds the Raft log, the vote, the last known commit index and the
//!   purge point. An append commits without fsync (visible to replication at once) and
//!   a flusher thread makes many appends durable with one fsync; openraft counts an
//!   entry as stored only then.
//! - `state.redb` holds the state machine: the KV, leases and the applied log id. Applying
//!   commits without fsync; every few seconds an apply commits durably instead.
//!
//! Two files, because a redb durable commit writes every page dirtied since the last
//! one: with one file, each log fsync also carried the state machine's pages (twice the
//! bytes per write, measured in docs/benchmarks.md). After a crash each file returns to
//! its last durable commit: the state machine to some applied index at or below the
//! commit index, from where openraft replays the log. It may also be ahead of a
//! follower's durable log (it applied entries the cluster had committed before its own
//! log fsync ran); openraft then purges the log up to the applied index on start.
//! Purging the log first makes the state machine durable, so a purge never drops an
//! entry the durable state machine still needs.

mod db;
mod log_store;
mod reader;
mod redb_kv;
mod security;
mod snapshot;
mod state_machine;
pub(crate) mod tables;

use std::path::Path;
use std::sync::Arc;

pub use db::Closed;
use db::Db;
pub use log_store::LogStore;
pub use reader::{KvReader, ScanOptions};
pub(crate) use redb_kv::{SecurityChanges, read_cluster_root};
pub use state_machine::StateMachine;

use crate::watch::WatchHub;
pub use security::SecurityView;

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot open database {path}: {reason}")]
    Database { path: String, reason: String },
    #[error("cannot prepare {path}: {source}")]
    Io { path: String, source: std::io::Error },
}

/// The Raft log file in a data dir.
pub const LOG_FILE: &str = "raft-log.redb";
/// The state machine file in a data dir.
pub const STATE_FILE: &str = "state.redb";
/// The single file of the first storage layout, which this version does not read.
const OLD_SINGLE_FILE: &str = "aspen.redb";

fn open_db(path: &Path, ensure: fn(&redb::Database) -> Result<(), redb::Error>) -> Result<Arc<Db>, OpenError> {
    let fail = |reason: String| OpenError::Database { path: path.display().to_string(), reason };
    let db = redb::Database::create(path).map_err(|e| fail(e.to_string()))?;
    ensure(&db).map_err(|e| fail(e.to_string()))?;
    Ok(Arc::new(Db::new(db)))
}

/// A node's opened storage and the views of it the node serves from.
pub struct Storage {
    pub log: LogStore,
    pub state_machine: StateMachine,
    pub reader: KvReader,
    pub hub: Arc<WatchHub>,
    pub security: Arc<SecurityView>,
    /// Fires once both files are closed: every holder of the storage dropped it.
    pub closed: Closed,
}

/// Opens (or creates) the node's storage under `data_dir`.
pub fn open_storage(data_dir: &Path) -> Result<Storage, OpenError> {
    let old = data_dir.join(OLD_SINGLE_FILE);
    if old.exists() && !data_dir.join(LOG_FILE).exists() {
        return Err(OpenError::Database {
            path: old.display().to_string(),
            reason: format!(
                "this data dir uses the old single-file layout, which this version cannot read; \
                 start from an empty data dir (or move {OLD_SINGLE_FILE} away) and let the node catch up from the cluster"
            ),
        });
    }
    let snap_dir = data_dir.join("snapshots");
    std::fs::create_dir_all(&snap_dir)
        .map_err(|source| OpenError::Io { path: snap_dir.display().to_string(), source })?;
    let log_db = open_db(&data_dir.join(LOG_FILE), tables::ensure_log_tables)?;
    let state_db = open_db(&data_dir.join(STATE_FILE), tables::ensure_state_tables)?;
    tables::ensure_lease_expiry_index(&state_db).map_err(|e| OpenError::Database {
        path: data_dir.join(STATE_FILE).display().to_string(),
        reason: format!("cannot index lease expiries: {e}"),
    })?;
    let reader = KvReader::new(state_db.clone());
    let hub = Arc::new(WatchHub::new(reader.revision().unwrap_or(0)));
    let security = Arc::new(SecurityView::default());
    security.reload(&state_db).map_err(|e| OpenError::Database {
        path: data_dir.join(STATE_FILE).display().to_string(),
        reason: e.to_string(),
    })?;
    let closed = Closed::of(&[&log_db, &state_db]);
    let log = LogStore::new(log_db, state_db.clone());
    let state_machine = StateMachine::new(state_db, snap_dir, hub.clone(), security.clone());
    Ok(Storage { log, state_machine, reader, hub, security, closed })
}

/// An empty durable commit: persists every earlier non-durable commit of the file.
pub(crate) fn durable_commit(db: &redb::Database) -> Result<(), std::io::Error> {
    let mut txn = db.begin_write().map_err(io_err)?;
    txn.set_durability(redb::Durability::Immediate).map_err(io_err)?;
    txn.commit().map_err(io_err)
}

pub(crate) fn io_err(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

/// Runs a short blocking storage step: via `block_in_place` on a multi-threaded runtime,
/// inline on a current-thread one (where `block_in_place` is not allowed).
pub(crate) fn blocking<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}
