//! The filesystem's operations on the KV, path by path: what a mount asks of the cluster.
//!
//! Layout under the prefix `P` (which ends in `/`):
//! - a file or symlink at `a/b` is the key `P a/b`;
//! - a directory `a` exists when any key starts with `P a/`; its explicit entry, written by
//!   `mkdir` so that an empty directory exists, is the key `P a/` itself;
//! - the root is `P` and always exists.
//!
//! Every change that must be atomic is one KV transaction: create (only if absent), rename
//! (a directory's whole subtree moves at once, or nothing does), unlink and rmdir.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aspen_core::command::{Compare, CompareOp, CompareTarget, Txn, TxnOp};
use aspen_core::keys::{key_successor, prefix_end};
use aspen_core::limits::{MAX_KEY_BYTES, MAX_TXN_OPS};
use aspen_kv::{KeyValue, KvError, KvExt, ReadConsistency, ScanRequest, SharedKv};

use crate::record::{CorruptRecord, FileData, IMPLICIT_DIR_MODE, Record, max_inline_bytes};

/// Longest name of one path component, as on most Linux filesystems.
pub const MAX_NAME_BYTES: usize = 255;
/// Most bytes of values a directory rename moves in its one transaction (a request frame
/// holds 8 MiB). A larger directory is refused with `EXDEV`, which `mv` answers by copying.
pub const MAX_RENAME_BYTES: usize = 6 * 1024 * 1024;
/// Most keys a directory rename moves: each key is one put and one delete, beside the new
/// explicit entry, the replaced destination's entry and the source parent's entry, within
/// one transaction's `MAX_TXN_OPS`.
pub const MAX_RENAME_KEYS: usize = (MAX_TXN_OPS - 3) / 2;
/// Keys per page when listing a directory.
const LIST_PAGE: u32 = 1_000;
/// Times a transaction whose compares failed (another writer moved a key between our read
/// and our write) is tried again before the operation fails with `EIO`.
const TXN_ATTEMPTS: usize = 5;

/// Why an operation failed; each maps to one errno.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("no such file or directory")]
    NotFound,
    #[error("already exists")]
    Exists,
    #[error("not a directory")]
    NotDir,
    #[error("is a directory")]
    IsDir,
    #[error("directory not empty")]
    NotEmpty,
    #[error("name longer than {MAX_NAME_BYTES} bytes, or a key over MAX_KEY_BYTES = {MAX_KEY_BYTES}")]
    NameTooLong,
    #[error("file larger than {0} bytes, the most a file may hold on this mount")]
    FileTooBig(u64),
    #[error("directory too large to rename in one transaction ({0}); copy it instead")]
    TooLargeToRename(String),
    #[error("invalid argument: {0}")]
    Invalid(String),
    #[error("the cluster did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the cluster refused or failed: {0}")]
    Kv(#[from] KvError),
    #[error("the blob store: {0}")]
    Blob(String),
    #[error("{key}: {source}")]
    Corrupt { key: String, source: CorruptRecord },
    #[error("not an open file")]
    BadHandle,
    #[error("kept changing under concurrent writers after {TXN_ATTEMPTS} attempts")]
    Contended,
}

impl FsError {
    /// The errno a system call returns for it.
    pub fn errno(&self) -> i32 {
        match self {
            FsError::NotFound => libc::ENOENT,
            FsError::Exists => libc::EEXIST,
            FsError::NotDir => libc::ENOTDIR,
            FsError::IsDir => libc::EISDIR,
            FsError::NotEmpty => libc::ENOTEMPTY,
            FsError::NameTooLong => libc::ENAMETOOLONG,
            FsError::FileTooBig(_) => libc::EFBIG,
            FsError::TooLargeToRename(_) => libc::EXDEV,
            FsError::Invalid(_) => libc::EINVAL,
            FsError::BadHandle => libc::EBADF,
            FsError::Timeout(_) | FsError::Kv(_) | FsError::Blob(_) | FsError::Corrupt { .. } | FsError::Contended => {
                libc::EIO
            }
        }
    }
}

/// What kind of object a path is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
}

