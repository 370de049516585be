//! `aspen-node`: runs one Aspen node (the same as `aspen node`), for service managers.

/// mimalloc: the node allocates per request and per Raft message; glibc malloc cost
/// 15% of a node's CPU under load.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;

#[derive(Parser)]
#[command(name = "aspen-node", version, about = "Run one Aspen node")]
struct Cli {
    #[command(flatten)]
    node: aspen_cli::cmd::node::NodeCommand,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let cmd = Cli::parse().node;
    let runtime = cmd.args.runtime().map_err(|e| anyhow::anyhow!("cannot start the async runtime: {e}"))?;
    runtime.block_on(aspen_cli::cmd::node::run(cmd))
}
