//! Git hosting on an Aspen cluster: the forge, an app on the node's seam
//! (`aspen_app::App`), and its client.
//!
//! - Protocol: [`protocol::FORGE_ALPN`] (`aspen/forge/1`), requests and answers in [`protocol`].
//! - Rights: `forge:read:SCOPE`, `forge:push:SCOPE`, `forge:admin:SCOPE`, scoped by
//!   repository name prefix ([`rights`]).
//! - Records: repositories, refs and push events under `_aspen/forge/` ([`records`]), through
//!   the node's typed KV.
//!
//! - Git: `git-remote-aspen` ([`remote`]) bridges `git` to a stream on the forge, which
//!   answers fetches with git's own upload-pack and pushes with its own receive-pack
//!   ([`receive`]); packs are stored as blobs ([`store`], [`objects`]), collected by [`gc`].
//! - Collaborative objects: issues and patches as signed change DAGs ([`cob`]).
//!
//! See docs/forge.md.

pub mod client;
pub mod cob;
pub mod cob_index;
mod collab;
mod gc;
pub mod names;
pub mod objects;
pub mod pktline;
pub mod protocol;
mod receive;
pub mod records;
pub mod remote;
pub mod rights;
mod server;
pub mod status;
pub mod store;
mod upload;

use std::sync::Arc;
use std::time::Duration;

use aspen_app::{App, AppHandler, AppInfo, BoxFuture, NodeContext};
use aspen_core::AspenError;
pub use client::ForgeClient;
pub use protocol::{EventEntry, FORGE_ALPN, GcReport, GitService, RefEntry, RepoInfo, RepoSummary};
pub use upload::GIT_ENV;

/// The forge's settings on a node.
#[derive(Debug, Clone)]
pub struct ForgeSettings {
    /// How old a pack must be before garbage collection may repack it.
    pub gc_grace: Duration,
    /// Time between background collection rounds (the leader collects, every node prunes
    /// its pack copies); zero turns them off.
    pub gc_interval: Duration,
}

impl Default for ForgeSettings {
    fn default() -> Self {
        ForgeSettings { gc_grace: Duration::from_secs(86_400), gc_interval: Duration::from_secs(3_600) }
    }
}

/// The forge's settings as node flags, each with an environment-variable twin.
#[derive(Debug, Clone, clap::Args)]
pub struct ForgeArgs {
    /// Seconds a pushed pack is kept as it is before garbage collection may repack it and
    /// drop what no ref (of the repository or of its forks) reaches.
    #[arg(long, env = "ASPEN_FORGE_GC_GRACE_SECS", default_value_t = 86_400)]
    pub forge_gc_grace_secs: u64,
    /// Seconds between the forge's background collection rounds; 0 turns them off.
    #[arg(long, env = "ASPEN_FORGE_GC_INTERVAL_SECS", default_value_t = 3_600)]
    pub forge_gc_interval_secs: u64,
}

impl ForgeArgs {
    pub fn settings(&self) -> ForgeSettings {
        ForgeSettings {
            gc_grace: Duration::from_secs(self.forge_gc_grace_secs),
            gc_interval: Duration::from_secs(self.forge_gc_interval_secs),
        }
    }
}

/// The forge app, ready to be started on a node.
#[derive(Debug, Clone, Default)]
pub struct ForgeApp {
    settings: ForgeSettings,
}

impl ForgeApp {
    pub fn new(settings: ForgeSettings) -> Self {
        ForgeApp { settings }
    }
}

impl App for ForgeApp {
    fn info(&self) -> AppInfo {
        AppInfo {
            name: rights::APP.into(),
            alpn: FORGE_ALPN.to_vec(),
            rights: vec![rights::READ.into(), rights::PUSH.into(), rights::ADMIN.into()],
        }
    }

    fn kv_rights(&self) -> Vec<aspen_core::capability::Capability> {
        aspen_blob::records::pin_rights(records::PIN_SCOPE)
    }

    fn start(&self, node: NodeContext) -> BoxFuture<'static, Result<Arc<dyn AppHandler>, AspenError>> {
        let settings = self.settings.clone();
        Box::pin(async move {
            let handler = Arc::new(server::ForgeHandler::new(node, settings)?);
            handler.start_background();
            Ok(handler as Arc<dyn AppHandler>)
        })
    }
}
