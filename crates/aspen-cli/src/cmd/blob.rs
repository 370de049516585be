//! `aspen blob`: add, read, check and list content-addressed blobs (BLAKE3).

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use aspen_client::{Client, blob_hash_hex, parse_blob_hash};
use serde_json::{Value, json};
use tokio::io::AsyncSeekExt;

use crate::context::Ctx;
use crate::output;

#[derive(Debug, clap::Subcommand)]
pub enum BlobCommand {
    /// Add a file (or stdin with `-`) as a blob; prints its BLAKE3 hash.
    Add { path: PathBuf },
    /// Write a blob to stdout, or to FILE with -o (only once it is verified whole).
    Get {
        #[arg(value_parser = parse_blob_hash)]
        hash: [u8; 32],
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Whether the node holds the blob (exit status 1 when it does not).
    Has {
        #[arg(value_parser = parse_blob_hash)]
        hash: [u8; 32],
    },
    /// List the blobs the node holds.
    List {
        #[arg(long, default_value_t = 1000)]
        limit: u32,
    },
    /// Which members hold the blob (asks each of them now).
    Status {
        #[arg(value_parser = parse_blob_hash)]
        hash: [u8; 32],
    },
    /// Pin a blob under NAME: kept from garbage collection and kept replicated.
    Pin {
        name: String,
        #[arg(value_parser = parse_blob_hash)]
        hash: [u8; 32],
    },
    /// Remove pin NAME (exit status 1 when there was none).
    Unpin { name: String },
    /// List pins in name order.
    Pins {
        #[arg(long, default_value_t = 1000)]
        limit: u32,
    },
}

pub async fn run(ctx: &Ctx, client: &Client, cmd: BlobCommand) -> anyhow::Result<()> {
    match cmd {
        BlobCommand::Add { path } => {
            let info = if path.as_os_str() == "-" {
                client.blob_add(&mut tokio::io::stdin()).await?
            } else {
                let mut file =
                    tokio::fs::File::open(&path).await.with_context(|| format!("cannot open {}", path.display()))?;
                client.blob_add(&mut file).await?
            };
            if ctx.json {
                output::print_json(
                    &json!({"hash": blob_hash_hex(&info.hash), "size": info.size, "replicas": info.replicas}),
                )?;
            } else {
                output::print_line(&blob_hash_hex(&info.hash))?;
            }
        }
        BlobCommand::Get { hash, output: None } => {
            client.blob_get_to(hash, &mut tokio::io::stdout()).await?;
        }
        BlobCommand::Get { hash, output: Some(path) } => get_to_file(client, hash, &path).await?,
        BlobCommand::Has { hash } => {
            let size = client.blob_has(hash).await?;
            if ctx.json {
                output::print_json(&json!({"hash": blob_hash_hex(&hash), "present": size.is_some(), "size": size}))?;
            } else if let Some(size) = size {
                output::print_line(&format!("present, {size} bytes"))?;
            }
            if size.is_none() {
                bail!("blob {} is not on this node", blob_hash_hex(&hash));
            }
        }
        BlobCommand::List { limit } => {
            let (blobs, more) = client.blob_list(None, limit).await?;
            if ctx.json {
                let list: Vec<Value> =
                    blobs.iter().map(|b| json!({"hash": blob_hash_hex(&b.hash), "size": b.size})).collect();
                output::print_json(&json!({"blobs": list, "more": more}))?;
            } else {
                for b in &blobs {
                    output::print_line(&format!("{} {}", blob_hash_hex(&b.hash), b.size))?;
                }
                if more {
                    eprintln!("(more blobs than --limit {limit})");
                }
            }
        }
        BlobCommand::Status { hash } => {
            let holders = client.blob_status(hash).await?;
            if ctx.json {
                let list: Vec<Value> = holders
                    .iter()
                    .map(|h| json!({"node_id": h.node_id, "present": h.size.is_some(), "size": h.size, "error": h.error}))
                    .collect();
                output::print_json(&json!({"hash": blob_hash_hex(&hash), "nodes": list}))?;
            } else {
                for h in &holders {
                    let what = match (&h.size, &h.error) {
                        (Some(size), _) => format!("holds it ({size} bytes)"),
                        (None, Some(e)) => format!("unknown: {e}"),
                        (None, None) => "does not hold it".to_string(),
                    };
                    output::print_line(&format!("node {}: {what}", h.node_id))?;
                }
            }
        }
        BlobCommand::Pin { name, hash } => {
            client.blob_pin(&name, hash).await?;
            if ctx.json {
                output::print_json(&json!({"name": name, "hash": blob_hash_hex(&hash)}))?;
            }
        }
        BlobCommand::Unpin { name } => {
            let existed = client.blob_unpin(&name).await?;
            if ctx.json {
                output::print_json(&json!({"name": name, "existed": existed}))?;
            }
            if !existed {
                bail!("there is no pin named {name:?}");
            }
        }
        BlobCommand::Pins { limit } => {
            let (pins, more) = client.blob_pins(None, limit).await?;
            if ctx.json {
                let list: Vec<Value> =
                    pins.iter().map(|p| json!({"name": p.name, "hash": blob_hash_hex(&p.hash)})).collect();
                output::print_json(&json!({"pins": list, "more": more}))?;
            } else {
                for p in &pins {
                    output::print_line(&format!("{} {}", p.name, blob_hash_hex(&p.hash)))?;
                }
                if more {
                    eprintln!("(more pins than --limit {limit})");
                }
            }
        }
    }
    Ok(())
}

/// Empties a scratch file so a retried transfer starts over.
fn empty_file(file: &mut tokio::fs::File) -> aspen_client::Restart<'_> {
    Box::pin(async move {
        file.set_len(0).await?;
        file.seek(std::io::SeekFrom::Start(0)).await?;
        Ok(())
    })
}

/// Writes the blob beside `path` first and renames it into place only once verified, so a
/// corrupt or broken transfer never leaves a file that looks whole.
async fn get_to_file(client: &Client, hash: [u8; 32], path: &std::path::Path) -> anyhow::Result<()> {
    let name = path.file_name().with_context(|| format!("{} names no file", path.display()))?;
    let scratch = path.with_file_name(format!(".{}.aspen-partial-{}", name.to_string_lossy(), std::process::id()));
    let mut file =
        tokio::fs::File::create(&scratch).await.with_context(|| format!("cannot create {}", scratch.display()))?;
    match client.blob_get_retrying(hash, &mut file, empty_file).await {
        Ok(_) => {
            file.sync_all().await.with_context(|| format!("cannot sync {}", scratch.display()))?;
            drop(file);
            tokio::fs::rename(&scratch, path)
                .await
                .with_context(|| format!("cannot move the blob into {}", path.display()))
        }
        Err(e) => {
            drop(file);
            let _ = tokio::fs::remove_file(&scratch).await;
            Err(e.into())
        }
    }
}
