//! `aspen bench upgrade`: what a rolling upgrade costs the clients of a cluster.
//!
//! Runs `aspen cluster up` (this executable) with three nodes in a temporary directory and a
//! closed-loop writer of WRITERS tasks, each one put in flight at a time. After WARMUP
//! seconds it rolls the cluster ROUNDS times with `aspen cluster upgrade`, each round onto
//! another copy of this executable (the same program with bytes appended, so another
//! artifact with another hash). It prints each round's time and its slowest node, the write
//! rate before and during the upgrades, the longest time no write was acknowledged, and the
//! writes that failed (their outcome unknown; none may be lost, which the tests check).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, bail};
use aspen_client::Client;
use tokio::time::Instant;

use crate::local_cluster::{CLUSTER_TICKET_FILE, free_base_port};

#[derive(Debug, clap::Args)]
pub struct BenchUpgradeArgs {
    /// Rolling upgrades timed, one after another.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Writer tasks, each with one put in flight.
    #[arg(long, default_value_t = 8)]
    pub writers: usize,
    /// Seconds of writes measured before the first upgrade.
    #[arg(long, default_value_t = 5)]
    pub warmup: u64,
}

/// Acknowledgement times and failures, shared by the writer tasks.
#[derive(Default)]
struct Acks {
    times: Vec<Instant>,
    failed: u64,
}

/// `cluster up` in a temporary directory; SIGINT on drop.
struct Up {
    child: tokio::process::Child,
    dir: tempfile::TempDir,
}

impl Drop for Up {
    fn drop(&mut self) {
        if let Some(pid) = self.child.id().and_then(|p| libc::pid_t::try_from(p).ok()) {
            // SAFETY: kill(2) of the child we spawned; it stops its nodes on SIGINT.
            unsafe {
                libc::kill(pid, libc::SIGINT);
            }
        }
    }
}

impl Up {
    fn dir(&self) -> PathBuf {
        self.dir.path().join("cluster")
    }

    async fn stop(mut self) {
        if let Some(pid) = self.child.id().and_then(|p| libc::pid_t::try_from(p).ok()) {
            // SAFETY: as in Drop.
            unsafe {
                libc::kill(pid, libc::SIGINT);
            }
        }
        if tokio::time::timeout(Duration::from_secs(40), self.child.wait()).await.is_err() {
            let _ = self.child.kill().await;
        }
    }
}

