//! Content-addressed blobs (BLAKE3) on every Aspen node: an app on the node's seam
//! (`aspen_app::App`), and its client.
//!
//! - Protocol: [`protocol::BLOB_ALPN`] (`aspen/blob/1`), requests and answers in
//!   [`protocol`]; member-to-member calls (replicate, has, list) over the node's members-only
//!   ALPN; transfers between members over iroh-blobs, verified by bao as they stream.
//! - Rights: `blob:read:SCOPE` and `blob:write:SCOPE`, scopes being pin-name prefixes
//!   ([`rights`]); the first version's `BlobRead` / `BlobWrite` mean unscoped rights.
//! - Records: pins, their index and fresh records under `_aspen/blob/` ([`records`]),
//!   through the node's typed KV.
//! - An add is answered once the replica target holds the blob, durably; the leader's repair
//!   rounds restore the target after a node is lost; garbage collection keeps what pins and
//!   fresh records name ([`store`], [`replication`]).
//!
//! - Other apps on the node reach the store in-process through [`LocalBlobs`], published
//!   in the node's services.
//!
//! Not for: small values (the KV), or anything that needs the bytes in the Raft log.

pub mod client;
mod file_chunks;
pub mod local;
pub mod protocol;
pub mod records;
pub mod replication;
pub mod rights;
mod server;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use aspen_app::{App, AppHandler, AppInfo, BoxFuture, NodeContext};
use aspen_core::AspenError;
pub use client::{BlobClient, BlobReader, blob_hash_hex, parse_blob_hash};
pub use local::{LocalBlobs, RangeStream};
pub use protocol::{APP, Added, BLOB_ALPN, BlobEntry, BlobHolder, PinEntry};
pub use records::BlobHash;
pub use store::BlobSettings;

/// The blob app's settings on a node: each a flag with an environment-variable twin.
#[derive(Debug, Clone, clap::Args)]
pub struct BlobArgs {
    /// Nodes that must hold a blob (this one included) before an add is acknowledged;
    /// 0 means a majority of the voters. Capped at the number of members.
    #[arg(long, env = "ASPEN_BLOB_REPLICAS", default_value_t = 0)]
    pub blob_replicas: usize,
    /// Seconds a freshly added blob is kept without a pin before garbage collection may
    /// remove it (decided by the leader's clock, through a lease).
    #[arg(long, env = "ASPEN_BLOB_GC_GRACE_SECS", default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..=31_536_000))]
    pub blob_gc_grace_secs: u64,
    /// Seconds between garbage-collection rounds of this node's blob store.
    #[arg(long, env = "ASPEN_BLOB_GC_INTERVAL_SECS", default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..))]
    pub blob_gc_interval_secs: u64,
    /// Seconds between the leader's rounds that copy under-replicated blobs to more nodes.
    #[arg(long, env = "ASPEN_BLOB_REPAIR_INTERVAL_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub blob_repair_interval_secs: u64,
}

impl BlobArgs {
    pub fn settings(&self) -> BlobSettings {
        BlobSettings {
            replicas: self.blob_replicas,
            gc_grace: Duration::from_secs(self.blob_gc_grace_secs),
            gc_interval: Duration::from_secs(self.blob_gc_interval_secs),
            repair_interval: Duration::from_secs(self.blob_repair_interval_secs),
        }
    }
}

/// The blob app, ready to be started on a node.
#[derive(Debug, Clone)]
pub struct BlobApp {
    settings: BlobSettings,
}

impl BlobApp {
    pub fn new(settings: BlobSettings) -> Self {
        BlobApp { settings }
    }
}

impl App for BlobApp {
    fn info(&self) -> AppInfo {
        AppInfo {
            name: protocol::APP.into(),
            alpn: BLOB_ALPN.to_vec(),
            rights: vec![protocol::READ.into(), protocol::WRITE.into()],
        }
    }

    fn start(&self, node: NodeContext) -> BoxFuture<'static, Result<Arc<dyn AppHandler>, AspenError>> {
        let settings = self.settings;
        Box::pin(async move {
            let services = node.services.clone();
            let blobs = store::BlobNode::open(node, settings).await?;
            services.publish(LocalBlobs::SERVICE, Arc::new(LocalBlobs::new(blobs.clone())));
            Ok(Arc::new(server::BlobHandler::new(blobs)) as Arc<dyn AppHandler>)
        })
    }
}
