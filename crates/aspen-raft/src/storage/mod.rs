//! One redb file per node holding the Raft log, the vote and the state machine.
//!
//! Durability: the log append is the durable write (one fsync per `append` call, i.e.
//! per batch of entries). Applying committed entries commits with
//! `Durability::None`; the next durable commit of the same file persists it, and after
//! a crash redb returns to the last durable commit, from where the log is replayed.
//! Purging the log is itself a durable commit, so it can never pass the state
//! machine's durable applied index.

mod log_store;
mod reader;
mod redb_kv;
mod snapshot;
mod state_machine;
mod tables;

use std::path::Path;
use std::sync::Arc;

pub use log_store::LogStore;
pub use reader::KvReader;
pub use state_machine::StateMachine;

use crate::watch::WatchHub;

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot open database {path}: {reason}")]
    Database { path: String, reason: String },
    #[error("cannot prepare {path}: {source}")]
    Io { path: String, source: std::io::Error },
}

/// Opens (or creates) the node's storage under `data_dir`.
pub fn open_storage(data_dir: &Path) -> Result<(LogStore, StateMachine, KvReader, Arc<WatchHub>), OpenError> {
    let db_path = data_dir.join("aspen.redb");
    let snap_dir = data_dir.join("snapshots");
    std::fs::create_dir_all(&snap_dir)
        .map_err(|source| OpenError::Io { path: snap_dir.display().to_string(), source })?;
    let db = redb::Database::create(&db_path)
        .map_err(|e| OpenError::Database { path: db_path.display().to_string(), reason: e.to_string() })?;
    let db = Arc::new(db);
    tables::ensure_tables(&db)
        .map_err(|e| OpenError::Database { path: db_path.display().to_string(), reason: e.to_string() })?;
    let reader = KvReader::new(db.clone());
    let hub = Arc::new(WatchHub::new(reader.revision().unwrap_or(0)));
    let log = LogStore::new(db.clone());
    let sm = StateMachine::new(db, snap_dir, hub.clone());
    Ok((log, sm, reader, hub))
}

pub(crate) fn io_err(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}
