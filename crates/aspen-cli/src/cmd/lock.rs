//! `aspen lock NAME -- COMMAND...`: run a command while holding a cluster-wide lock.
//!
//! The command gets the lock's fencing token in `$ASPEN_LOCK_TOKEN`. The lock is held by a
//! session lease this process keeps alive; if this process dies, the lease ends and the lock
//! is freed within its TTL.

use std::time::Duration;

use anyhow::{Context as _, bail};
use aspen_coord::{Lock, Session};
use clap::Args;

use crate::context::Ctx;
use crate::duration::parse_duration;

#[derive(Debug, Args)]
pub struct LockArgs {
    /// The lock's name.
    pub name: String,
    /// Longest wait for the lock.
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    pub timeout: Duration,
    /// Session lease TTL: how soon the lock frees itself if this process dies.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub ttl: Duration,
    /// The command to run while holding the lock (after `--`). Without one, print the
    /// fencing token and release at once.
    #[arg(last = true)]
    pub command: Vec<String>,
}

pub async fn run(ctx: &Ctx, args: LockArgs) -> anyhow::Result<()> {
    if args.name.is_empty() || args.name.contains('/') {
        bail!("lock name {:?} must be non-empty and contain no '/'", args.name);
    }
    let client = ctx.client().await?;
    let session = Session::new(client.clone(), args.ttl).await.context("cannot start a lock session")?;
    let result = async {
        let guard = Lock::new(&session, &args.name).acquire(args.timeout).await?;
        let token = guard.token();
        let status = match args.command.split_first() {
            None => {
                println!("{token}");
                None
            }
            Some((program, rest)) => Some(
                tokio::process::Command::new(program)
                    .args(rest)
                    .env("ASPEN_LOCK_TOKEN", token.to_string())
                    .status()
                    .await
                    .with_context(|| format!("cannot run {program}"))?,
            ),
        };
        guard.release().await?;
        anyhow::Ok(status)
    }
    .await;
    let _ = session.close().await;
    client.close().await;
    match result? {
        Some(status) if !status.success() => bail!("the command exited with {status}"),
        _ => Ok(()),
    }
}
