//! Git hosting on an Aspen cluster: the forge, an app on the node's seam
//! (`aspen_app::App`), and its client.
//!
//! - Protocol: [`protocol::FORGE_ALPN`] (`aspen/forge/1`), requests and answers in [`protocol`].
//! - Rights: `forge:read:SCOPE`, `forge:push:SCOPE`, `forge:admin:SCOPE`, scoped by
//!   repository name prefix ([`rights`]).
//! - Records: repositories, refs and push events under `_aspen/forge/` ([`records`]), through
//!   the node's typed KV.
//!
//! This is the forge's first part: repositories and their records. Git transport (the
//! `git-remote-aspen` helper, packs stored as blobs), ref updates with their events, and
//! collaborative objects come next; see docs/forge.md.

pub mod client;
pub mod names;
pub mod objects;
pub mod pktline;
pub mod protocol;
mod receive;
pub mod records;
pub mod remote;
pub mod rights;
mod server;
pub mod store;
mod upload;

use std::sync::Arc;

use aspen_app::{App, AppHandler, AppInfo, BoxFuture, NodeContext};
use aspen_core::AspenError;
pub use client::ForgeClient;
pub use protocol::{FORGE_ALPN, GitService, RefEntry, RepoInfo, RepoSummary};
pub use upload::GIT_ENV;

/// The forge app, ready to be started on a node.
#[derive(Debug, Clone, Default)]
pub struct ForgeApp;

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
        Box::pin(async move { Ok(Arc::new(server::ForgeHandler::new(node)?) as Arc<dyn AppHandler>) })
    }
}
