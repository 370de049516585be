//! The FUSE side: inode numbers for paths, open files buffered until flush, and every
//! kernel request answered through [`FsStore`].
//!
//! Consistency is close-to-open, as on NFS: an open reads the file's current record, writes
//! go to a buffer shared by every handle of the inode on this mount, and `flush` (each
//! `close`), `fsync` and the last `release` write the whole record back. The kernel keeps
//! entries and attributes for the mount's TTL; a watch on the prefix tells it sooner when
//! a key changes ([`crate::mount`]).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, KernelConfig, LockOwner,
    OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen,
    ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};
use tracing::warn;

use crate::content::{ChunkStore, Content};
use crate::record::{FileData, Record};
use crate::store::{DirEntry, Found, FsError, FsStore, Kind, Stat, check_name, join, now_ns};

struct Inode {
    path: Vec<u8>,
    lookups: u64,
    kind: Kind,
    /// Removed through this mount; kept until the kernel forgets it.
    unlinked: bool,
    /// Attributes last read or written, answered while the watch runs (it clears them when
    /// the path changes elsewhere).
    stat: Option<Stat>,
}

/// An open regular file: its bytes, shared by every handle of the inode.
struct OpenFile {
    content: Content,
    mode: u32,
    mtime_ns: u64,
    dirty: bool,
    handles: usize,
    unlinked: bool,
}

enum Handle {
    File(u64),
    Dir(Vec<DirEntry>),
}

#[derive(Default)]
struct State {
    inodes: HashMap<u64, Inode>,
    paths: HashMap<Vec<u8>, u64>,
    next_ino: u64,
    open: HashMap<u64, Arc<Mutex<OpenFile>>>,
    /// Bumped by every invalidation: attributes read before a bump are not kept.
    epoch: u64,
    handles: HashMap<u64, Handle>,
    next_fh: u64,
}

impl State {
    /// Keeps `stat` for `ino` unless an invalidation came since `epoch`.
    fn keep_stat(&mut self, ino: u64, stat: &Stat, epoch: u64) {
        if self.epoch == epoch
            && let Some(inode) = self.inodes.get_mut(&ino)
        {
            inode.stat = Some(stat.clone());
        }
    }

    fn path(&self, ino: u64) -> Result<Vec<u8>, FsError> {
        match self.inodes.get(&ino) {
            Some(i) if !i.unlinked => Ok(i.path.clone()),
            _ => Err(FsError::NotFound),
        }
    }

    /// The inode for `path`, made if new, with one more lookup counted.
    fn remember(&mut self, path: &[u8], kind: Kind) -> u64 {
        if let Some(ino) = self.paths.get(path).copied() {
            let inode = self.inodes.get_mut(&ino).expect("paths and inodes agree");
            inode.lookups += 1;
            inode.kind = kind;
            return ino;
        }
        self.next_ino += 1;
        let ino = self.next_ino;
        self.inodes.insert(ino, Inode { path: path.to_vec(), lookups: 1, kind, unlinked: false, stat: None });
        self.paths.insert(path.to_vec(), ino);
        ino
    }

    fn forget(&mut self, ino: u64, n: u64) {
        if ino == u64::from(INodeNo::ROOT) {
            return;
        }
        let Some(inode) = self.inodes.get_mut(&ino) else { return };
        inode.lookups = inode.lookups.saturating_sub(n);
        if inode.lookups == 0 && !self.open.contains_key(&ino) {
            let inode = self.inodes.remove(&ino).expect("just seen");
            if self.paths.get(&inode.path) == Some(&ino) {
                self.paths.remove(&inode.path);
            }
        }
    }

    fn mark_unlinked(&mut self, path: &[u8]) {
        if let Some(ino) = self.paths.remove(path) {
            if let Some(inode) = self.inodes.get_mut(&ino) {
                inode.unlinked = true;
            }
            if let Some(open) = self.open.get(&ino) {
                open.lock().expect("open file lock").unlinked = true;
            }
        }
    }

