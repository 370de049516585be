//! This node's copies of the packs the forge stores as blobs, as files git and gix can open.
//!
//! The blobs are the truth; these files are a cache any node can rebuild: a pack a node
//! lacks is fetched from the cluster's blob store the first time a fetch or push needs it.
//! Layout under `<data dir>/forge/`:
//!
//! - `packs/pack-<name>.pack` and `.idx`: one copy of each pack this node has used;
//! - `incoming/`: packs being received, moved into `packs/` once verified;
//! - `sessions/`: one small git directory per fetch being served or collection being run:
//!   refs from the KV, and hard links to the packs of the repository and its ancestors (a
//!   fork links its parent's packs: no copy).
//!
//! Files are written under a temporary name and renamed, so a reader never sees half a pack.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use aspen_app::Services;
use aspen_blob::LocalBlobs;
use aspen_core::AspenError;
use futures::StreamExt;
use tokio::io::AsyncWriteExt;

use crate::records::PackRecord;

/// The node's pack cache (see the module docs).
#[derive(Debug, Clone)]
pub struct PackStore {
    root: PathBuf,
    services: Arc<Services>,
}

fn io_error(what: impl std::fmt::Display, e: std::io::Error) -> AspenError {
    AspenError::internal(format!("{what}: {e}"))
}

/// A fresh random name for a temporary file or directory.
pub fn random_name() -> String {
    format!("{:016x}", rand::random::<u64>())
}

impl PackStore {
    /// Opens the cache under `root`, removing what an interrupted receive or fetch left.
    pub fn open(root: PathBuf, services: Arc<Services>) -> Result<Self, AspenError> {
        for dir in ["incoming", "sessions"] {
            let path = root.join(dir);
            if path.exists() {
                std::fs::remove_dir_all(&path).map_err(|e| io_error(format!("cannot clear {}", path.display()), e))?;
            }
        }
        for dir in ["packs", "incoming", "sessions"] {
            let path = root.join(dir);
            std::fs::create_dir_all(&path).map_err(|e| io_error(format!("cannot create {}", path.display()), e))?;
        }
        Ok(PackStore { root, services })
    }

    /// The blob store of this node.
    pub fn blobs(&self) -> Result<Arc<LocalBlobs>, AspenError> {
        self.services.get::<LocalBlobs>(LocalBlobs::SERVICE).ok_or_else(|| AspenError::Unavailable {
            reason: "the forge needs the blob app on this node, and it is not running".into(),
        })
    }

    /// Where this node keeps pack `name`: the pack, then its index.
    pub fn pack_paths(&self, name: &str) -> (PathBuf, PathBuf) {
        let base = self.root.join("packs");
        (base.join(format!("pack-{name}.pack")), base.join(format!("pack-{name}.idx")))
    }

    /// A fresh directory for one received pack.
    pub fn incoming_dir(&self) -> Result<PathBuf, AspenError> {
        let dir = self.root.join("incoming").join(random_name());
        std::fs::create_dir_all(&dir).map_err(|e| io_error("cannot create an incoming directory", e))?;
        Ok(dir)
    }

    /// A fresh directory for one fetch session.
    pub fn session_dir(&self) -> Result<PathBuf, AspenError> {
        let dir = self.root.join("sessions").join(random_name());
        std::fs::create_dir_all(&dir).map_err(|e| io_error("cannot create a session directory", e))?;
        Ok(dir)
    }

    /// Moves a verified pack and its index from `incoming/` into the cache as `name`.
    pub fn adopt(&self, name: &str, pack: &Path, index: &Path) -> Result<(), AspenError> {
        let (pack_to, index_to) = self.pack_paths(name);
        // The index last: a pack is only looked for through its index.
        std::fs::rename(pack, &pack_to).map_err(|e| io_error("cannot move a received pack into place", e))?;
        std::fs::rename(index, &index_to).map_err(|e| io_error("cannot move a received index into place", e))?;
        Ok(())
    }

    /// Stores a pack and its index as blobs (replicated before this returns): their hashes,
    /// and on how many nodes the pack is.
    pub async fn store_blobs(&self, pack: &Path, index: &Path) -> Result<([u8; 32], [u8; 32], u32), AspenError> {
        let blobs = self.blobs()?;
        let open = |path: &Path| {
            let path = path.to_path_buf();
            async move { tokio::fs::File::open(&path).await.map_err(|e| io_error(path.display(), e)) }
        };
        let pack_blob = blobs.add(open(pack).await?, None).await?;
        let index_blob = blobs.add(open(index).await?, None).await?;
        Ok((pack_blob.hash, index_blob.hash, pack_blob.replicas))
    }

