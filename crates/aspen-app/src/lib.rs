//! The seam between an Aspen node and the applications it serves.
//!
//! A node is the core (Raft KV, membership, tokens) plus a list of [`App`]s. Each app is a
//! crate that owns:
//! - its versioned ALPN and its request and response enums;
//! - the rights its requests need (`Capability::App { app, right, scope }`, checked with
//!   [`Caller::require`]);
//! - its records, under its own KV prefix, reached through [`aspen_kv::Kv`];
//! - optionally, node-to-node calls on the members-only ALPN ([`MEMBER_ALPN`]), routed to it
//!   by name, and raw protocols of its own (for example iroh-blobs between members).
//!
//! The node authenticates every connection on an app's ALPN before the app sees it (the
//! client presents its token once, in a [`wire::Hello`] on the connection's first stream),
//! then hands the app one bi-stream at a time with the [`Caller`] who opened it.
//!
//! Adding an app is a new crate implementing [`App`], one line where the node is assembled,
//! and a CLI command family. It needs no edit to the core's request enums, to the Raft log's
//! commands or to the node's dispatch. See docs/writing-an-app.md.
//!
//! Not for: the KV interface itself (`aspen-kv`), the client side of an app's protocol
//! (`aspen-client` offers app channels; each app wraps them).

mod auth;
mod caller;
mod cluster;
pub mod rights;
pub mod secrets;
mod services;
pub mod wire;

use std::path::PathBuf;
use std::sync::Arc;

pub use aspen_core::api::AppInfo;
pub use aspen_kv::BoxFuture;
use aspen_kv::SharedKv;
pub use auth::ConnAuth;
pub use caller::Caller;
pub use cluster::{Cluster, Members};
use iroh::endpoint::{RecvStream, SendStream};
use iroh::protocol::DynProtocolHandler;
pub use secrets::SecretBox;
pub use services::Services;
pub use wire::MEMBER_ALPN;

/// An application a node can serve. Cheap to construct; [`App::start`] does the work.
pub trait App: Send + Sync + 'static {
    /// Its name (the `app` of its capabilities), ALPN and rights. The name must be unique
    /// among a node's apps and is what member streams are routed by.
    fn info(&self) -> AppInfo;

    /// KV rights the app needs beyond its own prefix, for example a coordination queue's
    /// keys (`Write` on `_aspen/coord/queue/<name>/`); the KV in its [`NodeContext`] gets
    /// them. Declared, so an app's reach into the KV reads off its code.
    fn kv_rights(&self) -> Vec<aspen_core::capability::Capability> {
        Vec::new()
    }

    /// Starts the app on a node that is up (its Raft running, maybe not yet initialized).
    fn start(&self, node: NodeContext) -> BoxFuture<'static, Result<Arc<dyn AppHandler>, aspen_core::AspenError>>;
}

/// A started app: what the node hands its streams to.
pub trait AppHandler: Send + Sync + 'static {
    /// Serves one bi-stream of an authenticated client connection on the app's ALPN.
    fn serve(self: Arc<Self>, caller: Caller, send: SendStream, recv: RecvStream) -> BoxFuture<'static, ()>;

    /// Serves one stream another member opened to this app on [`MEMBER_ALPN`]. The node has
    /// checked that `from` is a member. By default the app takes no member calls.
    fn serve_member(self: Arc<Self>, from: u64, send: SendStream, recv: RecvStream) -> BoxFuture<'static, ()> {
        let _ = (from, recv);
        Box::pin(async move {
            let refused = aspen_core::AspenError::UnknownRequest { detail: "this app takes no member calls".into() };
            let _ = wire::write_member_reply(&mut { send }, wire::MemberReply::Refused(refused)).await;
        })
    }

    /// Raw protocols the app serves on ALPNs of its own, beside its client protocol.
    fn protocols(&self) -> Vec<(Vec<u8>, Box<dyn DynProtocolHandler>)> {
        Vec::new()
    }

    /// Called once when the node stops: end background work.
    fn shutdown(&self) -> BoxFuture<'static, ()> {
        Box::pin(async {})
    }
}

/// What a node gives an app when it starts.
#[derive(Clone)]
pub struct NodeContext {
    pub node_id: u64,
    /// The node's data directory; an app keeps its files in a directory named after itself.
    pub data_dir: PathBuf,
    /// The node's one iroh endpoint.
    pub endpoint: iroh::Endpoint,
    /// The KV, acting as this app: read, write, delete and watch under the app's own
    /// prefix ([`rights::app_prefix`]), leases, what [`App::kv_rights`] declares, and
    /// nothing else. In-process, no network hop.
    pub kv: SharedKv,
    /// The cluster as this node sees it: membership, leadership, member streams.
    pub cluster: Arc<dyn Cluster>,
    /// In-process handles apps publish for one another (the blob store's, for one).
    pub services: Arc<Services>,
    /// The cluster's secrets key, when this node was given one (`--secrets-key-file`): what
    /// an app seals the secrets it keeps in the KV with ([`secrets`]).
    pub secrets: Option<Arc<SecretBox>>,
}

impl std::fmt::Debug for NodeContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeContext").field("node_id", &self.node_id).field("data_dir", &self.data_dir).finish()
    }
}

impl NodeContext {
    /// `<data dir>/<app name>`, created if missing.
    pub fn app_dir(&self, app: &str) -> std::io::Result<PathBuf> {
        let dir = self.data_dir.join(app);
        std::fs::create_dir_all(&dir)?;
        Ok(dir)
    }
}