/// A path's attributes, as read from the KV.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stat {
    pub kind: Kind,
    /// Permission bits.
    pub mode: u32,
    pub size: u64,
    pub mtime_ns: u64,
    /// For a directory: whether its explicit entry exists (else it exists only through
    /// the keys below it, or is the root).
    pub explicit: bool,
}

impl Stat {
    /// The attributes answered with a negative entry (a name that does not exist).
    pub(crate) fn absent() -> Stat {
        Stat { kind: Kind::File, mode: 0, size: 0, mtime_ns: 0, explicit: false }
    }
}

/// A path's attributes and, for files and symlinks, its record (holding the bytes).
#[derive(Debug, Clone)]
pub struct Found {
    pub stat: Stat,
    pub record: Option<Record>,
    /// The revision the key was last written at (0 for an implicit directory).
    pub mod_revision: u64,
    /// The stored value, as is (empty for a directory): a rename moves it unchanged.
    pub value: Vec<u8>,
}

/// A directory entry: its name and what it is, as far as the listing knows (a listing reads
/// keys, not values, so a symlink is listed as a file until looked up).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub name: Vec<u8>,
    pub kind: Kind,
}

/// The filesystem view of one prefix of the KV.
#[derive(Clone)]
pub struct FsStore {
    kv: SharedKv,
    prefix: Vec<u8>,
    op_timeout: Duration,
    /// The mtime shown for plain values and implicit directories, which carry none.
    epoch_ns: u64,
    /// Revisions of this store's own recent writes: the watch skips them.
    own: Arc<OwnRevisions>,
}

/// The revisions of a store's last [`OWN_REVISIONS`] writes.
#[derive(Default)]
struct OwnRevisions(std::sync::Mutex<(HashSet<u64>, VecDeque<u64>)>);

/// How many of its own write revisions a store remembers.
const OWN_REVISIONS: usize = 16_384;

impl OwnRevisions {
    fn note(&self, revision: u64) {
        let mut own = self.0.lock().expect("own revisions lock");
        if own.0.insert(revision) {
            own.1.push_back(revision);
            if own.1.len() > OWN_REVISIONS
                && let Some(old) = own.1.pop_front()
            {
                own.0.remove(&old);
            }
        }
    }

    fn contains(&self, revision: u64) -> bool {
        self.0.lock().expect("own revisions lock").0.contains(&revision)
    }
}

/// Now, in nanoseconds since the Unix epoch.
pub fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

/// Checks a prefix: non-empty, ending in `/`, within the key limit.
pub fn check_prefix(prefix: &[u8]) -> Result<(), FsError> {
    if prefix.is_empty() || !prefix.ends_with(b"/") {
        return Err(FsError::Invalid(format!(
            "the prefix {:?} must be non-empty and end in '/'",
            String::from_utf8_lossy(prefix)
        )));
    }
    if prefix.len() >= MAX_KEY_BYTES {
        return Err(FsError::NameTooLong);
    }
    Ok(())
}

/// The parent of a relative path (`""` for a top-level name).
pub fn parent_of(path: &[u8]) -> &[u8] {
    match path.iter().rposition(|b| *b == b'/') {
        Some(i) => &path[..i],
        None => &[],
    }
}

/// `dir/name`, or `name` in the root.
pub fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(dir.len() + 1 + name.len());
    if !dir.is_empty() {
        p.extend_from_slice(dir);
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

/// Checks one name given by the kernel.
pub fn check_name(name: &[u8]) -> Result<(), FsError> {
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0) {
        return Err(FsError::Invalid(format!("the name {:?}", String::from_utf8_lossy(name))));
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(FsError::NameTooLong);
    }
    Ok(())
}

fn put(key: Vec<u8>, value: Vec<u8>) -> TxnOp {
    TxnOp::Put { key, value, lease: None }
}

fn unchanged_since(key: Vec<u8>, mod_revision: u64) -> Compare {
    Compare { key, op: CompareOp::Equal, target: CompareTarget::ModRevision(mod_revision) }
}

fn absent(key: Vec<u8>) -> Compare {
    Compare { key, op: CompareOp::Equal, target: CompareTarget::Version(0) }
}

impl FsStore {
    pub fn new(kv: SharedKv, prefix: impl Into<Vec<u8>>, op_timeout: Duration) -> Result<FsStore, FsError> {
        let prefix = prefix.into();
        check_prefix(&prefix)?;
        Ok(FsStore { kv, prefix, op_timeout, epoch_ns: now_ns(), own: Arc::default() })
    }