    /// Moves `from`, and everything known below it, to `to`.
    fn renamed(&mut self, from: &[u8], to: &[u8]) {
        self.mark_unlinked(to);
        let moved: Vec<(Vec<u8>, u64)> = self
            .paths
            .iter()
            .filter(|(p, _)| p.as_slice() == from || (p.starts_with(from) && p.get(from.len()) == Some(&b'/')))
            .map(|(p, i)| (p.clone(), *i))
            .collect();
        for (old, ino) in moved {
            self.paths.remove(&old);
            let mut new = to.to_vec();
            new.extend_from_slice(&old[from.len()..]);
            if let Some(inode) = self.inodes.get_mut(&ino) {
                inode.path = new.clone();
            }
            self.paths.insert(new, ino);
        }
    }
}

/// Finds the kernel's inodes for a changed path.
pub(crate) struct Invalidator {
    state: Arc<Mutex<State>>,
    /// Whether entries may be kept for the watched TTL.
    pub(crate) watching: Arc<std::sync::atomic::AtomicBool>,
}

impl Invalidator {
    /// The path's own inode, and its parent's inode with its name, when the kernel has them.
    pub(crate) fn stale(&self, path: &[u8]) -> (Option<INodeNo>, Option<(INodeNo, Vec<u8>)>) {
        let mut st = self.state.lock().expect("fs state lock");
        st.epoch += 1;
        let own = st.paths.get(path).map(|i| INodeNo(*i));
        if let Some(ino) = own
            && let Some(inode) = st.inodes.get_mut(&ino.0)
        {
            inode.stat = None;
        }
        let name = path.rsplit(|b| *b == b'/').next().unwrap_or(path).to_vec();
        let parent = st.paths.get(crate::store::parent_of(path)).map(|i| (INodeNo(*i), name));
        (own, parent)
    }

    /// Every path the kernel may hold, for when changes may have been missed.
    pub(crate) fn all_paths(&self) -> Vec<Vec<u8>> {
        let mut st = self.state.lock().expect("fs state lock");
        st.epoch += 1;
        st.inodes.values_mut().for_each(|i| i.stat = None);
        st.paths.keys().cloned().collect()
    }
}

/// What a mount is told at start.
#[derive(Debug, Clone)]
pub struct FsConfig {
    /// How long the kernel may keep entries and attributes without asking again, while no
    /// watch tells the mount of changes made elsewhere.
    pub ttl: Duration,
    /// The same while the watch runs: changes made elsewhere are then dropped from the
    /// kernel's cache as they are seen, so entries (and the absence of entries) may be kept
    /// long.
    pub watched_ttl: Duration,
    /// Files and directories are shown as owned by these.
    pub uid: u32,
    pub gid: u32,
}

/// The filesystem fuser drives.
pub struct AspenFs {
    store: FsStore,
    /// Where files past the inline limit keep their chunks; without it they are `EFBIG`.
    chunks: Option<Arc<dyn ChunkStore>>,
    rt: tokio::runtime::Handle,
    config: FsConfig,
    state: Arc<Mutex<State>>,
    /// Set while the mount's watch runs ([`crate::mount`]).
    watching: Arc<std::sync::atomic::AtomicBool>,
}

fn errno(e: &FsError) -> Errno {
    Errno::from_i32(e.errno())
}

/// Answers a request that returns nothing but success or an errno.
fn answer(result: Result<(), FsError>, reply: ReplyEmpty) {
    match result {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(errno(&e)),
    }
}

fn file_type(kind: Kind) -> FileType {
    match kind {
        Kind::File => FileType::RegularFile,
        Kind::Dir => FileType::Directory,
        Kind::Symlink => FileType::Symlink,
    }
}

fn time_of(ns: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(ns)
}

fn ns_of(t: TimeOrNow) -> u64 {
    match t {
        TimeOrNow::Now => now_ns(),
        TimeOrNow::SpecificTime(t) => t.duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0),
    }
}

