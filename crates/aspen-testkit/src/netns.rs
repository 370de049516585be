//! Entering a named network namespace (`/run/netns/<name>`, as made by `ip netns add`): for child
//! processes through a `setns` in `pre_exec`, so the spawned pid is the program itself, and for
//! sockets the test process creates on a short-lived helper thread.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, anyhow};

/// An open handle on a named network namespace.
#[derive(Debug)]
pub(crate) struct NetnsHandle {
    name: String,
    file: File,
}

impl NetnsHandle {
    /// Opens the namespace `name` created by `ip netns add`.
    pub(crate) fn open(name: &str) -> anyhow::Result<Self> {
        let path = PathBuf::from("/run/netns").join(name);
        let file = File::open(&path).with_context(|| format!("cannot open network namespace {}", path.display()))?;
        Ok(Self { name: name.to_owned(), file })
    }

    /// The namespace's name.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Makes `cmd` enter this namespace between fork and exec. The command must be spawned while
    /// `self` is alive (the child uses this handle's file descriptor).
    pub(crate) fn apply_to(&self, cmd: &mut Command) {
        let fd = self.file.as_raw_fd();
        // SAFETY: the hook only issues the async-signal-safe `setns` syscall, and `fd` stays open
        // until the spawn completes because `self` outlives the caller's `spawn`.
        unsafe {
            cmd.pre_exec(move || enter(fd));
        }
    }

    /// Runs `f` on a fresh thread that has entered this namespace; sockets `f` creates stay in
    /// the namespace after the thread ends.
    pub(crate) fn run_in<T: Send>(&self, f: impl FnOnce() -> io::Result<T> + Send) -> anyhow::Result<T> {
        let fd = self.file.as_raw_fd();
        std::thread::scope(|s| {
            s.spawn(move || -> io::Result<T> {
                enter(fd)?;
                f()
            })
            .join()
            .map_err(|_| anyhow!("helper thread in namespace {} panicked", self.name))?
            .with_context(|| format!("inside network namespace {}", self.name))
        })
    }
}

fn enter(fd: RawFd) -> io::Result<()> {
    // SAFETY: plain syscall on a descriptor we keep open; affects only the calling thread.
    if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}
