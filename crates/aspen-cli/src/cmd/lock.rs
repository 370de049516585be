//! `aspen lock NAME -- COMMAND...`: run a command while holding a cluster-wide lock.
//!
//! The command gets the lock's fencing token in `$ASPEN_LOCK_TOKEN`. The lock is held by a
//! session lease this process keeps alive; if this process dies, the lease ends and the lock
//! is freed within its TTL.

use std::time::Duration;

use aspen_coord::Lock;
use clap::Args;

use crate::cmd::coord::{parse_name, run_holding};
use crate::context::Ctx;
use crate::duration::parse_duration;

/// A lock to hold and the command to run under it (also `aspen rwlock read|write`).
#[derive(Debug, Args)]
pub struct LockArgs {
    /// The lock's name.
    #[arg(value_parser = parse_name)]
    pub name: String,
    /// Longest wait for the lock.
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    pub timeout: Duration,
    /// Session lease TTL: how soon the lock frees itself if this process dies.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub ttl: Duration,
    /// The command to run while holding the lock (after `--`). Without one, print the
    /// fencing token and release at once. A failing command's exit status is aspen's.
    #[arg(last = true)]
    pub command: Vec<String>,
}

pub async fn run(ctx: &Ctx, args: LockArgs) -> anyhow::Result<()> {
    let LockArgs { name, timeout, ttl, command } = args;
    let lock_name = name.as_str();
    run_holding(ctx, "lock", &name, ttl, &command, |session| async move {
        Lock::new(&session, lock_name).acquire(timeout).await
    })
    .await
}
