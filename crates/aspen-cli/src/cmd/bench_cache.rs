//! `aspen bench cache`: the cache's HTTP gateway beside nginx serving a `file://` binary
//! cache of the same store paths, in the same run (the anchor of the cache issue).
//!
//! The paths are built here with `nix-build` from derivations that need no nixpkgs: a
//! closure of three (app → lib → data, about 0.4 MB) and one big path of `--big-mib` MiB of
//! random bytes. They are pushed to a public cache `bench` over iroh (`aspen cache push`),
//! and copied with `nix copy --to file://…?compression=none` for nginx, signed there.
//!
//! Measured on each server: narinfo GETs of one path with `wrk` (keep-alive, `--conns`
//! connections, one thread), requests per second with p50 and p99; the big NAR downloaded
//! with `curl` five times, median MB/s (10^6 bytes); and the real client, `nix copy --from`
//! the closure and the big path into an empty store, in seconds. Each figure is printed with
//! Aspen's ratio to nginx.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, bail};
use aspen_cache::CacheClient;
use aspen_cache::protocol::CacheSettings;
use aspen_cache::push::NixCommand;
use aspen_cache::records::Compression;
use aspen_client::{Client, ClusterTicket};
use serde_json::json;
use tokio::process::Command;
use tokio::time::Instant;

use crate::context::Ctx;
use crate::output;

/// The bench's own store paths (no nixpkgs: the builder is the host's /bin/sh).
const PATHS_NIX: &str = r#"{ nonce, bigMiB }:
let
  mk = name: script: builtins.derivation {
    inherit name nonce;
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" script ];
    PATH = "/usr/bin:/bin";
  };
  data = mk "bench-data" ''
    mkdir -p $out/share
    for i in 1 2 3 4 5 6 7 8; do seq 1 2000 | sed "s/^/row $i /" > $out/share/table-$i.txt; done
  '';
  lib = mk "bench-lib" ''
    mkdir -p $out/lib
    echo "data=${data}" > $out/lib/config
    head -c 262144 /dev/urandom > $out/lib/libbench.so
  '';
  app = mk "bench-app" ''
    mkdir -p $out/bin
    printf '#!/bin/sh\ncat ${lib}/lib/config\n' > $out/bin/bench
    chmod +x $out/bin/bench
  '';
  big = mk "bench-big" ''
    head -c ${toString (bigMiB * 1048576)} /dev/urandom > $out
  '';
in { inherit data lib app big; }
"#;

/// nix settings for root using the store directly, with no substituter and no narinfo
/// remembered between commands.
const NIX_CONFIG: &str = "experimental-features = nix-command
sandbox = false
build-users-group =
substituters =
warn-dirty = false
narinfo-cache-positive-ttl = 0
narinfo-cache-negative-ttl = 0";

#[derive(Debug, clap::Args)]
pub struct BenchCacheArgs {
    /// Seconds of narinfo load on each server.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// wrk connections.
    #[arg(long, default_value_t = 16)]
    pub conns: u32,
    /// Size of the big path, MiB.
    #[arg(long, default_value_t = 50)]
    pub big_mib: u32,
    /// The gateway to measure [default: node 1's, at its address in the ticket].
    #[arg(long)]
    pub gateway: Option<SocketAddr>,
    /// Start a 3-node cluster in a temporary directory for the run, and stop it after.
    #[arg(long)]
    pub start_cluster: bool,
}

/// What wrk measured.
#[derive(Debug, Clone, Copy)]
struct Load {
    req_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
}

/// One server's figures.
#[derive(Debug, Clone, Copy)]
struct Figures {
    narinfo: Load,
    nar_mb_s: f64,
    copy_from_s: f64,
}

