//! The Nix binary cache on an Aspen cluster: an app on the node's seam
//! (`aspen_app::App`), its HTTP gateway for the real `nix`, and its client.
//!
//! - Nix's formats, checked against the real `nix`: store path names and Nix's base-32
//!   ([`nix32`]), narinfo and the fingerprint a signature covers ([`narinfo`]), ed25519 keys
//!   and signatures in Nix's `name:base64` form ([`signing`]), NARs checked and hashed as they
//!   stream ([`nar`]).
//! - Protocol: [`protocol::CACHE_ALPN`] (`aspen/cache/1`).
//! - Rights: `cache:read:SCOPE`, `cache:write:SCOPE`, `cache:admin:SCOPE`, scoped by cache
//!   name prefix ([`rights`]); a public cache is read without any.
//! - Records: caches, paths, staged uploads and pins under `_aspen/cache/` ([`records`]);
//!   NARs as blobs, stored once uncompressed whatever the number of caches holding them;
//!   each cache's signing key sealed with the cluster's secrets key (`aspen_app::secrets`).
//! - The HTTP gateway ([`gateway`]), on a node (`--cache-http-listen`) or beside the cluster
//!   (`aspen cache serve`); compression on the fly ([`compress`]); garbage collection that
//!   keeps closures whole ([`gc`]); push and pull with nix's own tools ([`push`]).
//!
//! See docs/cache.md.

pub mod client;
pub mod compress;
pub mod gateway;
pub mod gc;
mod ingest;
pub mod nar;
pub mod narinfo;
pub mod nix32;
pub mod protocol;
pub mod push;
pub mod records;
pub mod rights;
mod server;
pub mod service;
pub mod signing;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use aspen_app::{App, AppHandler, AppInfo, BoxFuture, NodeContext};
use aspen_core::AspenError;
pub use client::CacheClient;
pub use narinfo::{NarInfo, Sha256, StorePathName};
pub use protocol::CACHE_ALPN;
pub use signing::SigningKey;

/// The cache's settings on a node.
#[derive(Debug, Clone, Default)]
pub struct CacheNodeSettings {
    /// Where this node serves the HTTP gateway, if anywhere.
    pub http_listen: Option<SocketAddr>,
    /// Time between the leader's garbage collection rounds over caches with a retention
    /// time; zero turns them off.
    pub gc_interval: Duration,
}

/// The cache's settings as node flags, each with an environment-variable twin.
#[derive(Debug, Clone, clap::Args)]
pub struct CacheArgs {
    /// Serve the cache's HTTP gateway (what `nix` substitutes from) on this address.
    #[arg(long, env = "ASPEN_CACHE_HTTP_LISTEN", value_name = "ADDR")]
    pub cache_http_listen: Option<SocketAddr>,
    /// Seconds between garbage collection rounds of caches that have a retention time; 0
    /// turns them off.
    #[arg(long, env = "ASPEN_CACHE_GC_INTERVAL_SECS", default_value_t = 3_600)]
    pub cache_gc_interval_secs: u64,
}

impl CacheArgs {
    pub fn settings(&self) -> CacheNodeSettings {
        CacheNodeSettings {
            http_listen: self.cache_http_listen,
            gc_interval: Duration::from_secs(self.cache_gc_interval_secs),
        }
    }
}

/// The cache app, ready to be started on a node.
#[derive(Debug, Clone, Default)]
pub struct CacheApp {
    settings: CacheNodeSettings,
}

impl CacheApp {
    pub fn new(settings: CacheNodeSettings) -> Self {
        CacheApp { settings }
    }
}

impl App for CacheApp {
    fn info(&self) -> AppInfo {
        AppInfo {
            name: rights::APP.into(),
            alpn: CACHE_ALPN.to_vec(),
            rights: vec![rights::READ.into(), rights::WRITE.into(), rights::ADMIN.into()],
        }
    }

    fn kv_rights(&self) -> Vec<aspen_core::capability::Capability> {
        aspen_blob::records::pin_rights(records::PIN_SCOPE)
    }

    fn start(&self, node: NodeContext) -> BoxFuture<'static, Result<Arc<dyn AppHandler>, AspenError>> {
        let settings = self.settings.clone();
        Box::pin(async move {
            let service =
                Arc::new(service::CacheService::new(node.kv.clone(), node.services.clone(), node.secrets.clone()));
            let stop = tokio_util::sync::CancellationToken::new();
            if let Some(addr) = settings.http_listen {
                let listener = gateway::bind(addr).await?;
                let backend = Arc::new(gateway::LocalBackend::new(service.clone(), node.cluster.clone()));
                let stopped = stop.clone().cancelled_owned();
                tracing::info!(%addr, "cache gateway listening");
                tokio::spawn(async move {
                    if let Err(e) = gateway::serve(listener, backend, stopped).await {
                        tracing::error!("the cache gateway stopped: {e}");
                    }
                });
            }
            if !settings.gc_interval.is_zero() {
                tokio::spawn(collect_in_background(
                    service.clone(),
                    node.cluster.clone(),
                    settings.gc_interval,
                    stop.clone(),
                ));
            }
            Ok(Arc::new(server::CacheHandler { service, stop }) as Arc<dyn AppHandler>)
        })
    }
}

/// On the leader, every `interval`: collects the garbage of every cache with a retention
/// time.
async fn collect_in_background(
    service: Arc<service::CacheService>,
    cluster: Arc<dyn aspen_app::Cluster>,
    interval: Duration,
    stop: tokio_util::sync::CancellationToken,
) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
        if !cluster.members().is_leader() {
            continue;
        }
        let caches = match service.cache_names().await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!("cache gc skipped: {e}");
                continue;
            }
        };
        for (name, record) in caches.into_iter().filter(|(_, r)| r.retention_secs > 0) {
            match service.collect_garbage(None, &name, false).await {
                Ok(report) => tracing::info!(cache = %name, kept = report.kept, deleted = report.deleted, "cache gc"),
                Err(e) => tracing::warn!(cache = %name, "cache gc failed: {e}"),
            }
            let _ = record;
        }
    }
}
