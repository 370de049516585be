//! `aspen lease`: grant, keep alive, revoke and list leases.

use std::time::Duration;

use aspen_client::{Client, LeaseGrant, LeaseId};
use serde_json::{Value, json};

use crate::context::Ctx;
use crate::duration::{format_duration, parse_duration};
use crate::output;

#[derive(Debug, clap::Subcommand)]
pub enum LeaseCommand {
    /// Grant a lease with a time to live (e.g. 10s, 500ms, 1h); prints its id.
    Grant {
        #[arg(value_parser = parse_duration)]
        ttl: Duration,
    },
    /// Restart a lease's countdown; with --every, keep doing so until Ctrl-C.
    Keepalive {
        id: u64,
        /// Send a keepalive at this interval until interrupted.
        #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
        every: Option<Duration>,
    },
    /// End a lease now, deleting the keys attached to it.
    Revoke { id: u64 },
    /// List live leases.
    List,
}

pub async fn run(ctx: &Ctx, client: &Client, cmd: LeaseCommand) -> anyhow::Result<()> {
    match cmd {
        LeaseCommand::Grant { ttl } => {
            let grant = client.lease_grant(ttl).await?;
            print_grant(ctx, &grant, "granted")
        }
        LeaseCommand::Keepalive { id, every: None } => {
            let grant = client.lease_keepalive(LeaseId(id)).await?;
            print_grant(ctx, &grant, "kept alive")
        }
        LeaseCommand::Keepalive { id, every: Some(every) } => {
            keep_alive_until_interrupted(ctx, client, id, every).await
        }
        LeaseCommand::Revoke { id } => {
            let revoked = client.lease_revoke(LeaseId(id)).await?;
            if ctx.json {
                output::print_json(
                    &json!({"id": id, "revision": revoked.revision, "deleted_keys": revoked.deleted_keys}),
                )?;
            } else {
                output::print_line(&format!("lease {id} revoked; {} keys deleted", revoked.deleted_keys))?;
            }
            Ok(())
        }
        LeaseCommand::List => {
            let leases = client.lease_list().await?;
            if ctx.json {
                let list: Vec<Value> = leases
                    .iter()
                    .map(|l| json!({"id": l.id.0, "ttl_ms": l.ttl_ms, "remaining_ms": l.remaining_ms}))
                    .collect();
                output::print_json(&json!({"leases": list}))?;
            } else {
                for l in &leases {
                    let remaining = Duration::from_millis(u64::try_from(l.remaining_ms).unwrap_or(0));
                    output::print_line(&format!(
                        "{} ttl={} remaining={}",
                        l.id,
                        format_duration(Duration::from_millis(l.ttl_ms)),
                        format_duration(remaining)
                    ))?;
                }
            }
            Ok(())
        }
    }
}

fn print_grant(ctx: &Ctx, grant: &LeaseGrant, verb: &str) -> anyhow::Result<()> {
    if ctx.json {
        output::print_json(&json!({
            "id": grant.id.0,
            "ttl_ms": u64::try_from(grant.ttl.as_millis()).unwrap_or(u64::MAX),
            "expires_at_ms": grant.expires_at_ms,
        }))?;
    } else {
        output::print_line(&format!("lease {} {verb} with TTL {}", grant.id, format_duration(grant.ttl)))?;
    }
    Ok(())
}

async fn keep_alive_until_interrupted(ctx: &Ctx, client: &Client, id: u64, every: Duration) -> anyhow::Result<()> {
    if every.is_zero() {
        anyhow::bail!("--every must be longer than zero");
    }
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    loop {
        tokio::select! {
            _ = &mut interrupted => return Ok(()),
            _ = ticker.tick() => {
                let grant = client.lease_keepalive(LeaseId(id)).await?;
                print_grant(ctx, &grant, "kept alive")?;
                if every >= grant.ttl {
                    eprintln!("warning: --every {} is not shorter than the lease's TTL {}; it may expire between keepalives",
                        format_duration(every), format_duration(grant.ttl));
                }
            }
        }
    }
}
