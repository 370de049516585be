//! `aspen counter get|add|cas NAME ...`: read and change a shared counter, a `u64` that
//! starts at 0.

use anyhow::bail;
use aspen_client::Client;
use aspen_coord::Counter;
use serde_json::json;

use crate::cmd::coord::parse_name;
use crate::context::{AlreadyReported, Ctx};
use crate::output;

#[derive(Debug, clap::Subcommand)]
pub enum CounterCommand {
    /// Print the counter's value (0 if it was never changed).
    Get {
        /// The counter's name.
        #[arg(value_parser = parse_name)]
        name: String,
    },
    /// Add DELTA and print the new value; a negative DELTA subtracts, stopping at 0.
    Add {
        /// The counter's name.
        #[arg(value_parser = parse_name)]
        name: String,
        /// How much to add; negative subtracts.
        #[arg(allow_negative_numbers = true)]
        delta: i64,
    },
    /// Set the counter to NEW only if it is EXPECTED, and print NEW.
    /// Exits with status 1, naming the value found, when it is not.
    Cas {
        /// The counter's name.
        #[arg(value_parser = parse_name)]
        name: String,
        /// The value the counter must hold.
        // Negative numbers are taken as values, so the error says they are not counts.
        #[arg(allow_negative_numbers = true)]
        expected: u64,
        /// The value to set.
        #[arg(allow_negative_numbers = true)]
        new: u64,
    },
}

pub async fn run(ctx: &Ctx, cmd: CounterCommand) -> anyhow::Result<()> {
    ctx.with_client(async |client| run_with(ctx, client, cmd).await).await
}

async fn run_with(ctx: &Ctx, client: &Client, cmd: CounterCommand) -> anyhow::Result<()> {
    match cmd {
        CounterCommand::Get { name } => {
            let value = Counter::new(client, &name).get().await?;
            print_value(ctx, &name, value)
        }
        CounterCommand::Add { name, delta } => {
            let value = Counter::new(client, &name).add(delta).await?;
            print_value(ctx, &name, value)
        }
        CounterCommand::Cas { name, expected, new } => cas(ctx, client, &name, expected, new).await,
    }
}

fn print_value(ctx: &Ctx, name: &str, value: u64) -> anyhow::Result<()> {
    if ctx.json {
        output::print_json(&json!({"name": name, "value": value}))?;
    } else {
        output::print_line(&value.to_string())?;
    }
    Ok(())
}

async fn cas(ctx: &Ctx, client: &Client, name: &str, expected: u64, new: u64) -> anyhow::Result<()> {
    let counter = Counter::new(client, name);
    let swapped = counter.compare_and_swap(expected, new).await?;
    // On a mismatch, read the value again to show it: the swap does not return it.
    let value = if swapped { new } else { counter.get().await? };
    if ctx.json {
        output::print_json(&json!({"name": name, "succeeded": swapped, "value": value}))?;
        if !swapped {
            return Err(AlreadyReported("compare failed".into()).into());
        }
        return Ok(());
    }
    if swapped {
        output::print_line(&value.to_string())?;
        return Ok(());
    }
    if value == expected {
        bail!("compare failed: counter {name} was not {expected} when swapped (it is {value} again now)");
    }
    bail!("compare failed: expected counter {name} to be {expected}, but it is {value}")
}
