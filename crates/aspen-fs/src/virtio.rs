//! AspenFS served to a guest over VirtioFS: the same filesystem as the FUSE mount (the same
//! operations of [`AspenFs`]), answering `fuse-backend-rs` requests instead of the kernel's, so a
//! VirtioFS backend can serve a KV prefix to a guest without a mount on the host.
//!
//! A guest cannot be told of changes made elsewhere (no invalidation over VirtioFS here), so
//! entries and attributes are kept only for the unwatched TTL.

use std::ffi::CStr;
use std::io;
use std::time::Duration;

use fuse_backend_rs::abi::fuse_abi::{CreateIn, FsOptions, OpenOptions, SetattrValid, stat64, statvfs64};
use fuse_backend_rs::api::filesystem::{
    Context, DirEntry, Entry, FileSystem, GetxattrReply, ListxattrReply, ZeroCopyReader, ZeroCopyWriter,
};

use crate::fuse::{AspenFs, Looked};
use crate::store::{FsError, Kind, MAX_NAME_BYTES, Stat, now_ns};

const RENAME_NOREPLACE: u32 = 1;

/// An [`AspenFs`] answering VirtioFS requests.
pub struct VirtioFs(pub AspenFs);

fn os(e: FsError) -> io::Error {
    io::Error::from_raw_os_error(e.errno())
}

fn stat64_of(fs: &AspenFs, ino: u64, stat: &Stat) -> stat64 {
    // SAFETY: stat64 is a plain C struct for which all-zero bytes are a valid value.
    let mut st: stat64 = unsafe { std::mem::zeroed() };
    let kind = match stat.kind {
        Kind::File => libc::S_IFREG,
        Kind::Dir => libc::S_IFDIR,
        Kind::Symlink => libc::S_IFLNK,
    };
    let (uid, gid) = fs.owner();
    let (secs, nanos) = ((stat.mtime_ns / 1_000_000_000) as i64, (stat.mtime_ns % 1_000_000_000) as i64);
    st.st_ino = ino;
    st.st_mode = kind | (stat.mode & 0o7777);
    st.st_nlink = if stat.kind == Kind::Dir { 2 } else { 1 };
    st.st_uid = uid;
    st.st_gid = gid;
    st.st_size = stat.size as i64;
    st.st_blksize = 4096;
    st.st_blocks = stat.size.div_ceil(512) as i64;
    (st.st_mtime, st.st_mtime_nsec) = (secs, nanos);
    (st.st_ctime, st.st_ctime_nsec) = (secs, nanos);
    (st.st_atime, st.st_atime_nsec) = (secs, nanos);
    st
}

impl VirtioFs {
    fn entry(&self, looked: Result<Looked, FsError>) -> io::Result<Entry> {
        let ttl = self.0.ttl();
        let (inode, stat) = looked.map_err(os)?.unwrap_or((0, Stat::absent()));
        let attr = stat64_of(&self.0, inode, &stat);
        Ok(Entry { inode, generation: 0, attr, attr_flags: 0, attr_timeout: ttl, entry_timeout: ttl })
    }
}

impl FileSystem for VirtioFs {
    type Inode = u64;
    type Handle = u64;

    fn init(&self, _capable: FsOptions) -> io::Result<FsOptions> {
        Ok(FsOptions::empty())
    }

    fn lookup(&self, _ctx: &Context, parent: u64, name: &CStr) -> io::Result<Entry> {
        self.entry(self.0.op_lookup(parent, name.to_bytes()))
    }

    fn forget(&self, _ctx: &Context, inode: u64, count: u64) {
        self.0.op_forget(inode, count);
    }

    fn batch_forget(&self, _ctx: &Context, requests: Vec<(u64, u64)>) {
        for (inode, count) in requests {
            self.0.op_forget(inode, count);
        }
    }

    fn getattr(&self, _ctx: &Context, inode: u64, _handle: Option<u64>) -> io::Result<(stat64, Duration)> {
        let stat = self.0.op_getattr(inode).map_err(os)?;
        Ok((stat64_of(&self.0, inode, &stat), self.0.ttl()))
    }

