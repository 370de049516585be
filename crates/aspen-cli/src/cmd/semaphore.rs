//! `aspen semaphore NAME --permits N -- COMMAND...`: run a command while holding one of a
//! semaphore's N permits, so at most N such commands run at once across the cluster.
//!
//! Every user of a semaphore must give the same N: the first N contenders in the queue hold
//! a permit, whatever number each of them was started with.

use std::time::Duration;

use anyhow::Context as _;
use aspen_coord::Semaphore;
use clap::Args;

use crate::cmd::coord::{parse_name, run_holding};
use crate::context::Ctx;
use crate::duration::parse_duration;

/// Most permits a semaphore may have: the queue is read in one scan of at most this many
/// contenders.
pub const MAX_PERMITS: u64 = 10_000;

#[derive(Debug, Args)]
pub struct SemaphoreArgs {
    /// The semaphore's name.
    #[arg(value_parser = parse_name)]
    pub name: String,
    /// How many holders the semaphore admits at once (the same for every user).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=MAX_PERMITS))]
    pub permits: u64,
    /// Longest wait for a permit.
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    pub timeout: Duration,
    /// Session lease TTL: how soon the permit frees itself if this process dies.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub ttl: Duration,
    /// The command to run while holding a permit (after `--`). A failing command's exit
    /// status is aspen's.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

pub async fn run(ctx: &Ctx, args: SemaphoreArgs) -> anyhow::Result<()> {
    let SemaphoreArgs { name, permits, timeout, ttl, command } = args;
    let permits = usize::try_from(permits).context("--permits does not fit this machine's word")?;
    let semaphore_name = name.as_str();
    run_holding(ctx, "semaphore", &name, ttl, &command, |session| async move {
        Semaphore::new(&session, semaphore_name, permits).acquire(timeout).await
    })
    .await
}