    /// Makes sure this node has pack `name` as files, fetching its blobs if not.
    pub async fn ensure_local(&self, name: &str, record: &PackRecord) -> Result<(PathBuf, PathBuf), AspenError> {
        let (pack, index) = self.pack_paths(name);
        if !tokio::fs::try_exists(&pack).await.unwrap_or(false) {
            self.fetch_blob(record.pack, &pack).await?;
        }
        if !tokio::fs::try_exists(&index).await.unwrap_or(false) {
            self.fetch_blob(record.index, &index).await?;
        }
        Ok((pack, index))
    }

    async fn fetch_blob(&self, hash: [u8; 32], to: &Path) -> Result<(), AspenError> {
        let blobs = self.blobs()?;
        let mut stream = blobs.read_range(hash, 0, u64::MAX).await?;
        let tmp = self.root.join("incoming").join(format!("fetch-{}", random_name()));
        let mut file = tokio::fs::File::create(&tmp).await.map_err(|e| io_error("cannot create a pack file", e))?;
        let written = async {
            while let Some(chunk) = stream.next().await {
                let chunk = chunk?;
                file.write_all(&chunk).await.map_err(|e| io_error("cannot write a pack file", e))?;
            }
            file.sync_all().await.map_err(|e| io_error("cannot sync a pack file", e))?;
            tokio::fs::rename(&tmp, to).await.map_err(|e| io_error("cannot move a fetched pack into place", e))
        }
        .await;
        if written.is_err() {
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        written
    }

    /// Links `packs` (each fetched if missing) into `pack_dir`, an object directory's
    /// `pack/` of one fetch or one collection. A hard link keeps the pack readable for as
    /// long as that directory lives, even once garbage collection has dropped the pack and
    /// [`PackStore::prune`] has removed this node's copy.
    pub async fn link_packs(&self, pack_dir: &Path, packs: &[(String, PackRecord)]) -> Result<(), AspenError> {
        tokio::fs::create_dir_all(pack_dir).await.map_err(|e| io_error("cannot create an object directory", e))?;
        for (name, record) in packs {
            let (pack, index) = self.ensure_local(name, record).await?;
            for (from, file) in [(pack, format!("pack-{name}.pack")), (index, format!("pack-{name}.idx"))] {
                match tokio::fs::hard_link(&from, pack_dir.join(file)).await {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(io_error(format!("cannot link {} into place", from.display()), e)),
                }
            }
        }
        Ok(())
    }

    /// Removes this node's copies of packs not in `keep` (pack names) and older than
    /// `min_age`, so a pack received a moment ago, whose record is not written yet, stays.
    /// Returns how many packs it removed.
    pub fn prune(&self, keep: &HashSet<String>, min_age: Duration) -> Result<usize, AspenError> {
        let dir = self.root.join("packs");
        let entries = std::fs::read_dir(&dir).map_err(|e| io_error(format!("cannot list {}", dir.display()), e))?;
        let mut removed = 0;
        for entry in entries.flatten() {
            let file = entry.file_name();
            let Some(name) = file.to_str().and_then(|f| f.strip_prefix("pack-")).and_then(|f| f.strip_suffix(".idx"))
            else {
                continue;
            };
            if keep.contains(name) {
                continue;
            }
            let age = entry.metadata().and_then(|m| m.modified()).ok().and_then(|t| t.elapsed().ok());
            if age.is_none_or(|age| age < min_age) {
                continue;
            }
            let (pack, index) = self.pack_paths(name);
            // The index first: without it the pack is never looked for.
            let _ = std::fs::remove_file(&index);
            let _ = std::fs::remove_file(&pack);
            removed += 1;
        }
        Ok(removed)
    }

    /// The index files of `packs`, each fetched if missing.
    pub async fn index_paths(&self, packs: &[(String, PackRecord)]) -> Result<Vec<PathBuf>, AspenError> {
        let mut out = Vec::with_capacity(packs.len());
        for (name, record) in packs {
            out.push(self.ensure_local(name, record).await?.1);
        }
        Ok(out)
    }
}
