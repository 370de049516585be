//! Mounting: the FUSE session on its own threads, and a watch on the prefix that tells the
//! kernel to drop what it cached for a key that changed (through the KV, or another mount).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::Duration;

use aspen_kv::{Kv, SharedKv};
use fuser::{Config, MountOption, Session, SessionACL, SessionUnmounter};
use tracing::{debug, warn};

use crate::content::ChunkStore;
use crate::fuse::{AspenFs, FsConfig};
use crate::store::{FsError, FsStore};

/// How to mount.
#[derive(Debug, Clone)]
pub struct MountOptions {
    /// The KV prefix shown as the filesystem's root; ends in `/`.
    pub prefix: Vec<u8>,
    /// How long the kernel keeps entries and attributes before asking again while the
    /// watch on the prefix is down.
    pub ttl: Duration,
    /// The same while the watch runs (it drops what changed elsewhere as it sees it).
    pub watched_ttl: Duration,
    /// Longest one cluster request may take before the system call fails with `EIO`.
    pub op_timeout: Duration,
    /// Threads answering the kernel.
    pub threads: usize,
    /// Let other users (and root) use the mount; needs `user_allow_other` for non-root.
    pub allow_other: bool,
}

impl MountOptions {
    pub fn new(prefix: impl Into<Vec<u8>>) -> MountOptions {
        MountOptions {
            prefix: prefix.into(),
            ttl: Duration::from_secs(1),
            watched_ttl: Duration::from_secs(60),
            op_timeout: Duration::from_secs(30),
            threads: 2,
            allow_other: false,
        }
    }
}

/// Why a mount failed.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error("mounting at {mountpoint}: {source}")]
    Mount { mountpoint: PathBuf, source: std::io::Error },
}

/// What the kernel must forget.
enum Stale {
    /// A path changed at a revision; seen at an instant.
    Path(Vec<u8>, u64, std::time::Instant),
    /// Everything: the watch broke, changes may have been missed.
    All,
}

/// How long an event waits for the answer of a write this mount may have made.
const OWN_WRITE_SETTLE: Duration = Duration::from_millis(50);

/// How long a broken watch waits before it starts again.
const WATCH_RETRY: Duration = Duration::from_secs(1);

/// A live mount. Dropping it unmounts.
pub struct Mount {
    mountpoint: PathBuf,
    unmounter: SessionUnmounter,
    session: Option<JoinHandle<std::io::Result<()>>>,
    watch: tokio::task::JoinHandle<()>,
}