impl AspenFs {
    pub fn new(
        store: FsStore,
        chunks: Option<Arc<dyn ChunkStore>>,
        rt: tokio::runtime::Handle,
        config: FsConfig,
    ) -> AspenFs {
        let mut state = State { next_ino: u64::from(INodeNo::ROOT), ..State::default() };
        let root = Inode { path: Vec::new(), lookups: 1, kind: Kind::Dir, unlinked: false, stat: None };
        state.inodes.insert(u64::from(INodeNo::ROOT), root);
        state.paths.insert(Vec::new(), u64::from(INodeNo::ROOT));
        AspenFs { store, chunks, rt, config, state: Arc::new(Mutex::new(state)), watching: Arc::default() }
    }

    /// What the kernel must forget when `path` changed in the cluster: the inode it has for
    /// the path (when any), and the parent's inode with the entry's name.
    pub(crate) fn invalidator(&self) -> Invalidator {
        Invalidator { state: self.state.clone(), watching: self.watching.clone() }
    }

    /// The owner every file is shown with.
    pub(crate) fn owner(&self) -> (u32, u32) {
        (self.config.uid, self.config.gid)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("fs state lock")
    }

    fn block<T>(&self, fut: impl std::future::Future<Output = Result<T, FsError>>) -> Result<T, FsError> {
        let r = self.rt.block_on(fut);
        if let Err(e) = &r
            && e.errno() == libc::EIO
        {
            warn!(error = %e, "aspenfs operation failed");
        }
        r
    }

