//! `aspen ratelimit take`: take tokens from a token bucket the whole cluster shares.

use std::time::Duration;

use anyhow::bail;
use aspen_client::Client;
use aspen_coord::RateLimiter;
use serde_json::json;

use crate::context::Ctx;
use crate::duration::{format_duration, parse_duration};
use crate::output;

#[derive(Debug, clap::Subcommand)]
pub enum RatelimitCommand {
    /// Take tokens from bucket NAME (created full). Exits with an error when the bucket
    /// holds too few and --wait is not given or runs out; prints what is left.
    Take {
        name: String,
        /// Most tokens the bucket holds.
        #[arg(long)]
        capacity: u64,
        /// Tokens added every --per.
        #[arg(long)]
        refill: u64,
        #[arg(long, value_parser = parse_duration, default_value = "1s")]
        per: Duration,
        /// Tokens to take.
        #[arg(long, default_value_t = 1)]
        tokens: u64,
        /// Wait up to this long for the bucket to refill.
        #[arg(long, value_parser = parse_duration, default_value = "0s")]
        wait: Duration,
    },
}

pub async fn run(ctx: &Ctx, client: &Client, cmd: RatelimitCommand) -> anyhow::Result<()> {
    let RatelimitCommand::Take { name, capacity, refill, per, tokens, wait } = cmd;
    let bucket = RateLimiter::new(client, &name, capacity, refill, per)?;
    let result = if wait.is_zero() { bucket.try_acquire(tokens).await? } else { bucket.acquire(tokens, wait).await? };
    if ctx.json {
        output::print_json(&json!({
            "bucket": name, "granted": result.granted, "available": result.available,
            "retry_after_ms": result.retry_after_ms,
        }))?;
    } else if result.granted {
        output::print_line(&format!("granted {tokens}; {} left", result.available))?;
    }
    if !result.granted {
        bail!(
            "bucket {name} holds {} of the {tokens} tokens asked for; retry in {}",
            result.available,
            format_duration(Duration::from_millis(result.retry_after_ms))
        );
    }
    Ok(())
}
