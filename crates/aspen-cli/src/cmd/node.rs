//! `aspen node`: run one node in this process (the same as the `aspen-node` binary).

#[derive(Debug, clap::Args)]
pub struct NodeCommand {
    #[command(flatten)]
    pub args: aspen_node::NodeArgs,
}

/// Runs the node until SIGTERM or SIGINT.
pub async fn run(cmd: NodeCommand) -> anyhow::Result<()> {
    aspen_node::run(cmd.args).await
}