async fn run_tool(cmd: &mut Command, what: &str) -> anyhow::Result<String> {
    let output = cmd.env("NIX_CONFIG", NIX_CONFIG).kill_on_drop(true).output().await.with_context(|| {
        format!("cannot run {what}: this benchmark needs nix-bin, nginx, wrk and curl (apt-get install -y nix-bin nginx wrk curl)")
    })?;
    if !output.status.success() {
        bail!("{what} failed: {}", String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Milliseconds from a wrk latency like `212.00us`, `1.02ms` or `1.5s`.
fn wrk_ms(text: &str) -> Option<f64> {
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (n, unit) = text.split_at(split);
    let n: f64 = n.parse().ok()?;
    Some(match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        "m" => n * 60_000.0,
        _ => return None,
    })
}

/// Reads wrk's `--latency` report.
fn parse_wrk(report: &str) -> anyhow::Result<Load> {
    let mut load = Load { req_s: 0.0, p50_ms: 0.0, p99_ms: 0.0, errors: 0 };
    for line in report.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["Requests/sec:", n] => load.req_s = n.parse()?,
            ["50%", v] => load.p50_ms = wrk_ms(v).context("wrk's p50")?,
            ["99%", v] => load.p99_ms = wrk_ms(v).context("wrk's p99")?,
            ["Non-2xx", "or", "3xx", "responses:", n] => load.errors += n.parse::<u64>()?,
            ["Socket", "errors:", rest @ ..] => {
                load.errors += rest.iter().filter_map(|w| w.trim_end_matches(',').parse::<u64>().ok()).sum::<u64>()
            }
            _ => {}
        }
    }
    if load.req_s == 0.0 {
        bail!("wrk reported no requests:\n{report}");
    }
    Ok(load)
}

async fn narinfo_load(url: &str, args: &BenchCacheArgs) -> anyhow::Result<Load> {
    let report = run_tool(
        Command::new("wrk").args([
            "-t1",
            &format!("-c{}", args.conns),
            &format!("-d{}s", args.seconds),
            "--latency",
            url,
        ]),
        "wrk",
    )
    .await?;
    parse_wrk(&report)
}

/// Median MB/s of five `curl` downloads of `url`.
async fn download_mb_s(url: &str) -> anyhow::Result<f64> {
    let mut rates = Vec::new();
    for _ in 0..5 {
        let out = run_tool(
            Command::new("curl").args(["-sf", "-o", "/dev/null", "-w", "%{size_download} %{time_total}", url]),
            "curl",
        )
        .await?;
        let mut words = out.split_whitespace().map(str::parse::<f64>);
        let (Some(Ok(bytes)), Some(Ok(secs))) = (words.next(), words.next()) else {
            bail!("curl printed {out:?}");
        };
        if bytes < 1.0 {
            bail!("curl downloaded nothing from {url}");
        }
        rates.push(bytes / secs / 1e6);
    }
    rates.sort_by(f64::total_cmp);
    Ok(rates[2])
}

/// Seconds for the real client to copy `paths` from `url` into an empty store.
async fn copy_from(url: &str, key: &str, store: &Path, paths: &[&str]) -> anyhow::Result<f64> {
    let start = Instant::now();
    run_tool(
        Command::new("nix")
            .args(["copy", "--from", url, "--to"])
            .arg(store)
            .args(["--option", "trusted-public-keys", key])
            .args(paths),
        "nix copy --from",
    )
    .await?;
    Ok(start.elapsed().as_secs_f64())
}

/// The `URL:` of `hash`'s narinfo at `base`.
async fn nar_url(base: &str, hash: &str) -> anyhow::Result<String> {
    let narinfo = run_tool(Command::new("curl").args(["-sf", &format!("{base}/{hash}.narinfo")]), "curl").await?;
    narinfo
        .lines()
        .find_map(|l| l.strip_prefix("URL: "))
        .map(str::to_string)
        .with_context(|| format!("no URL in {narinfo:?}"))
}

fn hash_of(path: &str) -> &str {
    &path["/nix/store/".len().."/nix/store/".len() + 32]
}

