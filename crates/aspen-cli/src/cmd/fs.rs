//! `aspen fs`: AspenFS, a KV prefix mounted as a filesystem with FUSE.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use std::sync::Arc;

use aspen_blob::BlobClient;
use aspen_fs::{BlobChunks, ChunkStore, MountOptions, mount};
use aspen_kv::SharedKv;
use tokio::signal::unix::{SignalKind, signal};

use crate::context::Ctx;

#[derive(Debug, clap::Subcommand)]
pub enum FsCommand {
    /// Mount a KV prefix at MOUNTPOINT and serve it until SIGTERM, SIGINT or `umount`.
    /// Files are keys under the prefix; directories are the prefixes between them. Files
    /// larger than one KV value keep 4 MiB chunks as blobs, pinned as `aspenfs/PREFIX<hash>`.
    Mount {
        mountpoint: PathBuf,
        /// The KV prefix shown as the filesystem's root; must end in '/'.
        #[arg(long, default_value = "fs/default/")]
        prefix: String,
        /// How long the kernel keeps names and attributes while the mount's watch on the
        /// prefix runs (it drops what changes elsewhere as it sees it).
        #[arg(long, default_value_t = 60_000, value_name = "MS")]
        ttl_ms: u64,
        /// The same while the watch is down (after a failure, until it is back).
        #[arg(long, default_value_t = 1000, value_name = "MS")]
        unwatched_ttl_ms: u64,
        /// A system call fails with EIO when the cluster has not answered within this.
        #[arg(long, default_value_t = 30, value_name = "SECONDS")]
        op_timeout: u64,
        /// Threads answering the kernel.
        #[arg(long, default_value_t = 2)]
        threads: usize,
        /// Let other users use the mount (non-root needs `user_allow_other` in /etc/fuse.conf).
        #[arg(long)]
        allow_other: bool,
    },
}

pub async fn run(ctx: &Ctx, cmd: FsCommand) -> anyhow::Result<()> {
    match cmd {
        FsCommand::Mount { mountpoint, prefix, ttl_ms, unwatched_ttl_ms, op_timeout, threads, allow_other } => {
            let client = ctx.client().await?;
            let chunks: Arc<dyn ChunkStore> =
                Arc::new(BlobChunks::new(BlobClient::new(&client), BlobChunks::scope_for(&prefix)));
            let kv: SharedKv = Arc::new(client);
            let options = MountOptions {
                prefix: prefix.clone().into_bytes(),
                ttl: Duration::from_millis(unwatched_ttl_ms),
                watched_ttl: Duration::from_millis(ttl_ms),
                op_timeout: Duration::from_secs(op_timeout),
                threads,
                allow_other,
            };
            let rt = tokio::runtime::Handle::current();
            let point = mountpoint.clone();
            let mounted = tokio::task::spawn_blocking(move || mount(kv, Some(chunks), &rt, &point, &options))
                .await
                .context("the mount task")?
                .with_context(|| format!("mounting {prefix} at {}", mountpoint.display()))?;
            eprintln!("mounted {prefix} at {}", mountpoint.display());
            let mut term = signal(SignalKind::terminate())?;
            let mut int = signal(SignalKind::interrupt())?;
            loop {
                tokio::select! {
                    _ = term.recv() => break,
                    _ = int.recv() => break,
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {
                        if mounted.is_ended() {
                            break;
                        }
                    }
                }
            }
            tokio::task::spawn_blocking(move || mounted.unmount())
                .await
                .context("the unmount task")?
                .with_context(|| format!("unmounting {}", mountpoint.display()))?;
            eprintln!("unmounted {}", mountpoint.display());
            Ok(())
        }
    }
}
