//! The node's in-memory view of the replicated security state: the cluster root key and
//! the revoked token links. The state machine updates it right after each apply commits
//! (before any answer goes out), so a revocation is in force on a node as soon as that
//! node has applied it.

use std::collections::HashSet;
use std::sync::RwLock;

use redb::{Database, ReadableDatabase, ReadableTable};

use super::SecurityChanges;

#[derive(Debug, Default)]
pub struct SecurityView {
    root: RwLock<Option<[u8; 32]>>,
    revoked: RwLock<HashSet<[u8; 32]>>,
}

impl SecurityView {
    /// The cluster root public key, once the cluster recorded it.
    pub fn root(&self) -> Option<[u8; 32]> {
        self.root.read().map(|r| *r).unwrap_or(None)
    }

    pub fn is_revoked(&self, id: &[u8; 32]) -> bool {
        self.revoked.read().map(|r| r.contains(id)).unwrap_or(true)
    }

    pub(crate) fn apply(&self, changes: &SecurityChanges) {
        if let Some(root) = changes.cluster_root
            && let Ok(mut r) = self.root.write()
        {
            *r = Some(root);
        }
        if !changes.revoked.is_empty()
            && let Ok(mut set) = self.revoked.write()
        {
            set.extend(changes.revoked.iter().copied());
        }
    }

    /// Replaces the view with what the state machine file holds (at open, after a
    /// snapshot install).
    pub(crate) fn reload(&self, db: &Database) -> std::io::Result<()> {
        use super::tables::{REVOKED, SM_META};
        let io = |e: redb::Error| std::io::Error::other(e.to_string());
        let txn = db.begin_read().map_err(|e| io(e.into()))?;
        let meta = txn.open_table(SM_META).map_err(|e| io(e.into()))?;
        let root = super::read_cluster_root(&meta).map_err(std::io::Error::other)?;
        let mut revoked = HashSet::new();
        for item in txn.open_table(REVOKED).map_err(|e| io(e.into()))?.iter().map_err(|e| io(e.into()))? {
            let (k, _) = item.map_err(|e| io(e.into()))?;
            if let Ok(id) = <[u8; 32]>::try_from(k.value()) {
                revoked.insert(id);
            }
        }
        if let Ok(mut r) = self.root.write() {
            *r = root;
        }
        if let Ok(mut set) = self.revoked.write() {
            *set = revoked;
        }
        Ok(())
    }
}
