//! `aspen bench blob`: moves one large file through the cluster and prints MB/s beside two
//! baselines measured in the same run on the same file: `cp`, and `curl` from a local
//! `python3 -m http.server`.
//!
//! Timed: `add` (client to the first ticket node, acknowledged once the replica target
//! holds it, so it includes the node-to-node copies), `fetch` (client reads from a node that
//! lacks the blob: that node pulls it from a holder, verified, while streaming it on), and
//! `read` (client reads from a holder). Each is written to a file as `cp` and `curl` do.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, bail};
use aspen_blob::{BlobClient, blob_hash_hex};
use aspen_client::{Client, ClusterTicket};
use rand::{RngCore, SeedableRng};
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;
use tokio::time::Instant;

use crate::cmd::cluster::spinner;
use crate::context::Ctx;
use crate::output;

/// Largest file the benchmark generates.
const MAX_BENCH_BLOB_BYTES: u64 = 64 * 1024 * 1024 * 1024;
/// How long the HTTP baseline server may take to start.
const HTTP_SERVER_START: Duration = Duration::from_secs(20);

#[derive(Debug, clap::Args)]
pub struct BenchBlobArgs {
    /// Size of the generated file, in MiB.
    #[arg(long, default_value_t = 1024)]
    pub size_mib: u64,
    /// Use this file instead of generating one.
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// Start a 3-node cluster in a temporary directory for the run, and stop it after.
    #[arg(long)]
    pub start_cluster: bool,
}

/// One timed transfer.
struct Figure {
    what: &'static str,
    seconds: Option<f64>,
    note: String,
}

pub async fn run(ctx: &Ctx, args: &BenchBlobArgs, ticket: ClusterTicket) -> anyhow::Result<()> {
    let scratch =
        tempfile::Builder::new().prefix("aspen-bench-blob-").tempdir().context("cannot create a scratch directory")?;
    let source = match &args.file {
        Some(path) => path.clone(),
        None => {
            if args.size_mib == 0 || args.size_mib * 1024 * 1024 > MAX_BENCH_BLOB_BYTES {
                bail!("--size-mib must be between 1 and {}", MAX_BENCH_BLOB_BYTES / 1024 / 1024);
            }
            let path = scratch.path().join("source.bin");
            let progress = spinner(&format!("writing a {} MiB file", args.size_mib));
            write_random_file(&path, args.size_mib * 1024 * 1024).await?;
            progress.finish_and_clear();
            path
        }
    };
    let size = std::fs::metadata(&source).with_context(|| format!("cannot read {}", source.display()))?.len();
    let mut figures = Vec::new();

    let progress = spinner("cp");
    figures.push(time_command("cp", Command::new("cp").arg(&source).arg(scratch.path().join("cp.out"))).await);
    remove(&scratch.path().join("cp.out"));
    progress.set_message("curl from python3 -m http.server");
    figures.push(time_http(&source, &scratch.path().join("curl.out")).await);
    remove(&scratch.path().join("curl.out"));

    let token = ctx.token_for(&ticket)?;
    let node_client = |i: usize| {
        let addr = ticket.nodes[i].clone();
        let token = token.clone();
        async move {
            Client::for_node_with_token(addr, ctx.client_config(), token).await.context("cannot connect to a node")
        }
    };
    progress.set_message("aspen blob add");
    let first = node_client(0).await?;
    let started = Instant::now();
    let mut file = tokio::fs::File::open(&source).await.with_context(|| format!("cannot open {}", source.display()))?;
    let info = BlobClient::new(&first).add(&mut file).await.context("blob add")?;
    figures.push(Figure {
        what: "aspen blob add",
        seconds: Some(started.elapsed().as_secs_f64()),
        note: format!("on node 1, acknowledged with {} replicas", info.replicas),
    });

    // A node that lacks the blob reads it from a peer: the figure of a fetch.
    let holders = BlobClient::new(&first).status(info.hash).await.context("blob status")?;
    let lacks = |node_id: u64| holders.iter().any(|h| h.node_id == node_id && h.size.is_none());
    let mut lacking = None;
    for i in 1..ticket.nodes.len() {
        let client = node_client(i).await?;
        if lacks(client.node_info().await.context("node info")?.node_id) {
            lacking = Some((i, client));
            break;
        }
        client.close().await;
    }
    match lacking {
        Some((i, client)) => {
            progress.set_message("aspen blob get from a node that lacks it");
            let out = scratch.path().join("fetch.out");
            figures.push(time_get(&client, info.hash, &out, "aspen blob get (peer fetch)", i).await);
            remove(&out);
            client.close().await;
        }
        None => figures.push(Figure {
            what: "aspen blob get (peer fetch)",
            seconds: None,
            note: "every node already holds the blob".into(),
        }),
    }
    progress.set_message("aspen blob get from a holder");
    let out = scratch.path().join("read.out");
    figures.push(time_get(&first, info.hash, &out, "aspen blob get (holder)", 0).await);
    remove(&out);
    first.close().await;
    progress.finish_and_clear();
    report(ctx, size, &blob_hash_hex(&info.hash), &figures)
}