    fn attr(&self, ino: u64, stat: &Stat) -> FileAttr {
        let t = time_of(stat.mtime_ns);
        FileAttr {
            ino: INodeNo(ino),
            size: stat.size,
            blocks: stat.size.div_ceil(512),
            atime: t,
            mtime: t,
            ctime: t,
            crtime: t,
            kind: file_type(stat.kind),
            perm: (stat.mode & 0o7777) as u16,
            nlink: if stat.kind == Kind::Dir { 2 } else { 1 },
            uid: self.config.uid,
            gid: self.config.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }

    fn open_stat(file: &OpenFile) -> Stat {
        Stat { kind: Kind::File, mode: file.mode, size: file.content.size(), mtime_ns: file.mtime_ns, explicit: false }
    }

    /// The current attributes of `ino`: its open buffer's, else the KV's.
    fn stat_of(&self, ino: u64) -> Result<Stat, FsError> {
        // An open file's buffer answers first, also once it is unlinked.
        let open = self.state().open.get(&ino).cloned();
        if let Some(open) = open {
            return Ok(Self::open_stat(&open.lock().expect("open file lock")));
        }
        let (path, cached, epoch) = {
            let st = self.state();
            let cached = st.inodes.get(&ino).and_then(|i| i.stat.clone());
            (st.path(ino)?, cached, st.epoch)
        };
        if let Some(stat) = cached
            && self.watching.load(std::sync::atomic::Ordering::Relaxed)
        {
            return Ok(stat);
        }
        match self.block(self.store.lookup(&path))? {
            Some(found) => {
                self.state().keep_stat(ino, &found.stat, epoch);
                Ok(found.stat)
            }
            None => Err(FsError::NotFound),
        }
    }

    /// Keeps attributes this mount just wrote.
    fn wrote_stat(&self, ino: u64, stat: &Stat) {
        let mut st = self.state();
        let epoch = st.epoch;
        st.keep_stat(ino, stat, epoch);
    }

    fn child_path(&self, parent: u64, name: &[u8]) -> Result<Vec<u8>, FsError> {
        check_name(name)?;
        let dir = self.state().path(parent)?;
        Ok(join(&dir, name))
    }

    pub(crate) fn ttl(&self) -> Duration {
        if self.watching.load(std::sync::atomic::Ordering::Relaxed) { self.config.watched_ttl } else { self.config.ttl }
    }

    /// Writes an open file's buffer back when it changed.
    fn write_back(&self, ino: u64) -> Result<(), FsError> {
        let (path, open) = {
            let st = self.state();
            let Some(open) = st.open.get(&ino).cloned() else { return Ok(()) };
            (st.inodes.get(&ino).map(|i| i.path.clone()), open)
        };
        let mut file = open.lock().expect("open file lock");
        if !file.dirty || file.unlinked {
            return Ok(());
        }
        let Some(path) = path else { return Ok(()) };
        let (mode, mtime_ns) = (file.mode, file.mtime_ns);
        let data = self.block(file.content.seal(self.chunks()))?;
        self.block(self.store.write(&path, &Record::File { mode, mtime_ns, data }))?;
        file.dirty = false;
        Ok(())
    }

    /// A new handle on `ino`'s buffer when it is open. The count goes up under the state
    /// lock, which the last close also holds to free the buffer: a handle never names a
    /// freed buffer.
    fn share_open(&self, ino: u64) -> Option<FileHandle> {
        let mut st = self.state();
        let open = st.open.get(&ino)?.clone();
        open.lock().expect("open file lock").handles += 1;
        st.next_fh += 1;
        let fh = st.next_fh;
        st.handles.insert(fh, Handle::File(ino));
        Some(FileHandle(fh))
    }

    fn new_handle(&self, handle: Handle) -> FileHandle {
        let mut st = self.state();
        st.next_fh += 1;
        let fh = st.next_fh;
        st.handles.insert(fh, handle);
        FileHandle(fh)
    }

    /// Opens `ino`'s buffer (loading it unless `truncate`) and returns a handle on it.
    fn open_file(&self, ino: u64, truncate: bool) -> Result<FileHandle, FsError> {
        if let Some(fh) = self.share_open(ino) {
            if truncate {
                let (_, open) = self.file_of(fh)?;
                let mut file = open.lock().expect("open file lock");
                file.content = Content::empty();
                file.dirty = true;
                file.mtime_ns = now_ns();
            }
            return Ok(fh);
        }
        let path = self.state().path(ino)?;
        let Some(found) = self.block(self.store.lookup(&path))? else { return Err(FsError::NotFound) };
        let (mode, mtime_ns, data) = match found.record {
            Some(Record::File { mode, mtime_ns, data }) => (mode, mtime_ns, data),
            Some(Record::Symlink { .. }) => return Err(FsError::Invalid("a symlink is not opened".into())),
            _ => return Err(FsError::IsDir),
        };
        let file = if truncate {
            OpenFile { content: Content::empty(), mode, mtime_ns: now_ns(), dirty: true, handles: 1, unlinked: false }
        } else {
            let content = Content::from_data(data);
            OpenFile { content, mode, mtime_ns, dirty: false, handles: 1, unlinked: false }
        };
        {
            let mut st = self.state();
            match st.open.get(&ino).cloned() {
                // Another thread opened it meanwhile: share its buffer.
                Some(open) => open.lock().expect("open file lock").handles += 1,
                None => {
                    st.open.insert(ino, Arc::new(Mutex::new(file)));
                }
            }
        }
        Ok(self.new_handle(Handle::File(ino)))
    }

    /// Opens the buffer of a file this mount has just created empty.
    fn open_created(&self, ino: u64, mode: u32, mtime_ns: u64) -> FileHandle {
        let file = OpenFile { content: Content::empty(), mode, mtime_ns, dirty: false, handles: 1, unlinked: false };
        {
            let mut st = self.state();
            match st.open.get(&ino).cloned() {
                // Opened already through an earlier name at this inode: share that buffer.
                Some(open) => open.lock().expect("open file lock").handles += 1,
                None => {
                    st.open.insert(ino, Arc::new(Mutex::new(file)));
                }
            }
        }
        self.new_handle(Handle::File(ino))
    }

    /// Drops a file handle, writing the file back first; the last handle frees the buffer.
    fn close_handle(&self, fh: FileHandle) -> Result<(), FsError> {
        let (ino, open) = self.file_of(fh).map_err(|_| FsError::BadHandle)?;
        let written = self.write_back(ino);
        let mut st = self.state();
        st.handles.remove(&fh.0);
        let last = {
            let mut file = open.lock().expect("open file lock");
            file.handles -= 1;
            file.handles == 0
        };
        if last {
            st.open.remove(&ino);
            if written.is_ok() {
                let stat = Self::open_stat(&open.lock().expect("open file lock"));
                let epoch = st.epoch;
                st.keep_stat(ino, &stat, epoch);
            }
            st.forget(ino, 0);
        }
        written
    }

    fn chunks(&self) -> Option<&Arc<dyn ChunkStore>> {
        self.chunks.as_ref()
    }

    fn file_of(&self, fh: FileHandle) -> Result<(u64, Arc<Mutex<OpenFile>>), FsError> {
        let st = self.state();
        match st.handles.get(&fh.0) {
            Some(Handle::File(ino)) => {
                st.open.get(ino).cloned().map(|o| (*ino, o)).ok_or(FsError::Invalid("a closed file".into()))
            }
            _ => Err(FsError::Invalid("not an open file".into())),
        }
    }
}

/// A looked-up name: its inode and attributes, or `None` for a name that does not exist
/// (answered as a negative entry).
pub(crate) type Looked = Option<(u64, Stat)>;

/// Takes one directory entry (inode, offset after it, kind, name); true when the reply is full.
pub(crate) type AddDirEntry<'a> = dyn FnMut(u64, u64, Kind, &[u8]) -> bool + 'a;

/// The operations, free of either FUSE transport: the kernel's (`fuser`, below) and a guest's
/// over VirtioFS ([`crate::virtio`]). Inodes and handles are plain numbers; root is 1.
impl AspenFs {
    /// Resolves `path` to an inode the caller now holds one lookup of.
    fn looked_up(&self, path: &[u8]) -> Result<Looked, FsError> {
        let epoch = self.state().epoch;
        let Some(found) = self.block(self.store.lookup(path))? else { return Ok(None) };
        let ino = {
            let mut st = self.state();
            let ino = st.remember(path, found.stat.kind);
            st.keep_stat(ino, &found.stat, epoch);
            ino
        };
        let stat = match self.state().open.get(&ino) {
            Some(open) => Self::open_stat(&open.lock().expect("open file lock")),
            None => found.stat,
        };
        Ok(Some((ino, stat)))
    }

