//! `aspen barrier`: hold, release and wait on a barrier; run a command inside a double
//! barrier, so N processes start it together and finish together.

use std::time::Duration;

use anyhow::Context as _;
use aspen_coord::{Barrier, DoubleBarrier, MAX_BARRIER_PARTICIPANTS, Session};
use serde_json::json;

use crate::cmd::coord::{CommandFailed, parse_name};
use crate::context::Ctx;
use crate::duration::parse_duration;
use crate::output;

#[derive(Debug, clap::Subcommand)]
pub enum BarrierCommand {
    /// Raise a barrier: `barrier wait` blocks until it is released. It stays up after this
    /// command exits.
    Hold {
        #[arg(value_parser = parse_name)]
        name: String,
    },
    /// Release a barrier: every waiter goes on.
    Release {
        #[arg(value_parser = parse_name)]
        name: String,
    },
    /// Wait until a barrier is released (return at once if it is not up).
    Wait {
        #[arg(value_parser = parse_name)]
        name: String,
        /// Longest wait.
        #[arg(long, value_parser = parse_duration, default_value = "60s")]
        timeout: Duration,
    },
    /// Enter a double barrier of N participants, run a command, then leave: the command
    /// starts once N participants have entered, and this returns once all of them have left.
    Enter {
        #[arg(value_parser = parse_name)]
        name: String,
        /// How many participants the barrier waits for (the same for every participant).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=MAX_BARRIER_PARTICIPANTS as u64))]
        count: u64,
        /// Longest wait to enter, and again to leave.
        #[arg(long, value_parser = parse_duration, default_value = "60s")]
        timeout: Duration,
        /// Session lease TTL: how soon the others stop waiting for this process if it dies.
        #[arg(long, value_parser = parse_duration, default_value = "10s")]
        ttl: Duration,
        /// The command to run between entering and leaving (after `--`); without one, enter
        /// and leave at once (a rendezvous). A failing command's exit status is aspen's.
        #[arg(last = true)]
        command: Vec<String>,
    },
}

pub async fn run(ctx: &Ctx, cmd: BarrierCommand) -> anyhow::Result<()> {
    ctx.with_client(async |client| match cmd {
        BarrierCommand::Hold { name } => {
            Barrier::new(client, &name)?.hold().await?;
            report(ctx, &name, "held")
        }
        BarrierCommand::Release { name } => {
            Barrier::new(client, &name)?.release().await?;
            report(ctx, &name, "released")
        }
        BarrierCommand::Wait { name, timeout } => {
            Barrier::new(client, &name)?.wait(timeout).await?;
            report(ctx, &name, "passed")
        }
        BarrierCommand::Enter { name, count, timeout, ttl, command } => {
            let count = usize::try_from(count).context("--count does not fit this machine's word")?;
            enter_run_leave(ctx, client, &name, count, timeout, ttl, &command).await
        }
    })
    .await
}

fn report(ctx: &Ctx, name: &str, state: &str) -> anyhow::Result<()> {
    if ctx.json {
        output::print_json(&json!({"barrier": name, "state": state}))?;
    } else {
        output::print_line(&format!("barrier {name} {state}"))?;
    }
    Ok(())
}

async fn enter_run_leave(
    ctx: &Ctx,
    client: &aspen_client::Client,
    name: &str,
    count: usize,
    timeout: Duration,
    ttl: Duration,
    command: &[String],
) -> anyhow::Result<()> {
    let session = Session::new(client.clone(), ttl).await.context("cannot start a barrier session")?;
    let result = async {
        let mut barrier = DoubleBarrier::new(&session, name, count)?;
        barrier.enter(timeout).await?;
        let status = match command.split_first() {
            None => None,
            Some((program, args)) => Some(
                tokio::process::Command::new(program)
                    .args(args)
                    .status()
                    .await
                    .with_context(|| format!("cannot run {program}")),
            ),
        };
        // Leave even when the command failed, so the others are not kept waiting for us.
        barrier.leave(timeout).await?;
        match status.transpose()? {
            Some(status) if !status.success() => Err(CommandFailed(status).into()),
            _ => anyhow::Ok(()),
        }
    }
    .await;
    // Revoking the lease also takes our key out if we stopped half way.
    let _ = session.close().await;
    result?;
    if command.is_empty() {
        report(ctx, name, "entered and left")?;
    }
    Ok(())
}