async fn start_cluster(exe: &Path) -> anyhow::Result<Up> {
    let dir = tempfile::Builder::new().prefix("aspen-bench-upgrade-").tempdir()?;
    let base = free_base_port(3)?;
    let log = std::fs::File::create(dir.path().join("up.log"))?;
    let child = tokio::process::Command::new(exe)
        .args(["cluster", "up", "--nodes", "3", "--base-port", &base.to_string(), "--data-dir"])
        .arg(dir.path().join("cluster"))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .context("cannot start aspen cluster up")?;
    let mut up = Up { child, dir };
    let ticket = up.dir().join(CLUSTER_TICKET_FILE);
    let deadline = Instant::now() + Duration::from_secs(120);
    while !ticket.is_file() {
        if let Some(status) = up.child.try_wait()? {
            let log = std::fs::read_to_string(up.dir.path().join("up.log")).unwrap_or_default();
            bail!("cluster up exited ({status}):\n{log}");
        }
        if Instant::now() >= deadline {
            bail!("cluster up wrote no ticket within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(up)
}

/// A copy of `exe` with `marker` appended: the same program, another hash.
fn variant(exe: &Path, dir: &Path, marker: usize) -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(format!("aspen-{marker}"));
    let mut bytes = std::fs::read(exe).with_context(|| format!("cannot read {}", exe.display()))?;
    bytes.extend_from_slice(format!("\naspen bench upgrade round {marker}\n").as_bytes());
    std::fs::write(&path, bytes)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    Ok(path)
}

fn rate(times: &[Instant], from: Instant, to: Instant) -> f64 {
    let n = times.iter().filter(|t| **t >= from && **t < to).count();
    n as f64 / to.duration_since(from).as_secs_f64().max(1e-9)
}

/// The longest time between `from` and `to` in which no write was acknowledged.
fn longest_gap(times: &[Instant], from: Instant, to: Instant) -> Duration {
    let mut inside: Vec<Instant> = times.iter().copied().filter(|t| *t >= from && *t <= to).collect();
    inside.sort_unstable();
    let mut last = from;
    let mut gap = Duration::ZERO;
    for t in inside.into_iter().chain(std::iter::once(to)) {
        gap = gap.max(t.duration_since(last));
        last = t;
    }
    gap
}

pub async fn run(args: &BenchUpgradeArgs) -> anyhow::Result<()> {
    if args.rounds == 0 || args.writers == 0 || args.writers > 256 {
        bail!("--rounds must be at least 1 and --writers between 1 and 256");
    }
    let exe = std::env::current_exe().context("cannot find this executable")?;
    let up = start_cluster(&exe).await?;
    let result = measure(args, &exe, &up).await;
    up.stop().await;
    result
}

async fn measure(args: &BenchUpgradeArgs, exe: &Path, up: &Up) -> anyhow::Result<()> {
    let ticket = std::fs::read_to_string(up.dir().join(CLUSTER_TICKET_FILE))?;
    let client = Client::from_ticket_str(&ticket).await.context("cannot connect to the bench cluster")?;
    let acks = Arc::new(Mutex::new(Acks::default()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for w in 0..args.writers {
        let (client, acks, stop) = (client.clone(), acks.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let ok = client.put(format!("bench/upgrade/{w}/{n}"), n.to_string()).await.is_ok();
                let mut acks = acks.lock().expect("acks");
                if ok {
                    acks.times.push(Instant::now());
                } else {
                    acks.failed += 1;
                }
                n += 1;
            }
        }));
    }
    let warm_start = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.warmup)).await;
    let before_end = Instant::now();
    println!("rolling upgrade of 3 local nodes, {} writers putting all along", args.writers);
    let mut rounds = Vec::new();
    for round in 1..=args.rounds {
        let artifact = variant(exe, up.dir.path(), round)?;
        let started = Instant::now();
        let out = tokio::process::Command::new(exe)
            .args(["--json", "cluster", "upgrade", "--data-dir"])
            .arg(up.dir())
            .arg("--artifact")
            .arg(&artifact)
            .env("ASPEN_TICKET_FILE", up.dir().join(CLUSTER_TICKET_FILE))
            .output()
            .await?;
        let took = started.elapsed();
        if !out.status.success() {
            bail!("round {round}: the upgrade failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let report: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        let slowest = report["nodes"]
            .as_array()
            .map(|nodes| nodes.iter().filter_map(|n| n["seconds"].as_f64()).fold(0.0, f64::max))
            .unwrap_or(0.0);
        println!("  round {round}: {:.2} s for 3 nodes, slowest node {slowest:.2} s", took.as_secs_f64());
        rounds.push(took.as_secs_f64());
    }
    let during_end = Instant::now();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for task in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(30), task).await;
    }
    client.close().await;
    let acks = acks.lock().expect("acks");
    let before = rate(&acks.times, warm_start, before_end);
    let during = rate(&acks.times, before_end, during_end);
    let gap = longest_gap(&acks.times, before_end, during_end);
    let mut sorted = rounds.clone();
    sorted.sort_by(f64::total_cmp);
    println!("upgrade, p50 of {} rounds:      {:.2} s", rounds.len(), sorted[sorted.len() / 2]);
    println!("writes/s before:                {before:.0}");
    println!("writes/s during the upgrades:   {during:.0} ({:.0}% of before)", 100.0 * during / before.max(1e-9));
    println!("longest time without an ack:    {:.0} ms", gap.as_secs_f64() * 1000.0);
    println!("writes that failed (unknown):   {}", acks.failed);
    Ok(())
}
