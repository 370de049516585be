//! `aspen sequence next NAME [--count N]`: draw unique, increasing ids from a shared
//! sequence.
//!
//! The N ids are reserved in one write (a block), so they are consecutive; ids drawn later,
//! by any client, are greater.

use aspen_client::Client;
use aspen_coord::Sequence;
use serde_json::json;

use crate::cmd::coord::parse_name;
use crate::context::Ctx;
use crate::output;

/// Most ids one `aspen sequence next` draws.
pub const MAX_IDS_PER_DRAW: u64 = 100_000;

#[derive(Debug, clap::Subcommand)]
pub enum SequenceCommand {
    /// Print the next ids, one per line; never handed out again, greater than every id
    /// drawn before.
    Next {
        /// The sequence's name.
        #[arg(value_parser = parse_name)]
        name: String,
        /// How many ids to draw.
        #[arg(long, value_name = "N", default_value_t = 1,
            value_parser = clap::value_parser!(u64).range(1..=MAX_IDS_PER_DRAW))]
        count: u64,
    },
}

pub async fn run(ctx: &Ctx, cmd: SequenceCommand) -> anyhow::Result<()> {
    ctx.with_client(async |client| run_with(ctx, client, cmd).await).await
}

async fn run_with(ctx: &Ctx, client: &Client, cmd: SequenceCommand) -> anyhow::Result<()> {
    let SequenceCommand::Next { name, count } = cmd;
    let ids = Sequence::new(client, &name, count).reserve(count).await?;
    if ctx.json {
        output::print_json(&json!({"name": name, "ids": ids.collect::<Vec<u64>>()}))?;
        return Ok(());
    }
    // One write for all the lines: a draw may be many thousands of ids.
    let lines: String = ids.map(|id| format!("{id}\n")).collect();
    output::print_line(lines.trim_end())?;
    Ok(())
}
