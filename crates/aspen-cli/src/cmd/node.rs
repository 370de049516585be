//! `aspen node` (and the `aspen-node` binary): run one node in this process, with every
//! app this distribution ships. This is the one place a node is assembled: an app is one
//! line in [`apps`] and its settings one field of [`AppArgs`].

use std::sync::Arc;

use aspen_app::App;

/// The settings of every app a node serves, each a flag with an environment-variable twin.
#[derive(Debug, Clone, clap::Args)]
pub struct AppArgs {
    #[command(flatten)]
    pub blob: aspen_blob::BlobArgs,
    #[command(flatten)]
    pub forge: aspen_forge::ForgeArgs,
    #[command(flatten)]
    pub cache: aspen_cache::CacheArgs,
    #[command(flatten)]
    pub ci: aspen_ci::CiArgs,
}

/// The apps a node serves.
pub fn apps(args: &AppArgs) -> Vec<Arc<dyn App>> {
    vec![
        Arc::new(aspen_blob::BlobApp::new(args.blob.settings())),
        Arc::new(aspen_forge::ForgeApp::new(args.forge.settings())),
        Arc::new(aspen_cache::CacheApp::new(args.cache.settings())),
        Arc::new(aspen_ci::CiApp::new(args.ci.settings())),
    ]
}

#[derive(Debug, clap::Args)]
pub struct NodeCommand {
    #[command(flatten)]
    pub args: aspen_node::NodeArgs,
    #[command(flatten)]
    pub apps: AppArgs,
}

/// Runs the node until SIGTERM or SIGINT.
pub async fn run(cmd: NodeCommand) -> anyhow::Result<()> {
    aspen_node::run(cmd.args, apps(&cmd.apps)).await
}