/// Mounts `kv`'s `options.prefix` at `mountpoint`, with large files' chunks in `chunks`
/// (without it, a file larger than one KV value is refused). Requests run on `rt`.
pub fn mount(
    kv: SharedKv,
    chunks: Option<Arc<dyn ChunkStore>>,
    rt: &tokio::runtime::Handle,
    mountpoint: &Path,
    options: &MountOptions,
) -> Result<Mount, MountError> {
    let store = FsStore::new(kv.clone(), options.prefix.clone(), options.op_timeout)?;
    // SAFETY: geteuid and getegid cannot fail.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    let fs = AspenFs::new(
        store.clone(),
        chunks,
        rt.clone(),
        FsConfig { ttl: options.ttl, watched_ttl: options.watched_ttl, uid, gid },
    );
    let invalidator = fs.invalidator();
    let mut config = Config::default();
    let name = format!("aspenfs:{}", String::from_utf8_lossy(&options.prefix));
    config.mount_options = vec![MountOption::FSName(name), MountOption::DefaultPermissions];
    if options.allow_other {
        config.acl = SessionACL::All;
    }
    config.n_threads = Some(options.threads.max(1));
    let map_err = |source| MountError::Mount { mountpoint: mountpoint.to_path_buf(), source };
    let mut session = Session::new(fs, mountpoint, &config).map_err(map_err)?;
    let unmounter = session.unmount_callable();
    let notifier = session.notifier();
    let session = std::thread::Builder::new().name("aspenfs".into()).spawn(move || session.run()).map_err(map_err)?;

    // Notifications go through their own thread: writing one can wait on a kernel lock held
    // by a request whose answer needs the runtime.
    let (tx, rx) = std::sync::mpsc::channel::<Stale>();
    let own = store.clone();
    let invalidator_flag = invalidator.watching.clone();
    std::thread::Builder::new()
        .name("aspenfs-inval".into())
        .spawn(move || {
            for stale in rx {
                let paths = match stale {
                    Stale::Path(path, revision, seen) => {
                        // The event of this mount's own write can arrive before the write's
                        // answer (which records its revision): give the answer a moment.
                        let settle = (seen + OWN_WRITE_SETTLE).saturating_duration_since(std::time::Instant::now());
                        std::thread::sleep(settle);
                        if own.is_own(revision) {
                            continue;
                        }
                        vec![path]
                    }
                    Stale::All => invalidator.all_paths(),
                };
                for path in paths {
                    let (own, parent) = invalidator.stale(&path);
                    if let Some(ino) = own
                        && let Err(e) = notifier.inval_inode(ino, 0, 0)
                    {
                        debug!(error = %e, "inval_inode");
                    }
                    if let Some((parent, name)) = parent
                        && let Err(e) = notifier.inval_entry(parent, OsStr::from_bytes(&name))
                    {
                        debug!(error = %e, "inval_entry");
                    }
                }
            }
        })
        .map_err(map_err)?;
    let prefix = options.prefix.clone();
    let watch = rt.spawn(async move {
        let watching = invalidator_flag;
        loop {
            let mut events = kv.watch(&prefix, 0);
            watching.store(true, Ordering::Relaxed);
            while let Some(event) = events.next().await {
                match event {
                    // This mount's own changes are already in the kernel's cache.
                    Ok(event) if store.is_own(event.revision()) => {}
                    Ok(event) => {
                        if let Some(path) = store.path_of_key(&event.kv.key)
                            && tx.send(Stale::Path(path.to_vec(), event.revision(), std::time::Instant::now())).is_err()
                        {
                            return;
                        }
                    }
                    Err(e) => {
                        warn!(error = %e, "aspenfs watch failed; entries expire after the short TTL until it is back");
                        break;
                    }
                }
            }
            // Changes may have been missed: short entries from now on, everything known
            // dropped, and a new watch.
            watching.store(false, Ordering::Relaxed);
            if tx.send(Stale::All).is_err() {
                return;
            }
            tokio::time::sleep(WATCH_RETRY).await;
        }
    });
    Ok(Mount { mountpoint: mountpoint.to_path_buf(), unmounter, session: Some(session), watch })
}

impl Mount {
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// Unmounts and waits for the session to end.
    pub fn unmount(mut self) -> std::io::Result<()> {
        self.finish()
    }

    /// True once the session has ended (the filesystem was unmounted).
    pub fn is_ended(&self) -> bool {
        self.session.as_ref().is_none_or(|s| s.is_finished())
    }

    fn finish(&mut self) -> std::io::Result<()> {
        self.watch.abort();
        let Some(session) = self.session.take() else { return Ok(()) };
        let mut unmounted = self.unmounter.unmount();
        if unmounted.is_err() {
            // Busy (a file still open): detach it now; the kernel ends the session once the
            // last user lets go.
            let path = std::ffi::CString::new(self.mountpoint.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
            // SAFETY: a valid NUL-terminated path.
            if unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) } == 0 {
                unmounted = Ok(());
            }
        }
        unmounted?;
        let deadline = std::time::Instant::now() + UNMOUNT_WAIT;
        while !session.is_finished() {
            if std::time::Instant::now() > deadline {
                return Err(std::io::Error::other(format!(
                    "the FUSE session did not end within {UNMOUNT_WAIT:?} of unmounting"
                )));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        session.join().unwrap_or_else(|_| Err(std::io::Error::other("the session thread panicked")))
    }
}

/// How long an unmount waits for the session's thread to end.
const UNMOUNT_WAIT: Duration = Duration::from_secs(10);

impl Drop for Mount {
    fn drop(&mut self) {
        if let Err(e) = self.finish() {
            warn!(error = %e, mountpoint = %self.mountpoint.display(), "unmounting");
        }
    }
}