/// nginx serving `root` on a free port of 127.0.0.1, as the anchor configures it; stopped
/// when dropped.
struct Nginx {
    child: tokio::process::Child,
    port: u16,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM: the master stops its workers (a SIGKILL would leave them serving).
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status();
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while std::time::Instant::now() < deadline {
                if !matches!(self.child.try_wait(), Ok(None)) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

async fn start_nginx(dir: &Path, root: &Path) -> anyhow::Result<Nginx> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let conf = dir.join("nginx.conf");
    let d = dir.display();
    std::fs::write(
        &conf,
        format!(
            "user root;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
             events {{ worker_connections 1024; }}\nhttp {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  \
             proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  \
             scgi_temp_path {d}/scgi;\n  types {{ text/x-nix-narinfo narinfo; }}\n  default_type application/octet-stream;\n  \
             sendfile on;\n  tcp_nopush on;\n  keepalive_requests 1000000;\n  server {{ listen 127.0.0.1:{port}; root {}; }}\n}}\n",
            root.display()
        ),
    )?;
    let child = Command::new("nginx")
        .arg("-c")
        .arg(&conf)
        .arg("-p")
        .arg(dir)
        .args(["-g", "daemon off;"])
        .kill_on_drop(true)
        .spawn()
        .context("cannot start nginx (apt-get install -y nginx)")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        if Instant::now() > deadline {
            bail!("nginx did not listen on {port}; see {d}/error.log");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(Nginx { child, port })
}

pub async fn run(ctx: &Ctx, args: &BenchCacheArgs, ticket: ClusterTicket) -> anyhow::Result<()> {
    if args.seconds == 0 || args.big_mib == 0 {
        bail!("--seconds and --big-mib must be at least 1");
    }
    let dir = tempfile::Builder::new().prefix("aspen-bench-cache-").tempdir()?;
    let d = dir.path();
    std::fs::write(d.join("paths.nix"), PATHS_NIX)?;
    let mut built = Vec::new();
    for attr in ["app", "big"] {
        let out = run_tool(
            Command::new("nix-build")
                .arg(d.join("paths.nix"))
                .args(["--argstr", "nonce", "aspen-bench-1", "--arg", "bigMiB", &args.big_mib.to_string()])
                .args(["-A", attr, "--no-out-link", "--quiet"]),
            "nix-build",
        )
        .await?;
        built.push(out.trim().to_string());
    }
    let (app, big) = (built[0].clone(), built[1].clone());

    // Aspen: a public cache, pushed over iroh.
    let token = ctx.token_for(&ticket)?;
    let client = Client::over_nodes_with_token(ticket.nodes.clone(), ctx.client_config(), token).await?;
    let cache = CacheClient::new(&client);
    let key = match cache.show_cache("bench").await {
        Ok(info) => info.record.public_key,
        Err(_) => {
            let settings = CacheSettings {
                public_reads: true,
                compression: Compression::None,
                retention_secs: 0,
                priority: 40,
                key_name: None,
            };
            cache.create_cache("bench", settings).await?.record.public_key
        }
    };
    let start = Instant::now();
    let pushed =
        aspen_cache::push::push(&cache, &NixCommand::default(), "bench", &[app.clone(), big.clone()], |_| {}).await?;
    let push_s = start.elapsed().as_secs_f64();
    let gateway = match args.gateway {
        Some(g) => g,
        None => {
            let node = ticket.nodes.first().context("the ticket names no node")?;
            let addr = node.addrs.first().context("the ticket's first node has no address")?;
            *addr
        }
    };
    let aspen_base = format!("http://{gateway}/bench");

    // The anchor: nix copy to a file:// cache, signed there, served by nginx.
    let caches = d.join("caches");
    let start = Instant::now();
    run_tool(
        Command::new("nix").args([
            "copy",
            "--to",
            &format!("file://{}/none?compression=none", caches.display()),
            &app,
            &big,
        ]),
        "nix copy --to file://",
    )
    .await?;
    let copy_to_file_s = start.elapsed().as_secs_f64();
    run_tool(
        Command::new("nix-store")
            .args(["--generate-binary-cache-key", "anchor-bench-1"])
            .arg(d.join("sk"))
            .arg(d.join("pk")),
        "nix-store --generate-binary-cache-key",
    )
    .await?;
    run_tool(
        Command::new("nix")
            .args(["store", "sign", "--store", &format!("file://{}/none", caches.display()), "--key-file"])
            .arg(d.join("sk"))
            .args(["--recursive", &app, &big]),
        "nix store sign",
    )
    .await?;
    let anchor_key = std::fs::read_to_string(d.join("pk"))?.trim().to_string();
    let nginx_dir = d.join("nginx");
    std::fs::create_dir_all(&nginx_dir)?;
    let nginx = start_nginx(&nginx_dir, &caches).await?;
    let nginx_base = format!("http://127.0.0.1:{}/none", nginx.port);

    let mut figures = Vec::new();
    for (i, (base, key)) in [(&aspen_base, &key), (&nginx_base, &anchor_key)].into_iter().enumerate() {
        let narinfo = narinfo_load(&format!("{base}/{}.narinfo", hash_of(&app)), args).await?;
        let url = nar_url(base, hash_of(&big)).await?;
        let nar_mb_s = download_mb_s(&format!("{base}/{url}")).await?;
        let copy_from_s = copy_from(base, key, &d.join(format!("store-{i}")), &[&app, &big]).await?;
        figures.push(Figures { narinfo, nar_mb_s, copy_from_s });
    }
    drop(nginx);
    client.close().await;
    let (a, n) = (figures[0], figures[1]);
    if ctx.json {
        let side = |f: Figures| {
            json!({
                "narinfo_req_s": f.narinfo.req_s, "narinfo_p50_ms": f.narinfo.p50_ms, "narinfo_p99_ms": f.narinfo.p99_ms,
                "narinfo_errors": f.narinfo.errors, "nar_mb_s": f.nar_mb_s, "copy_from_s": f.copy_from_s,
            })
        };
        output::print_json(&json!({
            "aspen": side(a), "nginx": side(n),
            "ratio": {
                "narinfo_req_s": a.narinfo.req_s / n.narinfo.req_s,
                "nar_mb_s": a.nar_mb_s / n.nar_mb_s,
                "copy_from_s": a.copy_from_s / n.copy_from_s,
            },
            "push_s": push_s, "pushed": pushed.pushed, "copy_to_file_s": copy_to_file_s,
            "big_mib": args.big_mib, "seconds": args.seconds, "conns": args.conns,
        }))?;
        return Ok(());
    }
    let mut text = format!(
        "cache benchmark: closure of 3 paths + one {} MiB path; wrk -t1 -c{} -d{}s; NAR: median of 5 curl GETs\n",
        args.big_mib, args.conns, args.seconds
    );
    text.push_str(&format!("{:<22} {:>12} {:>12} {:>8}\n", "", "aspen", "nginx", "ratio"));
    let mut row = |what: &str, a: f64, n: f64, unit: &str| {
        text.push_str(&format!("{what:<22} {a:>9.2} {unit:<2} {n:>9.2} {unit:<2} {:>7.2}x\n", a / n));
    };
    row("narinfo req/s", a.narinfo.req_s, n.narinfo.req_s, "");
    row("narinfo p50", a.narinfo.p50_ms, n.narinfo.p50_ms, "ms");
    row("narinfo p99", a.narinfo.p99_ms, n.narinfo.p99_ms, "ms");
    row("NAR download", a.nar_mb_s, n.nar_mb_s, "MB/s");
    row("nix copy --from", a.copy_from_s, n.copy_from_s, "s");
    text.push_str(&format!(
        "errors: aspen {} nginx {}; push over iroh {:.2} s ({} paths); nix copy --to file:// {:.2} s",
        a.narinfo.errors, n.narinfo.errors, push_s, pushed.pushed, copy_to_file_s
    ));
    output::print_line(&text)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_reports_are_read() {
        let report = "Running 1s test @ http://x\n  Latency Distribution\n     50%  212.00us\n     75%  1.00ms\n     99%    1.52ms\n  38000 requests in 1.00s, 1.00MB read\n  Non-2xx or 3xx responses: 3\n  Socket errors: connect 0, read 2, write 0, timeout 1\nRequests/sec:  38600.12\n";
        let load = parse_wrk(report).unwrap();
        assert!((load.req_s - 38600.12).abs() < 1e-6);
        assert!((load.p50_ms - 0.212).abs() < 1e-9);
        assert!((load.p99_ms - 1.52).abs() < 1e-9);
        assert_eq!(load.errors, 6);
        assert!(parse_wrk("nothing").is_err());
    }
}
