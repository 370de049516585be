//! `aspen bench kv`: a closed-loop load generator shaped like the etcd anchor benchmark,
//! printing throughput and latency percentiles.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail};
use aspen_client::{Client, ClientError, ClusterTicket, ReadConsistency};
use aspen_core::limits::MAX_VALUE_BYTES;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use rand::{Rng, RngCore, SeedableRng};
use serde_json::json;
use tokio::time::Instant;

use crate::cmd::cluster::spinner;
use crate::context::Ctx;
use crate::local_cluster::{LocalCluster, LocalClusterSpec, free_ports};
use crate::output;

/// Most concurrent client tasks.
pub const MAX_BENCH_CLIENTS: usize = 4096;
/// Most connections (one endpoint each).
pub const MAX_BENCH_CONNECTIONS: usize = 256;
/// Longest run.
pub const MAX_BENCH_SECONDS: u64 = 3600;
/// Largest latency the histogram records (longer ones are clamped to it), in microseconds.
const MAX_LATENCY_US: u64 = 120_000_000;
/// Nodes of the cluster `--start-cluster` runs.
const BENCH_CLUSTER_NODES: usize = 3;
/// Attempts per key while prefilling before giving up.
const PREFILL_ATTEMPTS: u32 = 3;

#[derive(Debug, clap::Subcommand)]
pub enum BenchCommand {
    /// Closed-loop key-value benchmark.
    ///
    /// CLIENTS tasks each run one request at a time for SECONDS: `put` writes a random key
    /// bench/<0..KEYSPACE> with a random VALUE_SIZE-byte value; `get` does a linearizable
    /// read of a random key (the keyspace is filled first). The tasks share CONNECTIONS
    /// client connections (each its own QUIC endpoint); connection i starts at node i of the
    /// ticket, so load spreads over the nodes as etcd's client balancer spreads it. Requests
    /// on one connection pipeline on separate streams. Latency is measured per request,
    /// from send to answer; failed requests are counted as errors, not timed.
    ///
    /// `lock` times acquire+release of an aspen-coord lock: each task has its own session
    /// and its own lock, or, with --contend, all tasks take turns on one lock.
    ///
    /// `queue` times dequeue+ack of one item on a work queue filled with PREFILL items
    /// first. Each task puts back what it consumed in batches of 16 (not timed), so the
    /// depth stays near PREFILL for the whole run.
    Kv(BenchKvArgs),
    /// Blob throughput: add a file on one node, fetch it from a node that lacks it, in MB/s,
    /// beside `cp` of the same file and `curl` from `python3 -m http.server` in the same run.
    Blob(crate::cmd::bench_blob::BenchBlobArgs),
    /// The forge with the real git client: full push, full and --depth 1 clones, one
    /// commit pushed and fetched, beside `git daemon` serving the same repository on
    /// loopback in the same run, with the ratio of each.
    Forge(crate::cmd::bench_forge::BenchForgeArgs),
    /// The Nix cache's HTTP gateway beside nginx serving a `file://` cache of the same
    /// paths: narinfo requests per second (p50, p99), NAR download MB/s and `nix copy
    /// --from`, with the ratio of each. Needs nix-bin, nginx, wrk and curl.
    Cache(crate::cmd::bench_cache::BenchCacheArgs),
    /// AspenFS beside a plain directory and a bindfs passthrough mount (the FUSE anchor):
    /// sequential write and read MB/s, create, stat and unlink per second, a git clone.
    /// Needs root (for the mounts and drop_caches), git, and bindfs for its column.
    Fs(crate::cmd::bench_fs::BenchFsArgs),
    /// MicroVMs on this host's hypervisor backend: boot to job start and job end to teardown
    /// over RUNS VMs running `true` (p50, min, max, against the 2.5 s QEMU TCG boot target),
    /// and VirtioFS measured inside the guest (sequential read MB/s of a READ_MIB file, a
    /// `find` walk and `cat` of small files) over Aspen's backend beside `virtiofsd` serving
    /// the same directory, a fresh VM per measurement, median of 3, with the ratio of each.
    /// Needs a guest image (`aspen vm image build`); the virtiofsd column needs virtiofsd.
    Vm(crate::cmd::bench_vm::BenchVmArgs),
    /// CI with a worker in this process: push to job start (p50), the throughput of JOBS
    /// trivial shell jobs from one push, and the scheduler's overhead per job.
    Ci(crate::cmd::bench_ci::BenchCiArgs),
    /// Rolling upgrades of a 3-node `cluster up` while writers put all along: each round's
    /// time, writes per second before and during, the longest time without an acknowledged
    /// write, and the writes that failed.
    Upgrade(crate::cmd::bench_upgrade::BenchUpgradeArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchOp {
    Put,
    Get,
    Lock,
    Queue,
}

impl BenchOp {
    fn name(self) -> &'static str {
        match self {
            BenchOp::Put => "put",
            BenchOp::Get => "get",
            BenchOp::Lock => "lock",
            BenchOp::Queue => "queue",
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct BenchKvArgs {
    /// Concurrent client tasks, each with one request in flight.
    #[arg(long, default_value_t = 64)]
    pub clients: usize,
    /// How long to run.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Operation to time.
    #[arg(long, value_enum, default_value_t = BenchOp::Put)]
    pub op: BenchOp,
    /// Value size in bytes.
    #[arg(long, default_value_t = 256)]
    pub value_size: usize,
    /// Number of distinct keys.
    #[arg(long, default_value_t = 100_000)]
    pub keyspace: u64,
    /// Client connections the tasks share (at most CLIENTS).
    #[arg(long, default_value_t = 8)]
    pub connections: usize,
    /// With --op lock: every task contends for one lock (handoff latency).
    #[arg(long)]
    pub contend: bool,
    /// With --op queue: items in the queue before timing starts, kept for the whole run.
    #[arg(long, default_value_t = 20_000)]
    pub prefill: u64,
    /// Start a 3-node cluster in a temporary directory for the run, and stop it after.
    #[arg(long)]
    pub start_cluster: bool,
}

/// What one client task measured.
struct TaskResult {
    latencies: Histogram<u64>,
    errors: u64,
    last_error: Option<ClientError>,
}

pub async fn run(ctx: &Ctx, cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Kv(args) => {
            check_args(&args)?;
            if !args.start_cluster {
                return run_against(ctx, &args, ctx.ticket()?).await;
            }
            with_bench_cluster(|ticket, _| run_against(ctx, &args, ticket)).await
        }
        BenchCommand::Blob(args) => {
            if !args.start_cluster {
                return crate::cmd::bench_blob::run(ctx, &args, ctx.ticket()?).await;
            }
            with_bench_cluster(|ticket, _| crate::cmd::bench_blob::run(ctx, &args, ticket)).await
        }
        BenchCommand::Forge(args) => {
            if !args.start_cluster {
                return crate::cmd::bench_forge::run(ctx, &args, ctx.ticket()?, Vec::new()).await;
            }
            with_bench_cluster(|ticket, pids| crate::cmd::bench_forge::run(ctx, &args, ticket, pids)).await
        }
        BenchCommand::Cache(args) => {
            if !args.start_cluster {
                return crate::cmd::bench_cache::run(ctx, &args, ctx.ticket()?).await;
            }
            with_bench_cluster(|ticket, _| crate::cmd::bench_cache::run(ctx, &args, ticket)).await
        }
        BenchCommand::Fs(args) => {
            if !args.start_cluster {
                return crate::cmd::bench_fs::run(ctx, &args, ctx.ticket()?).await;
            }
            with_bench_cluster(|ticket, _| crate::cmd::bench_fs::run(ctx, &args, ticket)).await
        }
        // Blocking, on this thread for the whole run: the hypervisor's parent-death signal
        // follows the thread that spawns it.
        BenchCommand::Vm(args) => tokio::task::block_in_place(|| crate::cmd::bench_vm::run(&args)),
        BenchCommand::Ci(args) => {
            if !args.start_cluster {
                return crate::cmd::bench_ci::run(ctx, &args, ctx.ticket()?).await;
            }
            with_bench_cluster(|ticket, _| crate::cmd::bench_ci::run(ctx, &args, ticket)).await
        }
        BenchCommand::Upgrade(args) => crate::cmd::bench_upgrade::run(&args).await,
    }
}

/// Runs `bench` against a throwaway 3-node cluster in a temporary directory, with the
/// cluster's ticket and its nodes' process ids.
pub async fn with_bench_cluster<F, Fut>(bench: F) -> anyhow::Result<()>
where
    F: FnOnce(ClusterTicket, Vec<u32>) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let dir =
        tempfile::Builder::new().prefix("aspen-bench-").tempdir().context("cannot create a temporary directory")?;
    let exe = std::env::current_exe().context("cannot find this executable to run nodes with")?;
    let spec = LocalClusterSpec { dir: dir.path().to_path_buf(), ports: free_ports(BENCH_CLUSTER_NODES)?, exe };
    let progress = spinner("starting a 3-node cluster");
    let mut cluster = LocalCluster::start(&spec, &progress).await?;
    let ticket = cluster.bootstrap(&progress).await;
    progress.finish_and_clear();
    let result = match ticket {
        Ok(ticket) => {
            let ticket = ClusterTicket::decode(&ticket)?;
            tokio::select! {
                r = bench(ticket, cluster.pids()) => r,
                _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
            }
        }
        Err(e) => Err(e),
    };
    cluster.stop().await;
    result
}

fn check_args(args: &BenchKvArgs) -> anyhow::Result<()> {
    if args.clients == 0 || args.clients > MAX_BENCH_CLIENTS {
        bail!("--clients must be between 1 and {MAX_BENCH_CLIENTS}");
    }
    if args.connections == 0 || args.connections > MAX_BENCH_CONNECTIONS {
        bail!("--connections must be between 1 and {MAX_BENCH_CONNECTIONS}");
    }
    if args.seconds == 0 || args.seconds > MAX_BENCH_SECONDS {
        bail!("--seconds must be between 1 and {MAX_BENCH_SECONDS}");
    }
    if args.keyspace == 0 {
        bail!("--keyspace must be at least 1");
    }
    if args.value_size > MAX_VALUE_BYTES {
        bail!("--value-size {} is over the limit MAX_VALUE_BYTES = {MAX_VALUE_BYTES}", args.value_size);
    }
    Ok(())
}

async fn run_against(ctx: &Ctx, args: &BenchKvArgs, ticket: ClusterTicket) -> anyhow::Result<()> {
    let token = ctx.token_for(&ticket)?;
    let connections = args.connections.min(args.clients);
    let mut clients = Vec::with_capacity(connections);
    for i in 0..connections {
        let mut nodes = ticket.nodes.clone();
        let shift = i % nodes.len().max(1);
        nodes.rotate_left(shift);
        let client = Client::over_nodes_with_token(nodes, ctx.client_config(), token.clone())
            .await
            .context("cannot connect to the cluster")?;
        clients.push(client);
    }
    let result = measure(ctx, args, &clients).await;
    for c in &clients {
        c.close().await;
    }
    result
}

async fn measure(ctx: &Ctx, args: &BenchKvArgs, clients: &[Client]) -> anyhow::Result<()> {
    if args.op == BenchOp::Get {
        prefill(args, clients).await?;
    }
    let queue_name = format!("bench-{}-{}", std::process::id(), rand::rng().random::<u32>());
    if args.op == BenchOp::Queue {
        prefill_queue(args, clients, &queue_name).await?;
    }
    let start = Instant::now();
    let deadline = start + Duration::from_secs(args.seconds);
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..args.clients {
        let client = clients[t % clients.len()].clone();
        let (op, value_size, keyspace) = (args.op, args.value_size, args.keyspace);
        if op == BenchOp::Lock {
            let name = if args.contend { "bench-lock".to_string() } else { format!("bench-lock-{t}") };
            tasks.spawn(async move { lock_loop(client, name, deadline).await });
            continue;
        }
        if op == BenchOp::Queue {
            let queue = aspen_coord::Queue::new(&client, &queue_name)?;
            tasks.spawn(async move { queue_loop(queue, value_size, deadline).await });
            continue;
        }
        tasks.spawn(async move { client_loop(client, op, value_size, keyspace, deadline).await });
    }
    let mut total = Histogram::<u64>::new_with_bounds(1, MAX_LATENCY_US, 3).context("histogram")?;
    let mut errors = 0;
    let mut last_error = None;
    while let Some(joined) = tasks.join_next().await {
        let r = joined.context("a client task failed")??;
        total.add(&r.latencies).context("merging latencies")?;
        errors += r.errors;
        last_error = r.last_error.or(last_error);
    }
    let elapsed = start.elapsed().as_secs_f64();
    let ops = total.len();
    let ops_per_s = ops as f64 / elapsed;
    let (p50, p99, max) = (total.value_at_quantile(0.5), total.value_at_quantile(0.99), total.max());
    if ctx.json {
        output::print_json(&json!({
            "op": args.op.name(),
            "clients": args.clients,
            "connections": clients.len(),
            "value_size": args.value_size,
            "keyspace": args.keyspace,
            "seconds": elapsed,
            "ops": ops,
            "ops_per_s": ops_per_s.round(),
            "p50_us": p50,
            "p99_us": p99,
            "max_us": max,
            "errors": errors,
        }))?;
    } else {
        output::print_line(&format!(
            "op={} clients={} ops_per_s={:.0} p50_us={p50} p99_us={p99} max_us={max} errors={errors} ops={ops} \
             connections={} value_size={}",
            args.op.name(),
            args.clients,
            ops_per_s,
            clients.len(),
            args.value_size
        ))?;
    }
    if let Some(e) = last_error {
        eprintln!("last error: {e}");
    }
    if args.op == BenchOp::Queue
        && let Ok(Some(stats)) = aspen_coord::Queue::new(&clients[0], &queue_name)?.stats().await
    {
        eprintln!(
            "queue {queue_name}: prefill {} ready {} in flight {} acked {} (left in place)",
            args.prefill, stats.ready, stats.in_flight, stats.acked
        );
    }
    Ok(())
}

/// Items put back per enqueue by [`queue_loop`].
const QUEUE_REFILL_BATCH: usize = 16;

/// Dequeue+ack of one item, timed together, until `deadline`; consumed items go back in
/// batches so the depth holds.
async fn queue_loop(queue: aspen_coord::Queue, value_size: usize, deadline: Instant) -> anyhow::Result<TaskResult> {
    let mut latencies = Histogram::<u64>::new_with_bounds(1, MAX_LATENCY_US, 3).context("histogram")?;
    let (mut errors, mut last_error, mut owed) = (0, None, 0);
    let visibility = Some(Duration::from_secs(60));
    while Instant::now() < deadline {
        let started = Instant::now();
        let result = async {
            let messages = queue.try_dequeue(1, visibility).await?;
            let Some(m) = messages.first() else {
                return Err(aspen_coord::CoordError::Invalid("the queue is empty: raise --prefill".into()));
            };
            queue.ack(m.receipt).await
        }
        .await;
        match result {
            Ok(()) => {
                let us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
                latencies.saturating_record(us.max(1));
                owed += 1;
            }
            Err(e) => {
                errors += 1;
                last_error = Some(ClientError::Config(e.to_string()));
            }
        }
        if owed == QUEUE_REFILL_BATCH {
            let items = (0..owed).map(|_| aspen_coord::NewItem { payload: vec![7; value_size], dedup_id: None });
            if queue.enqueue_batch(items.collect()).await.is_ok() {
                owed = 0;
            }
        }
    }
    Ok(TaskResult { latencies, errors, last_error })
}

/// Fills the benchmark queue with `--prefill` items, 500 per enqueue.
async fn prefill_queue(args: &BenchKvArgs, clients: &[Client], name: &str) -> anyhow::Result<()> {
    const BATCH: u64 = 500;
    let bar = ProgressBar::new(args.prefill);
    if let Ok(style) = ProgressStyle::with_template("enqueueing {bar:40} {pos}/{len} items ({per_sec}, {eta} left)") {
        bar.set_style(style);
    }
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for client in clients {
        let queue = aspen_coord::Queue::new(client, name)?;
        let (next, bar, total, value_size) = (next.clone(), bar.clone(), args.prefill, args.value_size);
        tasks.spawn(async move {
            loop {
                let from = next.fetch_add(BATCH, Ordering::Relaxed);
                if from >= total {
                    return Ok::<(), anyhow::Error>(());
                }
                let n = BATCH.min(total - from);
                let items: Vec<_> =
                    (0..n).map(|_| aspen_coord::NewItem { payload: vec![7; value_size], dedup_id: None }).collect();
                queue.enqueue_batch(items).await.with_context(|| format!("cannot prefill queue {}", queue.name()))?;
                bar.inc(n);
            }
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.context("a prefill task failed")??;
    }
    bar.finish_and_clear();
    Ok(())
}

async fn client_loop(
    client: Client,
    op: BenchOp,
    value_size: usize,
    keyspace: u64,
    deadline: Instant,
) -> anyhow::Result<TaskResult> {
    let mut latencies = Histogram::<u64>::new_with_bounds(1, MAX_LATENCY_US, 3).context("histogram")?;
    let mut rng = rand::rngs::StdRng::from_rng(&mut rand::rng());
    let mut value = vec![0u8; value_size];
    let mut errors = 0;
    let mut last_error = None;
    while Instant::now() < deadline {
        let key = format!("bench/{}", rng.random_range(0..keyspace));
        let started = Instant::now();
        // Put or get: measure() runs `lock` in lock_loop.
        let result = if op == BenchOp::Put {
            rng.fill_bytes(&mut value);
            client.put(&key, value.clone()).await.map(drop)
        } else {
            client.get(&key, ReadConsistency::Linearizable).await.map(drop)
        };
        match result {
            Ok(()) => {
                let us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
                latencies.saturating_record(us.max(1));
            }
            Err(e) => {
                errors += 1;
                last_error = Some(e);
            }
        }
    }
    Ok(TaskResult { latencies, errors, last_error })
}

/// Acquire+release of one lock, timed together, until `deadline`.
async fn lock_loop(client: Client, name: String, deadline: Instant) -> anyhow::Result<TaskResult> {
    let mut latencies = Histogram::<u64>::new_with_bounds(1, MAX_LATENCY_US, 3).context("histogram")?;
    let session = aspen_coord::Session::new(client, Duration::from_secs(30)).await.context("cannot start a session")?;
    let lock = aspen_coord::Lock::new(&session, &name);
    let mut errors = 0;
    let mut last_error = None;
    while Instant::now() < deadline {
        let started = Instant::now();
        let result = match lock.acquire(Duration::from_secs(30)).await {
            Ok(guard) => guard.release().await,
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => {
                let us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
                latencies.saturating_record(us.max(1));
            }
            Err(aspen_coord::CoordError::Kv(e)) => {
                errors += 1;
                last_error = Some(e.into());
            }
            Err(e) => {
                errors += 1;
                last_error = Some(ClientError::Config(e.to_string()));
            }
        }
    }
    let _ = session.close().await;
    Ok(TaskResult { latencies, errors, last_error })
}

/// Writes every key of the keyspace, with as many writers as there are clients.
async fn prefill(args: &BenchKvArgs, clients: &[Client]) -> anyhow::Result<()> {
    let bar = ProgressBar::new(args.keyspace);
    if let Ok(style) = ProgressStyle::with_template("prefilling {bar:40} {pos}/{len} keys ({per_sec}, {eta} left)") {
        bar.set_style(style);
    }
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..args.clients {
        let client = clients[t % clients.len()].clone();
        let (next, bar, keyspace, value_size) = (next.clone(), bar.clone(), args.keyspace, args.value_size);
        tasks.spawn(async move {
            let mut rng = rand::rngs::StdRng::from_rng(&mut rand::rng());
            let mut value = vec![0u8; value_size];
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                if k >= keyspace {
                    return Ok::<(), anyhow::Error>(());
                }
                rng.fill_bytes(&mut value);
                let key = format!("bench/{k}");
                let mut attempt = 0;
                loop {
                    attempt += 1;
                    match client.put(&key, value.clone()).await {
                        Ok(_) => break,
                        Err(e) if attempt >= PREFILL_ATTEMPTS => {
                            return Err(e).with_context(|| format!("cannot prefill {key}"));
                        }
                        Err(_) => {}
                    }
                }
                bar.inc(1);
            }
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.context("a prefill task failed")??;
    }
    bar.finish_and_clear();
    Ok(())
}
