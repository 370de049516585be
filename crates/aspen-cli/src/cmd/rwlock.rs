//! `aspen rwlock read|write NAME -- COMMAND...`: run a command while holding a cluster-wide
//! read lock (shared with other readers) or write lock (alone).
//!
//! As with `aspen lock`, the command gets the hold's fencing token in `$ASPEN_LOCK_TOKEN`.
//! Waiters are served in arrival order, so a waiting writer is not starved by readers that
//! arrive after it.

use aspen_coord::RwLock;

use crate::cmd::coord::run_holding;
use crate::cmd::lock::LockArgs;
use crate::context::Ctx;

#[derive(Debug, clap::Subcommand)]
pub enum RwLockCommand {
    /// Run a command while holding a read lock: other readers may hold it too; writers wait.
    Read(LockArgs),
    /// Run a command while holding the write lock: alone, with readers and writers waiting.
    Write(LockArgs),
}

pub async fn run(ctx: &Ctx, cmd: RwLockCommand) -> anyhow::Result<()> {
    let (write, LockArgs { name, timeout, ttl, command }) = match cmd {
        RwLockCommand::Read(args) => (false, args),
        RwLockCommand::Write(args) => (true, args),
    };
    let lock_name = name.as_str();
    run_holding(ctx, "rwlock", &name, ttl, &command, |session| async move {
        let lock = RwLock::new(&session, lock_name);
        if write { lock.write(timeout).await } else { lock.read(timeout).await }
    })
    .await
}