    fn setattr(
        &self,
        _ctx: &Context,
        inode: u64,
        attr: stat64,
        _handle: Option<u64>,
        valid: SetattrValid,
    ) -> io::Result<(stat64, Duration)> {
        let mode = valid.contains(SetattrValid::MODE).then_some(attr.st_mode);
        let size = valid.contains(SetattrValid::SIZE).then_some(attr.st_size as u64);
        let mtime = if valid.contains(SetattrValid::MTIME_NOW) {
            Some(now_ns())
        } else if valid.contains(SetattrValid::MTIME) {
            Some(attr.st_mtime as u64 * 1_000_000_000 + attr.st_mtime_nsec as u64)
        } else {
            None
        };
        let stat = self.0.op_setattr(inode, mode, size, mtime).map_err(os)?;
        Ok((stat64_of(&self.0, inode, &stat), self.0.ttl()))
    }

    fn readlink(&self, _ctx: &Context, inode: u64) -> io::Result<Vec<u8>> {
        self.0.op_readlink(inode).map_err(os)
    }

    fn symlink(&self, _ctx: &Context, linkname: &CStr, parent: u64, name: &CStr) -> io::Result<Entry> {
        self.entry(self.0.op_symlink(parent, name.to_bytes(), linkname.to_bytes()))
    }

    fn mkdir(&self, _ctx: &Context, parent: u64, name: &CStr, mode: u32, umask: u32) -> io::Result<Entry> {
        self.entry(self.0.op_mkdir(parent, name.to_bytes(), mode & !umask))
    }

    fn unlink(&self, _ctx: &Context, parent: u64, name: &CStr) -> io::Result<()> {
        self.0.op_remove(parent, name.to_bytes(), false).map_err(os)
    }

    fn rmdir(&self, _ctx: &Context, parent: u64, name: &CStr) -> io::Result<()> {
        self.0.op_remove(parent, name.to_bytes(), true).map_err(os)
    }

