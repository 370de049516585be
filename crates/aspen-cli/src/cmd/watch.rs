//! `aspen watch`: print changes under a prefix as they happen, resuming across node failures.

use aspen_client::Client;

use crate::context::Ctx;
use crate::output;

#[derive(Debug, clap::Args)]
pub struct WatchArgs {
    /// Watch keys starting with this prefix (empty: every key).
    #[arg(default_value = "")]
    pub prefix: String,
    /// Start from this revision instead of from now, replaying what happened since.
    #[arg(long, value_name = "REVISION", default_value_t = 0)]
    pub from_revision: u64,
}

/// Streams events until Ctrl-C, or until the watch ends with an error.
pub async fn run(ctx: &Ctx, client: &Client, args: WatchArgs) -> anyhow::Result<()> {
    let mut stream = client.watch(args.prefix.as_bytes(), args.from_revision);
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    loop {
        let next = tokio::select! {
            _ = &mut interrupted => return Ok(()),
            next = stream.next() => next,
        };
        match next {
            None => return Ok(()),
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(event)) => {
                if ctx.json {
                    output::print_json(&output::event_json(&event))?;
                } else {
                    output::print_line(&output::event_line(&event))?;
                }
            }
        }
    }
}