    pub(crate) fn op_lookup(&self, parent: u64, name: &[u8]) -> Result<Looked, FsError> {
        let path = self.child_path(parent, name)?;
        self.looked_up(&path)
    }

    pub(crate) fn op_forget(&self, ino: u64, n: u64) {
        self.state().forget(ino, n);
    }

    pub(crate) fn op_getattr(&self, ino: u64) -> Result<Stat, FsError> {
        self.stat_of(ino)
    }

    /// Changes mode, size (files) and mtime; `None` leaves each as it is.
    pub(crate) fn op_setattr(
        &self,
        ino_n: u64,
        mode: Option<u32>,
        size: Option<u64>,
        mtime: Option<u64>,
    ) -> Result<Stat, FsError> {
        let stat = (|| -> Result<Stat, FsError> {
            // A file changes through a handle on its buffer, held until the change is
            // written: the buffer it shares when open (also once unlinked), else one loaded
            // for this. Without the handle, a close racing this call could free the buffer.
            let (fh, path, found) = match self.share_open(ino_n) {
                Some(fh) => (Some(fh), Vec::new(), None),
                None => {
                    let path = self.state().path(ino_n)?;
                    let found = self.block(self.store.lookup(&path))?.ok_or(FsError::NotFound)?;
                    match found.record {
                        Some(Record::File { .. }) => (Some(self.open_file(ino_n, false)?), path, None),
                        _ => (None, path, Some(found)),
                    }
                }
            };
            if let Some(fh) = fh {
                let result = self.file_of(fh).and_then(|(_, open)| {
                    {
                        let mut file = open.lock().expect("open file lock");
                        if let Some(size) = size {
                            self.block(file.content.truncate(self.chunks(), size))?;
                            file.mtime_ns = now_ns();
                        }
                        if let Some(mode) = mode {
                            file.mode = mode & 0o7777;
                        }
                        if let Some(t) = mtime {
                            file.mtime_ns = t;
                        }
                        file.dirty = true;
                    }
                    self.write_back(ino_n)?;
                    Ok(Self::open_stat(&open.lock().expect("open file lock")))
                });
                let closed = self.close_handle(fh);
                return result.and_then(|stat| closed.map(|()| stat));
            }
            let found = found.expect("looked up");
            match found.record {
                Some(Record::Symlink { .. } | Record::File { .. }) => Ok(found.stat),
                Some(Record::Dir { .. }) | None => {
                    let mut stat = found.stat;
                    if mode.is_none() && mtime.is_none() || path.is_empty() {
                        return Ok(stat);
                    }
                    stat.mode = mode.map(|m| m & 0o7777).unwrap_or(stat.mode);
                    stat.mtime_ns = mtime.unwrap_or(stat.mtime_ns);
                    self.block(self.store.write_dir(&path, stat.mode, stat.mtime_ns))?;
                    stat.explicit = true;
                    Ok(stat)
                }
            }
        })()?;
        self.wrote_stat(ino_n, &stat);
        Ok(stat)
    }

