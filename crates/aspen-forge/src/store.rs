//! This node's copies of the packs the forge stores as blobs, as files git and gix can open.
//!
//! The blobs are the truth; these files are a cache any node can rebuild: a pack a node
//! lacks is fetched from the cluster's blob store the first time a fetch or push needs it.
//! Layout under `<data dir>/forge/`:
//!
//! - `packs/pack-<name>.pack` and `.idx`: one copy of each pack this node has used;
//! - `repos/<hash of the repository name>/objects/pack/`: hard links to the packs of one
//!   repository and its ancestors (a fork links its parent's packs: no copy), which is the
//!   object directory `git upload-pack` serves fetches from;
//! - `incoming/`: packs being received, moved into `packs/` once verified;
//! - `sessions/`: one small git directory per fetch being served (refs from the KV, objects
//!   from the repository's object directory).
//!
//! Files are written under a temporary name and renamed, so a reader never sees half a pack.

use std::path::{Path, PathBuf};
use std::sync::Arc;

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
        for dir in ["packs", "repos", "incoming", "sessions"] {
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

    /// The object directory of `repo` holding exactly `packs` (its own and its ancestors'),
    /// each fetched if missing and linked in. Links to packs no longer listed are left for
    /// [`PackStore::prune_repo`]: a fetch may still be reading them.
    pub async fn objects_dir(&self, repo: &str, packs: &[(String, PackRecord)]) -> Result<PathBuf, AspenError> {
        let objects = self.root.join("repos").join(repo_dir_name(repo)).join("objects");
        let pack_dir = objects.join("pack");
        tokio::fs::create_dir_all(&pack_dir).await.map_err(|e| io_error("cannot create an object directory", e))?;
        for (name, record) in packs {
            let (pack, index) = self.ensure_local(name, record).await?;
            for (from, file) in [(pack, format!("pack-{name}.pack")), (index, format!("pack-{name}.idx"))] {
                let to = pack_dir.join(file);
                if tokio::fs::try_exists(&to).await.unwrap_or(false) {
                    continue;
                }
                match tokio::fs::hard_link(&from, &to).await {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(io_error(format!("cannot link {} into place", from.display()), e)),
                }
            }
        }
        Ok(objects)
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

/// The directory name of a repository's objects: a hash, since names nest (`a` and `a/b`).
fn repo_dir_name(repo: &str) -> String {
    let hash = blake3::hash(repo.as_bytes());
    data_encoding::HEXLOWER.encode(&hash.as_bytes()[..16])
}
