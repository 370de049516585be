//! `aspen blob`: add, read, check and list content-addressed blobs (BLAKE3).

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use aspen_blob::{BlobClient, blob_hash_hex, parse_blob_hash};
use aspen_client::Client;
use serde_json::{Value, json};
use tokio::io::AsyncSeekExt;

use crate::context::Ctx;
use crate::output;

#[derive(Debug, clap::Subcommand)]
pub enum BlobCommand {
    /// Add files (or stdin with `-`) as blobs; prints each BLAKE3 hash. Several files go
    /// in one batch (each at most 64 MiB); one file streams, whatever its size.
    Add {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Refuse the blob (and keep nothing) unless its bytes hash to this.
        #[arg(long, value_parser = parse_blob_hash, value_name = "HASH")]
        expect: Option<[u8; 32]>,
    },
    /// Write a blob to stdout, or to FILE with -o (only once it is verified whole).
    Get {
        #[arg(value_parser = parse_blob_hash)]
        hash: [u8; 32],
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
        /// Only LEN bytes from OFFSET, to stdout (checked by the serving node, not here).
        #[arg(long, value_name = "OFFSET:LEN", value_parser = parse_range, conflicts_with = "output")]
        range: Option<(u64, u64)>,
    },
    /// Whether some member of the cluster holds the blob (exit status 1 when none does).
    Has {
        #[arg(value_parser = parse_blob_hash)]
        hash: [u8; 32],
    },
    /// List the blobs the cluster's members hold.
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
        /// Only pins whose names start with this.
        #[arg(long, default_value = "")]
        prefix: String,
        #[arg(long, default_value_t = 1000)]
        limit: u32,
    },
}

/// Parses `OFFSET:LEN`.
fn parse_range(text: &str) -> Result<(u64, u64), String> {
    let bad = || format!("range {text:?} is not OFFSET:LEN (e.g. 0:4096)");
    let (offset, len) = text.split_once(':').ok_or_else(bad)?;
    Ok((offset.parse().map_err(|_| bad())?, len.parse().map_err(|_| bad())?))
}

fn print_added(ctx: &Ctx, added: &aspen_blob::Added) -> std::io::Result<()> {
    if ctx.json {
        output::print_json(&json!({"hash": blob_hash_hex(&added.hash), "size": added.size, "replicas": added.replicas}))
    } else {
        output::print_line(&blob_hash_hex(&added.hash))
    }
}

pub async fn run(ctx: &Ctx, client: &Client, cmd: BlobCommand) -> anyhow::Result<()> {
    let blobs = BlobClient::new(client);
    match cmd {
        BlobCommand::Add { paths, expect } if paths.len() == 1 => {
            let path = &paths[0];
            let added = if path.as_os_str() == "-" {
                add_one(&blobs, &mut tokio::io::stdin(), expect).await?
            } else {
                let mut file =
                    tokio::fs::File::open(path).await.with_context(|| format!("cannot open {}", path.display()))?;
                add_one(&blobs, &mut file, expect).await?
            };
            print_added(ctx, &added)?;
        }
        BlobCommand::Add { paths, expect } => {
            if expect.is_some() {
                bail!("--expect names one blob: add one file with it");
            }
            let mut contents = Vec::with_capacity(paths.len());
            for path in &paths {
                contents.push(std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?);
            }
            let slices: Vec<&[u8]> = contents.iter().map(Vec::as_slice).collect();
            for added in blobs.add_batch(&slices).await? {
                print_added(ctx, &added)?;
            }
        }
        BlobCommand::Get { hash, output: None, range: None } => {
            blobs.get_to(hash, &mut tokio::io::stdout()).await?;
        }
        BlobCommand::Get { hash, output: None, range: Some((offset, len)) } => {
            let mut reader = blobs.read_range(hash, offset, len).await?;
            tokio::io::copy(&mut reader, &mut tokio::io::stdout()).await.context("reading the range")?;
        }
        BlobCommand::Get { hash, output: Some(path), .. } => get_to_file(&blobs, hash, &path).await?,
        BlobCommand::Has { hash } => {
            let size = blobs.has(hash).await?;
            if ctx.json {
                output::print_json(&json!({"hash": blob_hash_hex(&hash), "present": size.is_some(), "size": size}))?;
            } else if let Some(size) = size {
                output::print_line(&format!("present, {size} bytes"))?;
            }
            if size.is_none() {
                bail!("no member holds blob {}", blob_hash_hex(&hash));
            }
        }
        BlobCommand::List { limit } => {
            let (list, more) = blobs.list(None, limit).await?;
            if ctx.json {
                let entries: Vec<Value> =
                    list.iter().map(|b| json!({"hash": blob_hash_hex(&b.hash), "size": b.size})).collect();
                output::print_json(&json!({"blobs": entries, "more": more}))?;
            } else {
                for b in &list {
                    output::print_line(&format!("{} {}", blob_hash_hex(&b.hash), b.size))?;
                }
                if more {
                    eprintln!("(more blobs than --limit {limit})");
                }
            }
        }
        BlobCommand::Status { hash } => {
            let holders = blobs.status(hash).await?;
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
            blobs.pin(&name, hash).await?;
            if ctx.json {
                output::print_json(&json!({"name": name, "hash": blob_hash_hex(&hash)}))?;
            }
        }
        BlobCommand::Unpin { name } => {
            let existed = blobs.unpin(&name).await?;
            if ctx.json {
                output::print_json(&json!({"name": name, "existed": existed}))?;
            }
            if !existed {
                bail!("there is no pin named {name:?}");
            }
        }
        BlobCommand::Pins { prefix, limit } => {
            let (pins, more) = blobs.pins(&prefix, None, limit).await?;
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
fn empty_file(file: &mut tokio::fs::File) -> aspen_blob::client::Restart<'_> {
    Box::pin(async move {
        file.set_len(0).await?;
        file.seek(std::io::SeekFrom::Start(0)).await?;
        Ok(())
    })
}

/// Writes the blob beside `path` first and renames it into place only once verified, so a
/// corrupt or broken transfer never leaves a file that looks whole.
async fn get_to_file(blobs: &BlobClient, hash: [u8; 32], path: &std::path::Path) -> anyhow::Result<()> {
    let name = path.file_name().with_context(|| format!("{} names no file", path.display()))?;
    let scratch = path.with_file_name(format!(".{}.aspen-partial-{}", name.to_string_lossy(), std::process::id()));
    let mut file =
        tokio::fs::File::create(&scratch).await.with_context(|| format!("cannot create {}", scratch.display()))?;
    match blobs.get_retrying(hash, &mut file, empty_file).await {
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

async fn add_one(
    blobs: &BlobClient,
    data: &mut (impl tokio::io::AsyncRead + Unpin),
    expect: Option<[u8; 32]>,
) -> anyhow::Result<aspen_blob::Added> {
    Ok(match expect {
        Some(hash) => blobs.add_expecting(data, hash).await?,
        None => blobs.add(data).await?,
    })
}
