//! AspenFS: a filesystem view of a KV prefix, mounted with FUSE.
//!
//! Paths map to keys under a prefix (`fs/NAME/` by convention): a file `a/b` is the key
//! `fs/NAME/a/b`, a directory is the prefix its keys share, with an explicit entry at
//! `fs/NAME/a/` so that empty directories exist. Values are files' bytes as they are, or a
//! mount's records (mode, mtime, symlinks) behind a magic header ([`record`]). Renames,
//! including a directory's, are one KV transaction ([`store`]).
//!
//! AspenFS is a client of the cluster, not an app with its own ALPN: it speaks the typed KV
//! interface (`aspen_kv::Kv`) with the caller's token, so the token's KV rights on the
//! prefix are the mount's rights.

pub mod content;
pub mod fuse;
pub mod mount;
pub mod record;
pub mod store;
pub mod virtio;

pub use content::{BlobChunks, ChunkStore};
pub use fuse::{AspenFs, FsConfig};
pub use mount::{Mount, MountOptions, mount};
pub use store::{FsError, FsStore};
pub use virtio::VirtioFs;