    fn rename(
        &self,
        _ctx: &Context,
        olddir: u64,
        oldname: &CStr,
        newdir: u64,
        newname: &CStr,
        flags: u32,
    ) -> io::Result<()> {
        if flags & !RENAME_NOREPLACE != 0 {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        let noreplace = flags & RENAME_NOREPLACE != 0;
        self.0.op_rename(olddir, oldname.to_bytes(), newdir, newname.to_bytes(), noreplace).map_err(os)
    }

    fn link(&self, _ctx: &Context, _inode: u64, _newparent: u64, _newname: &CStr) -> io::Result<Entry> {
        // A path is a key: one object cannot have two names.
        Err(io::Error::from_raw_os_error(libc::EPERM))
    }

    fn open(
        &self,
        _ctx: &Context,
        inode: u64,
        flags: u32,
        _fuse_flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions, Option<u32>)> {
        let fh = self.0.op_open(inode, flags as i32 & libc::O_TRUNC != 0).map_err(os)?;
        Ok((Some(fh), OpenOptions::empty(), None))
    }

    fn create(
        &self,
        _ctx: &Context,
        parent: u64,
        name: &CStr,
        args: CreateIn,
    ) -> io::Result<(Entry, Option<u64>, OpenOptions, Option<u32>)> {
        let (ino, stat, fh) =
            self.0.op_create(parent, name.to_bytes(), args.mode & !args.umask, args.flags as i32).map_err(os)?;
        let entry = self.entry(Ok(Some((ino, stat))))?;
        Ok((entry, Some(fh), OpenOptions::empty(), None))
    }

    fn read(
        &self,
        _ctx: &Context,
        _inode: u64,
        handle: u64,
        w: &mut dyn ZeroCopyWriter,
        size: u32,
        offset: u64,
        _lock_owner: Option<u64>,
        _flags: u32,
    ) -> io::Result<usize> {
        let bytes = self.0.op_read(handle, offset, size).map_err(os)?;
        w.write_all(&bytes)?;
        Ok(bytes.len())
    }

    fn write(
        &self,
        _ctx: &Context,
        _inode: u64,
        handle: u64,
        r: &mut dyn ZeroCopyReader,
        size: u32,
        offset: u64,
        _lock_owner: Option<u64>,
        _delayed_write: bool,
        flags: u32,
        _fuse_flags: u32,
    ) -> io::Result<usize> {
        let mut data = vec![0u8; size as usize];
        r.read_exact(&mut data)?;
        let append = flags as i32 & libc::O_APPEND != 0;
        self.0.op_write(handle, offset, &data, append).map(|n| n as usize).map_err(os)
    }

    fn flush(&self, _ctx: &Context, _inode: u64, handle: u64, _lock_owner: u64) -> io::Result<()> {
        self.0.op_flush(handle).map_err(os)
    }

    fn fsync(&self, _ctx: &Context, _inode: u64, _datasync: bool, handle: u64) -> io::Result<()> {
        self.0.op_flush(handle).map_err(os)
    }

    fn release(
        &self,
        _ctx: &Context,
        _inode: u64,
        _flags: u32,
        handle: u64,
        _flush: bool,
        _flock_release: bool,
        _lock_owner: Option<u64>,
    ) -> io::Result<()> {
        self.0.op_release(handle).map_err(os)
    }

    fn statfs(&self, _ctx: &Context, _inode: u64) -> io::Result<statvfs64> {
        // SAFETY: statvfs64 is a plain C struct for which all-zero bytes are a valid value.
        let mut st: statvfs64 = unsafe { std::mem::zeroed() };
        // The cluster has no fixed size; report a large, plausible one.
        st.f_bsize = 4096;
        st.f_frsize = 4096;
        (st.f_blocks, st.f_bfree, st.f_bavail) = (1 << 32, 1 << 32, 1 << 32);
        (st.f_files, st.f_ffree) = (1 << 30, 1 << 30);
        st.f_namemax = MAX_NAME_BYTES as u64;
        Ok(st)
    }

    fn getxattr(&self, _ctx: &Context, _inode: u64, _name: &CStr, _size: u32) -> io::Result<GetxattrReply> {
        // Extended attributes are not kept: none exists.
        Err(io::Error::from_raw_os_error(libc::ENODATA))
    }

    fn listxattr(&self, _ctx: &Context, _inode: u64, size: u32) -> io::Result<ListxattrReply> {
        Ok(if size == 0 { ListxattrReply::Count(0) } else { ListxattrReply::Names(Vec::new()) })
    }

    fn opendir(&self, _ctx: &Context, inode: u64, _flags: u32) -> io::Result<(Option<u64>, OpenOptions)> {
        let fh = self.0.op_opendir(inode).map_err(os)?;
        Ok((Some(fh), OpenOptions::empty()))
    }

    fn readdir(
        &self,
        _ctx: &Context,
        inode: u64,
        handle: u64,
        _size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry) -> io::Result<usize>,
    ) -> io::Result<()> {
        self.0
            .op_readdir(inode, handle, offset, &mut |ino, next, kind, name| {
                let type_ = match kind {
                    Kind::File => libc::DT_REG,
                    Kind::Dir => libc::DT_DIR,
                    Kind::Symlink => libc::DT_LNK,
                } as u32;
                // Zero bytes taken: the reply is full.
                !matches!(add_entry(DirEntry { ino, offset: next, type_, name }), Ok(n) if n > 0)
            })
            .map_err(os)
    }

    fn releasedir(&self, _ctx: &Context, _inode: u64, _flags: u32, handle: u64) -> io::Result<()> {
        self.0.op_releasedir(handle);
        Ok(())
    }

    fn fsyncdir(&self, _ctx: &Context, _inode: u64, _datasync: bool, _handle: u64) -> io::Result<()> {
        // Every directory change is committed in the cluster before it is answered.
        Ok(())
    }
}