    pub fn prefix(&self) -> &[u8] {
        &self.prefix
    }

    /// The relative path a key of this prefix stands for, when it is a file's or a
    /// directory entry's (a trailing `/` is dropped).
    pub fn path_of_key<'k>(&self, key: &'k [u8]) -> Option<&'k [u8]> {
        let rest = key.strip_prefix(self.prefix.as_slice())?;
        Some(rest.strip_suffix(b"/").unwrap_or(rest))
    }

    fn file_key(&self, path: &[u8]) -> Result<Vec<u8>, FsError> {
        let mut k = self.prefix.clone();
        k.extend_from_slice(path);
        if k.len() + 1 > MAX_KEY_BYTES {
            return Err(FsError::NameTooLong);
        }
        Ok(k)
    }

    /// The key prefix of everything below directory `path` (also its explicit entry's key).
    fn dir_key(&self, path: &[u8]) -> Result<Vec<u8>, FsError> {
        if path.is_empty() {
            return Ok(self.prefix.clone());
        }
        let mut k = self.file_key(path)?;
        k.push(b'/');
        Ok(k)
    }

    async fn bounded<T>(&self, fut: impl std::future::Future<Output = Result<T, KvError>>) -> Result<T, FsError> {
        match tokio::time::timeout(self.op_timeout, fut).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(FsError::Timeout(self.op_timeout)),
        }
    }

    /// Runs a transaction, remembering its revision when it commits.
    async fn commit(&self, txn: Txn) -> Result<aspen_kv::TxnResponse, FsError> {
        let resp = self.bounded(self.kv.txn(txn)).await?;
        if resp.succeeded {
            self.own.note(resp.revision);
        }
        Ok(resp)
    }

    async fn put(&self, key: Vec<u8>, value: Vec<u8>) -> Result<u64, FsError> {
        let revision = self.bounded(self.kv.put(key, value)).await?.revision;
        self.own.note(revision);
        Ok(revision)
    }

    /// Whether this store made the change at `revision` (recent changes only).
    pub fn is_own(&self, revision: u64) -> bool {
        self.own.contains(revision)
    }

    fn decode(&self, kv: &KeyValue) -> Result<Record, FsError> {
        Record::decode(&kv.value, self.epoch_ns)
            .map_err(|source| FsError::Corrupt { key: String::from_utf8_lossy(&kv.key).into_owned(), source })
    }

    fn root(&self) -> Found {
        let stat = Stat { kind: Kind::Dir, mode: IMPLICIT_DIR_MODE, size: 0, mtime_ns: self.epoch_ns, explicit: false };
        Found { stat, record: None, mod_revision: 0, value: Vec::new() }
    }

    /// What `path` is, or `None`. A file key wins over a directory of the same name (both
    /// can only exist through writes that bypass a mount).
    pub async fn lookup(&self, path: &[u8]) -> Result<Option<Found>, FsError> {
        if path.is_empty() {
            return Ok(Some(self.root()));
        }
        let file_key = self.file_key(path)?;
        let dir_key = self.dir_key(path)?;
        let below = ScanRequest::prefix(&dir_key).limit(1).keys_only();
        let (file, marker, below) = self
            .bounded(async {
                tokio::try_join!(
                    self.kv.get(&file_key, ReadConsistency::Linearizable),
                    self.kv.get(&dir_key, ReadConsistency::Linearizable),
                    self.kv.scan_range(below),
                )
            })
            .await?;
        if let Some(kv) = file {
            let record = self.decode(&kv)?;
            let stat = match &record {
                Record::File { mode, mtime_ns, data } => {
                    Stat { kind: Kind::File, mode: *mode, size: data.size(), mtime_ns: *mtime_ns, explicit: false }
                }
                Record::Symlink { target, mtime_ns } => Stat {
                    kind: Kind::Symlink,
                    mode: 0o777,
                    size: target.len() as u64,
                    mtime_ns: *mtime_ns,
                    explicit: false,
                },
                Record::Dir { .. } => {
                    let source = CorruptRecord("a directory entry under a file's key".into());
                    return Err(FsError::Corrupt { key: String::from_utf8_lossy(&kv.key).into_owned(), source });
                }
            };
            return Ok(Some(Found { stat, record: Some(record), mod_revision: kv.mod_revision, value: kv.value }));
        }
        if let Some(kv) = marker {
            let (mode, mtime_ns) = match self.decode(&kv)? {
                Record::Dir { mode, mtime_ns } => (mode, mtime_ns),
                // A plain value at a directory's key (written around the mount): still a
                // directory.
                other => (IMPLICIT_DIR_MODE, other.mtime_ns()),
            };
            let stat = Stat { kind: Kind::Dir, mode, size: 0, mtime_ns, explicit: true };
            return Ok(Some(Found { stat, record: None, mod_revision: kv.mod_revision, value: Vec::new() }));
        }
        if !below.kvs.is_empty() {
            let stat =
                Stat { kind: Kind::Dir, mode: IMPLICIT_DIR_MODE, size: 0, mtime_ns: self.epoch_ns, explicit: false };
            return Ok(Some(Found { stat, record: None, mod_revision: 0, value: Vec::new() }));
        }
        Ok(None)
    }

    /// The entries of directory `path`, in key order. Reads keys only, and skips each
    /// subdirectory's subtree with one seek rather than reading it.
    pub async fn list(&self, path: &[u8]) -> Result<Vec<DirEntry>, FsError> {
        let base = self.dir_key(path)?;
        let end = prefix_end(&base);
        let mut start = base.clone();
        let mut out: Vec<DirEntry> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        loop {
            let request = ScanRequest::range(start.clone(), end.clone()).limit(LIST_PAGE).keys_only();
            let page = self.bounded(self.kv.scan_range(request)).await?;
            for kv in &page.kvs {
                let rest = &kv.key[base.len()..];
                if rest.is_empty() {
                    continue; // the directory's own entry
                }
                let (name, kind) = match rest.iter().position(|b| *b == b'/') {
                    Some(i) => (&rest[..i], Kind::Dir),
                    None => (rest, Kind::File),
                };
                if seen.insert(name.to_vec()) {
                    out.push(DirEntry { name: name.to_vec(), kind });
                } else if kind == Kind::File
                    && let Some(e) = out.iter_mut().find(|e| e.name == name)
                {
                    e.kind = Kind::File; // a file wins over a directory of the same name
                }
            }
            let Some(last) = page.kvs.last() else { break };
            if !page.more {
                break;
            }
            let rest = &last.key[base.len()..];
            start = match rest.iter().position(|b| *b == b'/') {
                // The page ended inside a subdirectory: seek past its subtree.
                Some(i) => prefix_end(&last.key[..base.len() + i + 1]),
                None => key_successor(&last.key),
            };
            if start >= end {
                break;
            }
        }
        Ok(out)
    }

    /// Creates `path` as `record` only if nothing (file or directory entry) is there.
    pub async fn create(&self, path: &[u8], record: &Record) -> Result<u64, FsError> {
        let key = self.file_key(path)?;
        let dir_key = self.dir_key(path)?;
        let txn = Txn {
            compare: vec![absent(key.clone()), absent(dir_key)],
            success: vec![put(key, record.encode())],
            failure: vec![],
        };
        let resp = self.commit(txn).await?;
        if !resp.succeeded {
            return Err(FsError::Exists);
        }
        Ok(resp.revision)
    }

    /// Makes directory `path` (its explicit entry).
    pub async fn mkdir(&self, path: &[u8], mode: u32) -> Result<(), FsError> {
        let key = self.file_key(path)?;
        let dir_key = self.dir_key(path)?;
        let record = Record::Dir { mode, mtime_ns: now_ns() };
        let txn = Txn {
            compare: vec![absent(key), absent(dir_key.clone())],
            success: vec![put(dir_key, record.encode())],
            failure: vec![],
        };
        let resp = self.commit(txn).await?;
        if !resp.succeeded {
            return Err(FsError::Exists);
        }
        Ok(())
    }

    /// Writes `record` at `path` (a file's new contents or attributes), whatever was there.
    pub async fn write(&self, path: &[u8], record: &Record) -> Result<u64, FsError> {
        if let Record::File { data: FileData::Inline(bytes), .. } = record
            && bytes.len() > max_inline_bytes()
        {
            return Err(FsError::FileTooBig(max_inline_bytes() as u64));
        }
        let key = self.file_key(path)?;
        self.put(key, record.encode()).await
    }

    /// Rewrites a directory's explicit entry (its mode or mtime).
    pub async fn write_dir(&self, path: &[u8], mode: u32, mtime_ns: u64) -> Result<(), FsError> {
        if path.is_empty() {
            return Err(FsError::Invalid("the root's attributes are fixed".into()));
        }
        let key = self.dir_key(path)?;
        self.put(key, Record::Dir { mode, mtime_ns }.encode()).await?;
        Ok(())
    }

    /// The ops that keep `parent` existing once a child leaves it: its explicit entry, when
    /// it had none (it existed only through its children).
    async fn keep_parent(&self, parent: &[u8]) -> Result<Vec<TxnOp>, FsError> {
        if parent.is_empty() {
            return Ok(vec![]);
        }
        let key = self.dir_key(parent)?;
        let marker = self.bounded(self.kv.get(&key, ReadConsistency::Linearizable)).await?;
        Ok(match marker {
            Some(_) => vec![],
            None => vec![put(key, Record::Dir { mode: IMPLICIT_DIR_MODE, mtime_ns: now_ns() }.encode())],
        })
    }

    /// Removes file or symlink `path`: one transaction when its parent has an explicit entry
    /// (every directory a mount made has one).
    pub async fn unlink(&self, path: &[u8]) -> Result<(), FsError> {
        let key = self.file_key(path)?;
        let parent = parent_of(path);
        let exists = Compare { key: key.clone(), op: CompareOp::Greater, target: CompareTarget::Version(0) };
        let mut compare = vec![exists];
        if !parent.is_empty() {
            let marker = self.dir_key(parent)?;
            compare.push(Compare { key: marker, op: CompareOp::Greater, target: CompareTarget::Version(0) });
        }
        let txn = Txn { compare, success: vec![TxnOp::Delete { key: key.clone() }], failure: vec![] };
        if self.commit(txn).await?.succeeded {
            return Ok(());
        }
        // No such file (or a directory), or a parent that exists only through its children.
        for _ in 0..TXN_ATTEMPTS {
            let Some(found) = self.lookup(path).await? else { return Err(FsError::NotFound) };
            if found.stat.kind == Kind::Dir {
                return Err(FsError::IsDir);
            }
            let mut success = vec![TxnOp::Delete { key: key.clone() }];
            success.extend(self.keep_parent(parent).await?);
            let txn = Txn { compare: vec![unchanged_since(key.clone(), found.mod_revision)], success, failure: vec![] };
            if self.commit(txn).await?.succeeded {
                return Ok(());
            }
        }
        Err(FsError::Contended)
    }

    /// Removes empty directory `path`.
    pub async fn rmdir(&self, path: &[u8]) -> Result<(), FsError> {
        if path.is_empty() {
            return Err(FsError::Invalid("the root cannot be removed".into()));
        }
        let dir_key = self.dir_key(path)?;
        for _ in 0..TXN_ATTEMPTS {
            let Some(found) = self.lookup(path).await? else { return Err(FsError::NotFound) };
            if found.stat.kind != Kind::Dir {
                return Err(FsError::NotDir);
            }
            let below = ScanRequest::prefix(&dir_key).limit(2).keys_only();
            let page = self.bounded(self.kv.scan_range(below)).await?;
            if page.kvs.iter().any(|kv| kv.key != dir_key) {
                return Err(FsError::NotEmpty);
            }
            let mut success = vec![TxnOp::Delete { key: dir_key.clone() }];
            success.extend(self.keep_parent(parent_of(path)).await?);
            let txn =
                Txn { compare: vec![unchanged_since(dir_key.clone(), found.mod_revision)], success, failure: vec![] };
            if self.commit(txn).await?.succeeded {
                return Ok(());
            }
        }
        Err(FsError::Contended)
    }

    /// Moves `from` to `to` in one transaction: a file, a symlink, or a directory with
    /// everything below it. `no_replace` refuses an existing `to`.
    pub async fn rename(&self, from: &[u8], to: &[u8], no_replace: bool) -> Result<(), FsError> {
        if from.is_empty() || to.is_empty() {
            return Err(FsError::Invalid("the root cannot be renamed".into()));
        }
        if from == to {
            return Ok(());
        }
        if to.starts_with(from) && to.get(from.len()) == Some(&b'/') {
            return Err(FsError::Invalid("a directory cannot move below itself".into()));
        }
        for _ in 0..TXN_ATTEMPTS {
            let Some(src) = self.lookup(from).await? else { return Err(FsError::NotFound) };
            let dst = self.lookup(to).await?;
            let mut compare = Vec::new();
            let mut success = Vec::new();
            if let Some(dst) = &dst {
                if no_replace {
                    return Err(FsError::Exists);
                }
                match (src.stat.kind == Kind::Dir, dst.stat.kind == Kind::Dir) {
                    (false, true) => return Err(FsError::IsDir),
                    (true, false) => return Err(FsError::NotDir),
                    (true, true) => {
                        let dst_key = self.dir_key(to)?;
                        let below = ScanRequest::prefix(&dst_key).limit(2).keys_only();
                        let page = self.bounded(self.kv.scan_range(below)).await?;
                        if page.kvs.iter().any(|kv| kv.key != dst_key) {
                            return Err(FsError::NotEmpty);
                        }
                        compare.push(unchanged_since(dst_key.clone(), dst.mod_revision));
                        success.push(TxnOp::Delete { key: dst_key });
                    }
                    (false, false) => {
                        let dst_key = self.file_key(to)?;
                        compare.push(unchanged_since(dst_key, dst.mod_revision));
                    }
                }
            } else {
                compare.push(absent(self.file_key(to)?));
                compare.push(absent(self.dir_key(to)?));
            }
            if src.stat.kind == Kind::Dir {
                let src_key = self.dir_key(from)?;
                let dst_key = self.dir_key(to)?;
                let (kvs, _) = self.bounded(self.kv.scan_all(&src_key, ReadConsistency::Linearizable)).await?;
                if kvs.len() > MAX_RENAME_KEYS {
                    return Err(FsError::TooLargeToRename(format!(
                        "{} keys, over MAX_RENAME_KEYS = {MAX_RENAME_KEYS}",
                        kvs.len()
                    )));
                }
                let bytes: usize = kvs.iter().map(|kv| kv.value.len() + 2 * kv.key.len()).sum();
                if bytes > MAX_RENAME_BYTES {
                    return Err(FsError::TooLargeToRename(format!(
                        "{bytes} bytes, over MAX_RENAME_BYTES = {MAX_RENAME_BYTES}"
                    )));
                }
                let mut moved_marker = false;
                for kv in kvs {
                    let mut new_key = dst_key.clone();
                    new_key.extend_from_slice(&kv.key[src_key.len()..]);
                    if new_key.len() > MAX_KEY_BYTES {
                        return Err(FsError::NameTooLong);
                    }
                    moved_marker |= kv.key == src_key;
                    compare.push(unchanged_since(kv.key.clone(), kv.mod_revision));
                    // A put after the destination entry's delete: a later op wins.
                    success.push(put(new_key, kv.value));
                    success.push(TxnOp::Delete { key: kv.key });
                }
                if !moved_marker {
                    let record = Record::Dir { mode: IMPLICIT_DIR_MODE, mtime_ns: now_ns() };
                    compare.push(absent(src_key));
                    success.push(put(dst_key, record.encode()));
                }
            } else {
                let src_key = self.file_key(from)?;
                compare.push(unchanged_since(src_key.clone(), src.mod_revision));
                success.push(put(self.file_key(to)?, src.value));
                success.push(TxnOp::Delete { key: src_key });
            }
            success.extend(self.keep_parent(parent_of(from)).await?);
            if compare.len() > MAX_TXN_OPS || success.len() > MAX_TXN_OPS {
                return Err(FsError::TooLargeToRename(format!("over MAX_TXN_OPS = {MAX_TXN_OPS} operations")));
            }
            let txn = Txn { compare, success, failure: vec![] };
            if self.commit(txn).await?.succeeded {
                return Ok(());
            }
        }
        Err(FsError::Contended)
    }
}
