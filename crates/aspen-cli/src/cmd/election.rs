//! `aspen election campaign|leader|watch NAME`: run a command as an election's leader, or
//! show who leads.
//!
//! The leader is the first candidate in the election's queue; its value is what it stood
//! with, and its term (a fencing token, greater for each new leader) is what a leader's
//! command gets in `$ASPEN_ELECTION_TERM`.

use std::time::Duration;

use anyhow::{Context as _, bail};
use aspen_coord::{Election, Leader, Session};
use serde_json::{Value, json};

use crate::cmd::coord::{parse_name, run_holding};
use crate::context::Ctx;
use crate::duration::parse_duration;
use crate::output;

/// TTL of the session `leader` and `watch` need to name an election; they hold nothing.
const OBSERVER_TTL: Duration = Duration::from_secs(10);

#[derive(Debug, clap::Subcommand)]
pub enum ElectionCommand {
    /// Stand with VALUE, wait to be elected, run a command as leader, then resign.
    ///
    /// The command gets the leadership's term in $ASPEN_ELECTION_TERM. Without a command,
    /// print the term and resign at once.
    Campaign {
        /// The election's name.
        #[arg(value_parser = parse_name)]
        name: String,
        /// What the leader publishes while it leads (shown by `leader` and `watch`).
        value: String,
        /// Longest wait to be elected (default: until elected, or Ctrl-C).
        #[arg(long, value_parser = parse_duration)]
        timeout: Option<Duration>,
        /// Session lease TTL: how soon leadership passes on if this process dies.
        #[arg(long, value_parser = parse_duration, default_value = "10s")]
        ttl: Duration,
        /// The command to run while leader (after `--`). A failing command's exit status is
        /// aspen's.
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Print the leader's value and term (`VALUE term=N`); exits with status 1 when there
    /// is no leader.
    Leader {
        /// The election's name.
        #[arg(value_parser = parse_name)]
        name: String,
    },
    /// Print the leader (`VALUE term=N`, or `no leader`) now and at every change, until Ctrl-C.
    Watch {
        /// The election's name.
        #[arg(value_parser = parse_name)]
        name: String,
    },
}

pub async fn run(ctx: &Ctx, cmd: ElectionCommand) -> anyhow::Result<()> {
    match cmd {
        ElectionCommand::Campaign { name, value, timeout, ttl, command } => {
            let election_name = name.as_str();
            // No --timeout: wait as long as it takes (tokio treats the far deadline as none).
            let timeout = timeout.unwrap_or(Duration::MAX);
            run_holding(ctx, "election", &name, ttl, &command, |session| async move {
                Election::new(&session, election_name).campaign(value, timeout).await
            })
            .await
        }
        ElectionCommand::Leader { name } => observe(ctx, &name, leader).await,
        ElectionCommand::Watch { name } => observe(ctx, &name, watch).await,
    }
}

/// Runs `f` on the election named `name`, in a short-lived session.
async fn observe<F>(ctx: &Ctx, name: &str, f: F) -> anyhow::Result<()>
where
    F: AsyncFnOnce(&Ctx, &str, &Election) -> anyhow::Result<()>,
{
    ctx.with_client(async |client| {
        let session = Session::new(client, OBSERVER_TTL)
            .await
            .with_context(|| format!("cannot start a session to read election {name}"))?;
        let result = f(ctx, name, &Election::new(&session, name)).await;
        let _ = session.close().await;
        result
    })
    .await
}

async fn leader(ctx: &Ctx, name: &str, election: &Election) -> anyhow::Result<()> {
    let Some(leader) = election.leader().await? else {
        bail!("election {name} has no leader");
    };
    print_leader(ctx, name, Some(&leader))
}

/// Prints the leader now, then each change, until Ctrl-C.
async fn watch(ctx: &Ctx, name: &str, election: &Election) -> anyhow::Result<()> {
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    let mut known = tokio::select! {
        Ok(()) = &mut interrupted => return Ok(()),
        now = election.leader() => now?,
    };
    print_leader(ctx, name, known.as_ref())?;
    loop {
        known = tokio::select! {
            Ok(()) = &mut interrupted => return Ok(()),
            next = election.observe_change(known.as_ref()) => next?,
        };
        print_leader(ctx, name, known.as_ref())?;
    }
}

/// `VALUE term=N` or `no leader`; in JSON `{"name", "leader": {"term", "value"} | null}`.
fn print_leader(ctx: &Ctx, name: &str, leader: Option<&Leader>) -> anyhow::Result<()> {
    if ctx.json {
        let leader = leader.map_or(Value::Null, |l| {
            let mut map = output::bytes_object("value", &l.value);
            map.insert("term".into(), json!(l.term));
            Value::Object(map)
        });
        output::print_json(&json!({"name": name, "leader": leader}))?;
    } else {
        match leader {
            Some(l) => output::print_line(&format!("{} term={}", output::text(&l.value), l.term))?,
            None => output::print_line("no leader")?,
        }
    }
    Ok(())
}