    pub(crate) fn op_readlink(&self, ino: u64) -> Result<Vec<u8>, FsError> {
        let path = self.state().path(ino)?;
        match self.block(self.store.lookup(&path))? {
            Some(Found { record: Some(Record::Symlink { target, .. }), .. }) => Ok(target),
            Some(_) => Err(FsError::Invalid("not a symlink".into())),
            None => Err(FsError::NotFound),
        }
    }

    pub(crate) fn op_mkdir(&self, parent: u64, name: &[u8], mode: u32) -> Result<Looked, FsError> {
        let path = self.child_path(parent, name)?;
        self.block(self.store.mkdir(&path, mode & 0o7777))?;
        self.looked_up(&path)
    }

    pub(crate) fn op_symlink(&self, parent: u64, name: &[u8], target: &[u8]) -> Result<Looked, FsError> {
        let path = self.child_path(parent, name)?;
        let record = Record::Symlink { target: target.to_vec(), mtime_ns: now_ns() };
        self.block(self.store.create(&path, &record))?;
        self.looked_up(&path)
    }

    /// Removes a file (`dir` false) or an empty directory, and forgets its path.
    pub(crate) fn op_remove(&self, parent: u64, name: &[u8], dir: bool) -> Result<(), FsError> {
        let path = self.child_path(parent, name)?;
        match dir {
            true => self.block(self.store.rmdir(&path))?,
            false => self.block(self.store.unlink(&path))?,
        }
        self.state().mark_unlinked(&path);
        Ok(())
    }

    pub(crate) fn op_rename(
        &self,
        parent: u64,
        name: &[u8],
        newparent: u64,
        newname: &[u8],
        noreplace: bool,
    ) -> Result<(), FsError> {
        let from = self.child_path(parent, name)?;
        let to = self.child_path(newparent, newname)?;
        // Whatever this mount buffered for the source is written first, so it moves.
        let ino = self.state().paths.get(&from).copied();
        if let Some(ino) = ino {
            self.write_back(ino)?;
        }
        self.block(self.store.rename(&from, &to, noreplace))?;
        self.state().renamed(&from, &to);
        Ok(())
    }

    pub(crate) fn op_open(&self, ino: u64, truncate: bool) -> Result<u64, FsError> {
        self.open_file(ino, truncate).map(|fh| fh.0)
    }

