//! `aspen cache`: Nix binary caches on the cluster (the cache app).

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use aspen_cache::CacheClient;
use aspen_cache::protocol::{CacheInfo, CacheSettings};
use aspen_cache::push::NixCommand;
use aspen_cache::records::Compression;
use aspen_client::Client;
use serde_json::json;

use crate::context::Ctx;
use crate::output;

#[derive(Debug, clap::Subcommand)]
pub enum CacheCommand {
    /// Make a named cache with its own signing key (needs cache:admin over its name).
    Create {
        name: String,
        /// Anyone may read it over HTTP without a token.
        #[arg(long)]
        public: bool,
        /// How the gateway serves its NARs: none, xz or zstd (compressed on the fly; each
        /// NAR is stored once, uncompressed).
        #[arg(long, default_value = "none", value_parser = parse_compression)]
        compression: Compression,
        /// Keep a path this many seconds after its last push unless a pin or a kept path's
        /// closure holds it; 0 keeps paths forever.
        #[arg(long, default_value_t = 0)]
        retention_secs: u64,
        /// The `Priority` its nix-cache-info announces (lower is tried first).
        #[arg(long, default_value_t = 40)]
        priority: u32,
        /// The signing key's name in `trusted-public-keys` [default: NAME-1].
        #[arg(long)]
        key_name: Option<String>,
    },
    /// List the caches this token may read.
    List,
    /// Show a cache's settings and public key.
    Show { name: String },
    /// The cache's signing key.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Push the closures of store paths, references first, skipping what the cache has
    /// (needs cache:write). Runs `nix path-info` and `nix-store --dump`.
    Push {
        /// The cache to push to.
        #[arg(long)]
        cache: String,
        /// The nix store to read from (`--store` of nix) [default: nix's own].
        #[arg(long)]
        store: Option<String>,
        #[arg(required = true)]
        paths: Vec<String>,
    },
    /// Fetch store paths (and their closures) from a cache into the local nix store,
    /// verifying the cache's signatures. Runs `nix copy --from` through a gateway on
    /// loopback.
    Pull {
        #[arg(long)]
        cache: String,
        /// The nix store to copy into (`--store` of nix) [default: nix's own].
        #[arg(long)]
        store: Option<String>,
        #[arg(required = true)]
        paths: Vec<String>,
    },
    /// Keep a store path and its closure whatever its age (needs cache:write).
    Pin { cache: String, pin: String, store_path: String },
    /// Remove a pin.
    Unpin { cache: String, pin: String },
    /// List a cache's pins.
    Pins { cache: String },
    /// Collect a cache's garbage now: delete paths older than its retention time that no
    /// pin and no kept path's closure holds (needs cache:admin).
    Gc {
        cache: String,
        /// Only say what would go.
        #[arg(long)]
        dry_run: bool,
    },
    /// Serve the HTTP gateway (what `nix` substitutes from) beside the cluster, reaching it
    /// over iroh. Requests carry their own tokens; anonymous ones read public caches only.
    Serve {
        #[arg(long, default_value = "127.0.0.1:8380")]
        listen: SocketAddr,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum KeyCommand {
    /// Print the public key line for nix's `trusted-public-keys`.
    Show { name: String },
}

fn parse_compression(text: &str) -> Result<Compression, String> {
    Compression::parse(text).map_err(|e| e.to_string())
}

fn print_cache(ctx: &Ctx, info: &CacheInfo) -> anyhow::Result<()> {
    let r = &info.record;
    if ctx.json {
        output::print_json(&json!({
            "name": info.name,
            "public_key": r.public_key,
            "public_reads": r.public_reads,
            "compression": r.compression.nix_name(),
            "retention_secs": r.retention_secs,
            "priority": r.priority,
            "created_ms": r.created_ms,
        }))?;
        return Ok(());
    }
    output::print_line(&format!(
        "{} public_key={} reads={} compression={} retention_secs={} priority={}",
        info.name,
        r.public_key,
        if r.public_reads { "public" } else { "token" },
        r.compression.nix_name(),
        r.retention_secs,
        r.priority
    ))?;
    Ok(())
}

pub async fn run(ctx: &Ctx, cmd: CacheCommand) -> anyhow::Result<()> {
    if let CacheCommand::Serve { listen } = cmd {
        let client = ctx.client().await?;
        let ticket = ctx.ticket()?;
        let backend = Arc::new(aspen_cache::client::RemoteBackend::new(ticket.nodes, ctx.client_config(), &client));
        let listener = aspen_cache::gateway::bind(listen).await?;
        eprintln!("serving the cache gateway on http://{}/CACHE", listener.local_addr()?);
        let stop = async {
            let _ = tokio::signal::ctrl_c().await;
        };
        aspen_cache::gateway::serve(listener, backend, stop).await?;
        return Ok(());
    }
    ctx.with_client(async |client| run_with(ctx, client, cmd).await).await
}

async fn run_with(ctx: &Ctx, client: &Client, cmd: CacheCommand) -> anyhow::Result<()> {
    let cache = CacheClient::new(client);
    match cmd {
        CacheCommand::Create { name, public, compression, retention_secs, priority, key_name } => {
            let settings = CacheSettings { public_reads: public, compression, retention_secs, priority, key_name };
            let info = cache.create_cache(&name, settings).await?;
            print_cache(ctx, &info)?;
        }
        CacheCommand::List => {
            let mut after: Option<String> = None;
            loop {
                let (caches, more) = cache.list_caches(after.as_deref(), 1_000).await?;
                for info in &caches {
                    print_cache(ctx, info)?;
                }
                match caches.last() {
                    Some(last) if more => after = Some(last.name.clone()),
                    _ => break,
                }
            }
        }
        CacheCommand::Show { name } => print_cache(ctx, &cache.show_cache(&name).await?)?,
        CacheCommand::Key(KeyCommand::Show { name }) => {
            let info = cache.show_cache(&name).await?;
            output::print_line(&info.record.public_key)?;
        }
        CacheCommand::Push { cache: name, store, paths } => {
            let nix = NixCommand { store, bin_dir: None };
            let json = ctx.json;
            let report = aspen_cache::push::push(&cache, &nix, &name, &paths, |u| {
                if !json {
                    eprintln!("pushing /nix/store/{} ({} bytes)", u.store_path, u.nar_size);
                }
            })
            .await?;
            if ctx.json {
                output::print_json(&json!({
                    "closure": report.closure, "skipped": report.skipped, "pushed": report.pushed, "bytes": report.bytes,
                }))?;
            } else {
                output::print_line(&format!(
                    "{} paths in the closure: {} pushed ({} bytes), {} already in {name}",
                    report.closure, report.pushed, report.bytes, report.skipped
                ))?;
            }
        }
        CacheCommand::Pull { cache: name, store, paths } => pull(ctx, client, &cache, &name, store, &paths).await?,
        CacheCommand::Pin { cache: name, pin, store_path } => cache.pin(&name, &pin, &store_path).await?,
        CacheCommand::Unpin { cache: name, pin } => cache.unpin(&name, &pin).await?,
        CacheCommand::Pins { cache: name } => {
            for (pin, record) in cache.list_pins(&name).await? {
                if ctx.json {
                    output::print_json(
                        &json!({"pin": pin, "store_path": format!("/nix/store/{}", record.store_path)}),
                    )?;
                } else {
                    output::print_line(&format!("{pin} /nix/store/{}", record.store_path))?;
                }
            }
        }
        CacheCommand::Gc { cache: name, dry_run } => {
            let report = cache.collect_garbage(&name, dry_run).await?;
            if ctx.json {
                output::print_json(&serde_json::to_value(&report)?)?;
            } else {
                output::print_line(&format!(
                    "{name}: {} paths {} ({} NAR bytes), {} kept",
                    report.deleted,
                    if dry_run { "would go" } else { "deleted" },
                    report.deleted_bytes,
                    report.kept
                ))?;
            }
        }
        CacheCommand::Serve { .. } => unreachable!("served before connecting"),
    }
    Ok(())
}

/// `nix copy --from` a gateway on loopback, trusting only the cache's own key.
async fn pull(
    ctx: &Ctx,
    client: &Client,
    cache: &CacheClient,
    name: &str,
    store: Option<String>,
    paths: &[String],
) -> anyhow::Result<()> {
    let info = cache.show_cache(name).await?;
    let ticket = ctx.ticket()?;
    let backend =
        Arc::new(aspen_cache::client::RemoteBackend::new(ticket.nodes, ctx.client_config(), client).anonymous_as_own());
    let listener = aspen_cache::gateway::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(aspen_cache::gateway::serve(listener, backend, async move {
        let _ = stopped.await;
    }));
    let mut cmd = tokio::process::Command::new("nix");
    cmd.arg("--extra-experimental-features").arg("nix-command").arg("copy");
    if let Some(store) = &store {
        cmd.arg("--to").arg(store);
    }
    // The gateway on loopback serves with this client's own token.
    cmd.arg("--from")
        .arg(format!("http://{addr}/{name}"))
        .arg("--option")
        .arg("trusted-public-keys")
        .arg(&info.record.public_key)
        // Not what an earlier `nix copy --to` remembered uploading (unsigned by the cache).
        .args(["--option", "narinfo-cache-positive-ttl", "0", "--option", "narinfo-cache-negative-ttl", "0"])
        .args(paths)
        .kill_on_drop(true);
    let status = cmd.status().await.context("cannot run nix copy (is nix installed?)");
    let _ = stop.send(());
    let _ = server.await;
    if !status?.success() {
        bail!("nix copy --from the cache failed (its messages are above)");
    }
    if !ctx.json {
        output::print_line(&format!("pulled {} paths and their closures from {name}", paths.len()))?;
    }
    Ok(())
}