fn remove(path: &Path) {
    let _ = std::fs::remove_file(path);
}

async fn write_random_file(path: &Path, size: u64) -> anyhow::Result<()> {
    let mut file = tokio::fs::File::create(path).await.with_context(|| format!("cannot create {}", path.display()))?;
    let mut rng = rand::rngs::SmallRng::from_rng(&mut rand::rng());
    let mut block = vec![0u8; 1024 * 1024];
    let mut written = 0;
    while written < size {
        let n = block.len().min((size - written) as usize);
        rng.fill_bytes(&mut block[..n]);
        file.write_all(&block[..n]).await?;
        written += n as u64;
    }
    file.sync_all().await?;
    Ok(())
}

async fn time_command(what: &'static str, command: &mut Command) -> Figure {
    let started = Instant::now();
    match command.stdout(Stdio::null()).stderr(Stdio::piped()).output().await {
        Ok(out) if out.status.success() => {
            Figure { what, seconds: Some(started.elapsed().as_secs_f64()), note: String::new() }
        }
        Ok(out) => {
            Figure { what, seconds: None, note: format!("failed: {}", String::from_utf8_lossy(&out.stderr).trim()) }
        }
        Err(e) => Figure { what, seconds: None, note: format!("could not run: {e}") },
    }
}

/// `curl` of `source` from a `python3 -m http.server` serving its directory on loopback.
async fn time_http(source: &Path, out: &Path) -> Figure {
    const WHAT: &str = "curl from python3 http.server";
    let (Some(dir), Some(name)) = (source.parent(), source.file_name()) else {
        return Figure { what: WHAT, seconds: None, note: "the source has no directory".into() };
    };
    let port = match std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()) {
        Ok(addr) => addr.port(),
        Err(e) => return Figure { what: WHAT, seconds: None, note: format!("no free port: {e}") },
    };
    let server = Command::new("python3")
        .args(["-m", "http.server", &port.to_string(), "--bind", "127.0.0.1", "--directory"])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn();
    let mut server = match server {
        Ok(child) => child,
        Err(e) => return Figure { what: WHAT, seconds: None, note: format!("could not run python3: {e}") },
    };
    let deadline = Instant::now() + HTTP_SERVER_START;
    while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        if Instant::now() > deadline {
            let _ = server.kill().await;
            return Figure { what: WHAT, seconds: None, note: "the HTTP server did not start".into() };
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let url = format!("http://127.0.0.1:{port}/{}", name.to_string_lossy());
    let figure = time_command(WHAT, Command::new("curl").args(["-sSf", "-o"]).arg(out).arg(&url)).await;
    let _ = server.kill().await;
    figure
}

async fn time_get(client: &Client, hash: [u8; 32], out: &Path, what: &'static str, node: usize) -> Figure {
    let started = Instant::now();
    let result = async {
        let mut file = tokio::fs::File::create(out).await?;
        BlobClient::new(client).get_to(hash, &mut file).await?;
        file.sync_all().await?;
        anyhow::Ok(())
    }
    .await;
    match result {
        Ok(()) => Figure {
            what,
            seconds: Some(started.elapsed().as_secs_f64()),
            note: format!("from node {}, verified", node + 1),
        },
        Err(e) => Figure { what, seconds: None, note: format!("failed: {e:#}") },
    }
}

fn report(ctx: &Ctx, size: u64, hash: &str, figures: &[Figure]) -> anyhow::Result<()> {
    let mb_per_s = |f: &Figure| f.seconds.map(|s| size as f64 / 1e6 / s);
    if ctx.json {
        let rows: Vec<_> = figures
            .iter()
            .map(|f| json!({"what": f.what, "seconds": f.seconds, "mb_per_s": mb_per_s(f).map(f64::round), "note": f.note}))
            .collect();
        return Ok(output::print_json(&json!({"bytes": size, "hash": hash, "results": rows}))?);
    }
    output::print_line(&format!("{size} bytes, blob {hash}"))?;
    for f in figures {
        let rate = mb_per_s(f).map_or("-".to_string(), |r| format!("{r:.0} MB/s"));
        let secs = f.seconds.map_or("-".to_string(), |s| format!("{s:.2} s"));
        output::print_line(&format!("{:<32} {:>12} {:>10}  {}", f.what, rate, secs, f.note))?;
    }
    Ok(())
}
