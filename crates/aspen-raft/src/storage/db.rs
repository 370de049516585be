//! An open redb file that says when it is closed.
//!
//! Many holders share one file (Raft, the flusher thread, readers, blocking tasks), so
//! no single drop closes it. A node that stops and starts again in the same process (a
//! test, an embedding) must know the file is released before it opens it again: redb
//! refuses a second open of a file this process holds.

use std::ops::Deref;

use tokio::sync::watch;

/// One open redb database; the [`Closed`] signal fires after the file is closed.
pub struct Db {
    // Field order is drop order: the file closes before the signal fires.
    db: redb::Database,
    closed: watch::Sender<()>,
}

impl Db {
    pub(crate) fn new(db: redb::Database) -> Self {
        Db { db, closed: watch::Sender::new(()) }
    }

    fn closed(&self) -> watch::Receiver<()> {
        self.closed.subscribe()
    }
}

impl Deref for Db {
    type Target = redb::Database;

    fn deref(&self) -> &redb::Database {
        &self.db
    }
}

/// Resolves once every file of a node's storage is closed.
pub struct Closed(Vec<watch::Receiver<()>>);

impl Closed {
    pub(crate) fn of(dbs: &[&Db]) -> Self {
        Closed(dbs.iter().map(|db| db.closed()).collect())
    }

    /// Waits until the last holder of every file dropped it.
    pub async fn wait(mut self) {
        for rx in &mut self.0 {
            // Nothing is ever sent: `changed` fails only once the sender, dropped right
            // after the file, is gone.
            while rx.changed().await.is_ok() {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn closed_fires_only_after_the_last_holder_drops_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.redb");
        let db = Arc::new(Db::new(redb::Database::create(&path).unwrap()));
        let closed = Closed::of(&[&db]);
        let other = db.clone();
        let wait = tokio::spawn(closed.wait());
        drop(db);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!wait.is_finished(), "one holder still has the file");
        let holder = std::thread::spawn(move || drop(other));
        tokio::time::timeout(Duration::from_secs(30), wait).await.expect("closed within the bound").unwrap();
        holder.join().unwrap();
        // The file is released: this process can open it again.
        redb::Database::create(&path).expect("reopen after Closed fired");
    }
}