    pub(crate) fn op_read(&self, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>, FsError> {
        let (_, open) = self.file_of(FileHandle(fh))?;
        let mut file = open.lock().expect("open file lock");
        self.block(file.content.read(self.chunks(), offset, size as usize))
    }

    pub(crate) fn op_write(&self, fh: u64, offset: u64, data: &[u8], append: bool) -> Result<u32, FsError> {
        let (_, open) = self.file_of(FileHandle(fh))?;
        let mut file = open.lock().expect("open file lock");
        let offset = if append { file.content.size() } else { offset };
        self.block(file.content.write(self.chunks(), offset, data))?;
        file.dirty = true;
        file.mtime_ns = now_ns();
        Ok(data.len() as u32)
    }

    /// Writes an open file back (close's flush, and fsync).
    pub(crate) fn op_flush(&self, fh: u64) -> Result<(), FsError> {
        self.file_of(FileHandle(fh)).and_then(|(ino, _)| self.write_back(ino))
    }

    pub(crate) fn op_release(&self, fh: u64) -> Result<(), FsError> {
        self.close_handle(FileHandle(fh))
    }

    pub(crate) fn op_opendir(&self, ino: u64) -> Result<u64, FsError> {
        let path = self.state().path(ino)?;
        let entries = self.block(self.store.list(&path))?;
        Ok(self.new_handle(Handle::Dir(entries)).0)
    }

    /// Lists a directory from `offset` (1 is ".", 2 "..", 3 + i the i-th entry): `add` gets each
    /// entry's inode, the offset after it, its kind and name, and returns true when full.
    pub(crate) fn op_readdir(&self, ino: u64, fh: u64, offset: u64, add: &mut AddDirEntry<'_>) -> Result<(), FsError> {
        let st = self.state();
        let Some(Handle::Dir(entries)) = st.handles.get(&fh) else { return Err(FsError::BadHandle) };
        let dir = st.inodes.get(&ino).map(|i| i.path.clone()).unwrap_or_default();
        let mut at = offset;
        while at < 2 {
            let name: &[u8] = if at == 0 { b"." } else { b".." };
            if add(ino, at + 1, Kind::Dir, name) {
                return Ok(());
            }
            at += 1;
        }
        for (i, entry) in entries.iter().enumerate().skip((at - 2) as usize) {
            let path = join(&dir, &entry.name);
            let (child_ino, kind) = match st.paths.get(&path) {
                Some(ino) => (*ino, st.inodes.get(ino).map(|i| i.kind).unwrap_or(entry.kind)),
                // Not looked up yet: a number outside the ones handed out, for `d_ino` only.
                None => (u64::MAX - i as u64, entry.kind),
            };
            if add(child_ino, 3 + i as u64, kind, &entry.name) {
                break;
            }
        }
        Ok(())
    }

    pub(crate) fn op_releasedir(&self, fh: u64) {
        self.state().handles.remove(&fh);
    }

    /// Creates (or, without `O_EXCL`, opens) a file and returns its inode, attributes and handle.
    pub(crate) fn op_create(
        &self,
        parent: u64,
        name: &[u8],
        mode: u32,
        flags: i32,
    ) -> Result<(u64, Stat, u64), FsError> {
        let path = self.child_path(parent, name)?;
        let (mode, mtime_ns) = (mode & 0o7777, now_ns());
        let record = Record::File { mode, mtime_ns, data: FileData::Inline(Vec::new()) };
        let created = match self.block(self.store.create(&path, &record)) {
            Ok(_) => true,
            // Without O_EXCL an existing file is opened (the kernel's lookup raced a creator).
            Err(FsError::Exists) if flags & libc::O_EXCL == 0 => false,
            Err(e) => return Err(e),
        };
        let ino = self.state().remember(&path, Kind::File);
        let fh = match created {
            // The buffer is the empty file just committed: no read of it back.
            true => self.open_created(ino, mode, mtime_ns),
            false => self.open_file(ino, flags & libc::O_TRUNC != 0)?,
        };
        let stat = self.stat_of(ino)?;
        Ok((ino, stat, fh.0))
    }
}

fn open_truncates(flags: OpenFlags) -> bool {
    flags.0 & libc::O_TRUNC != 0
}

impl AspenFs {
    fn reply_entry(&self, looked: Result<Looked, FsError>, reply: ReplyEntry) {
        match looked {
            Ok(Some((ino, stat))) => reply.entry(&self.ttl(), &self.attr(ino, &stat), Generation(0)),
            // A negative entry (inode 0): the kernel remembers the name is absent.
            Ok(None) => reply.entry(&self.ttl(), &self.attr(0, &Stat::absent()), Generation(0)),
            Err(e) => reply.error(errno(&e)),
        }
    }
}

impl Filesystem for AspenFs {
    fn init(&mut self, _req: &Request, _config: &mut KernelConfig) -> std::io::Result<()> {
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        self.reply_entry(self.op_lookup(parent.into(), name.as_bytes()), reply);
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.op_forget(ino.into(), nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.op_getattr(ino.into()) {
            Ok(stat) => reply.attr(&self.ttl(), &self.attr(ino.into(), &stat)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        match self.op_setattr(ino.into(), mode, size, mtime.map(ns_of)) {
            Ok(stat) => reply.attr(&self.ttl(), &self.attr(ino.into(), &stat)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.op_readlink(ino.into()) {
            Ok(target) => reply.data(&target),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn mkdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        self.reply_entry(self.op_mkdir(parent.into(), name.as_bytes(), mode & !umask), reply);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        answer(self.op_remove(parent.into(), name.as_bytes(), false), reply);
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        answer(self.op_remove(parent.into(), name.as_bytes(), true), reply);
    }

    fn symlink(&self, _req: &Request, parent: INodeNo, link_name: &OsStr, target: &Path, reply: ReplyEntry) {
        self.reply_entry(self.op_symlink(parent.into(), link_name.as_bytes(), target.as_os_str().as_bytes()), reply);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if flags.contains(RenameFlags::RENAME_EXCHANGE) || flags.contains(RenameFlags::RENAME_WHITEOUT) {
            reply.error(Errno::EINVAL);
            return;
        }
        let noreplace = flags.contains(RenameFlags::RENAME_NOREPLACE);
        answer(self.op_rename(parent.into(), name.as_bytes(), newparent.into(), newname.as_bytes(), noreplace), reply);
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        match self.op_open(ino.into(), open_truncates(flags)) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.op_read(fh.0, offset, size) {
            Ok(bytes) => reply.data(&bytes),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.op_write(fh.0, offset, data, flags.0 & libc::O_APPEND != 0) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        answer(self.op_flush(fh.0), reply);
    }

    fn fsync(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        answer(self.op_flush(fh.0), reply);
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        answer(self.op_release(fh.0), reply);
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.op_opendir(ino.into()) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let result = self.op_readdir(ino.into(), fh.0, offset, &mut |ino, next, kind, name| {
            reply.add(INodeNo(ino), next, file_type(kind), OsStr::from_bytes(name))
        });
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn releasedir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _flags: OpenFlags, reply: ReplyEmpty) {
        self.op_releasedir(fh.0);
        reply.ok();
    }

    fn fsyncdir(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        // Every directory change is committed in the cluster before it is answered.
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        // The cluster has no fixed size; report a large, plausible one.
        let blocks = 1u64 << 32;
        reply.statfs(blocks, blocks, blocks, 1 << 30, 1 << 30, 4096, crate::store::MAX_NAME_BYTES as u32, 4096);
    }

    fn link(&self, _req: &Request, _ino: INodeNo, _newparent: INodeNo, _newname: &OsStr, reply: ReplyEntry) {
        // A path is a key: one object cannot have two names.
        reply.error(Errno::EPERM);
    }

    fn getxattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, _size: u32, reply: fuser::ReplyXattr) {
        // Extended attributes are not kept: none exists.
        reply.error(Errno::ENODATA);
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, size: u32, reply: fuser::ReplyXattr) {
        if size == 0 { reply.size(0) } else { reply.data(&[]) }
    }

    fn setxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::ENOTSUP);
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        match self.op_create(parent.into(), name.as_bytes(), mode & !umask, flags) {
            Ok((ino, stat, fh)) => {
                reply.created(&self.ttl(), &self.attr(ino, &stat), Generation(0), FileHandle(fh), FopenFlags::empty())
            }
            Err(e) => reply.error(errno(&e)),
        }
    }
}
