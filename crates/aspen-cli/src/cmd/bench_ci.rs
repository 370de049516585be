//! `aspen bench ci`: CI's own costs on a cluster, with a worker in this process.
//!
//! - push to job start: a one-job shell pipeline, a new tree each round (so nothing is
//!   reused), from before `git push` to the job's `started_ms`;
//! - throughput: one push of a pipeline of JOBS independent `true` jobs, from before the
//!   push to the run's end;
//! - scheduler overhead: per job, queued to started (the claim) and started to finished
//!   (checkout and `true`), p50.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, bail};
use aspen_ci::CiClient;
use aspen_ci::executor::ExecutorSettings;
use aspen_ci::protocol::RunInfo;
use aspen_ci::records::State;
use aspen_ci::worker::{Checkout, WorkerConfig};
use aspen_ci_pipeline::ExecutorKind;
use aspen_client::Client;
use aspen_forge::ForgeClient;
use aspen_net::ClusterTicket;

use crate::cmd::bench_forge::git;
use crate::context::Ctx;

#[derive(Debug, clap::Args)]
pub struct BenchCiArgs {
    /// Pushes timed for push-to-job-start.
    #[arg(long, default_value_t = 10)]
    pub rounds: usize,
    /// Jobs in the throughput pipeline (at most 200, the pipeline limit).
    #[arg(long, default_value_t = 200)]
    pub jobs: usize,
    /// Jobs the in-process worker runs at once.
    #[arg(long, default_value_t = 4)]
    pub capacity: usize,
    /// Start a 3-node cluster in a temporary directory for the run, and stop it after.
    #[arg(long)]
    pub start_cluster: bool,
}

fn now_ms() -> u64 {
    aspen_ci::service::now_ms()
}

fn p50(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

/// Waits for run `number` of `repo`-wide listing to appear with `done` true of it.
async fn wait_run(ci: &CiClient, repo: &str, after: u64, done: impl Fn(&RunInfo) -> bool) -> anyhow::Result<RunInfo> {
    let deadline = std::time::Instant::now() + Duration::from_secs(600);
    loop {
        if let Some(run) = ci.runs(Some(repo), None, 5).await?.into_iter().find(|r| r.number > after && done(r)) {
            return Ok(run);
        }
        if std::time::Instant::now() > deadline {
            bail!("no run of {repo} after {after} got there within 600 s");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn commit_and_push(dir: &Path, env: &[(&str, String)], round: usize) -> anyhow::Result<u64> {
    std::fs::write(dir.join("round"), round.to_string())?;
    git(dir, &["add", "-A"], env).await?;
    git(dir, &["commit", "-qm", &format!("round {round}")], env).await?;
    let t0 = now_ms();
    git(dir, &["push", "-q", "origin", "main"], env).await?;
    Ok(t0)
}

pub async fn run(ctx: &Ctx, args: &BenchCiArgs, ticket: ClusterTicket) -> anyhow::Result<()> {
    if args.jobs == 0 || args.jobs > 200 || args.rounds == 0 {
        bail!("--jobs must be 1 to 200 and --rounds at least 1");
    }
    let scratch = tempfile::Builder::new().prefix("aspen-bench-ci-").tempdir().context("scratch directory")?;
    let scratch = scratch.path();
    let helper_dir = std::env::current_exe()?.parent().context("the executable's directory")?.to_path_buf();
    let token = ctx.token_for(&ticket)?;
    let mut aspen_ticket = ticket.clone();
    aspen_ticket.token = token.as_ref().map(|t| t.to_bytes());
    let path = format!("{}:{}", helper_dir.display(), std::env::var("PATH").unwrap_or_default());
    let env = vec![("PATH", path), ("ASPEN_TICKET", aspen_ticket.encode())];
    let client =
        Client::over_nodes_as(ticket.nodes.clone(), ctx.client_config(), token.clone(), ctx.identity()?).await?;
    let forge = ForgeClient::new(&client);
    let ci = CiClient::new(&client);

    let config = WorkerConfig {
        id: format!("bench-{:04x}", rand::random::<u16>()),
        capacity: args.capacity,
        executors: vec![ExecutorKind::Shell],
        max_cpus: 64,
        max_memory_mib: 1 << 20,
        work_dir: scratch.join("worker"),
        session_ttl: Duration::from_secs(15),
        checkout: Checkout {
            git: "git".into(),
            helper_dir: Some(helper_dir),
            ticket: aspen_ticket.encode(),
            token: token.map(|t| t.encode()),
        },
        exec: ExecutorSettings { isolate: aspen_ci::executor::isolation_works(), vm: None },
        cache: None,
    };
    let isolated = config.exec.isolate;
    let stop = tokio_util::sync::CancellationToken::new();
    let worker = {
        let client = client.clone();
        let stop = stop.clone();
        tokio::spawn(async move { aspen_ci::worker::run(&client, config, stop).await })
    };

    let id = format!("{:06x}", rand::random::<u32>() & 0xffffff);
    let setup = async |name: &str, pipeline: String| -> anyhow::Result<std::path::PathBuf> {
        forge.create_repo(name, "aspen bench ci", "main").await?;
        ci.enable(name).await?;
        let dir = scratch.join(name.replace('/', "-"));
        std::fs::create_dir_all(dir.join(".aspen"))?;
        std::fs::write(dir.join(".aspen/ci.ncl"), pipeline)?;
        git(&dir, &["init", "-q", "-b", "main"], &env).await?;
        git(&dir, &["remote", "add", "origin", &format!("aspen://default/{name}")], &env).await?;
        Ok(dir)
    };

    // Push to job start.
    let latency_repo = format!("bench/ci-latency-{id}");
    let dir = setup(&latency_repo, "{ jobs = { one = { executor = 'shell, run = \"true\" } } }\n".into()).await?;
    let mut to_start = Vec::new();
    let mut to_run = Vec::new();
    let mut last = 0;
    for round in 0..args.rounds {
        let t0 = commit_and_push(&dir, &env, round).await?;
        let run = wait_run(&ci, &latency_repo, last, |r| r.jobs.iter().any(|(_, j)| j.started_ms.is_some())).await?;
        last = run.number;
        to_run.push(run.run.created_ms.saturating_sub(t0));
        to_start.push(run.jobs[0].1.started_ms.unwrap_or(t0).saturating_sub(t0));
        wait_run(&ci, &latency_repo, last - 1, |r| r.run.state.is_final()).await?;
    }

    // Throughput.
    let many_repo = format!("bench/ci-many-{id}");
    let jobs: String =
        (0..args.jobs).map(|i| format!("    j{i:03} = {{ executor = 'shell, run = \"true\" }},\n")).collect();
    let dir = setup(&many_repo, format!("{{\n  jobs = {{\n{jobs}  }},\n}}\n")).await?;
    let t0 = commit_and_push(&dir, &env, 0).await?;
    let run = wait_run(&ci, &many_repo, 0, |r| r.run.state.is_final()).await?;
    stop.cancel();
    let _ = worker.await;
    if run.run.state != State::Success {
        bail!("the throughput run ended {}: {:?}", run.run.state.name(), run.run.message);
    }
    let end = run.run.finished_ms.unwrap_or_else(now_ms);
    let wall = end.saturating_sub(t0) as f64 / 1000.0;
    let claim: Vec<u64> =
        run.jobs.iter().filter_map(|(_, j)| Some(j.started_ms?.saturating_sub(j.queued_ms?))).collect();
    let body: Vec<u64> =
        run.jobs.iter().filter_map(|(_, j)| Some(j.finished_ms?.saturating_sub(j.started_ms?))).collect();

    println!(
        "worker in this process: capacity {}, shell executor, isolation {}",
        args.capacity,
        if isolated { "on (unshare)" } else { "off" }
    );
    println!("push to run created, p50 over {} pushes:  {} ms", args.rounds, p50(to_run));
    println!("push to job start, p50 over {} pushes:    {} ms (shell)", args.rounds, p50(to_start));
    println!(
        "{} trivial jobs, push to run end:           {wall:.1} s = {:.1} jobs/s",
        args.jobs,
        args.jobs as f64 / wall
    );
    println!(
        "per job, queued to started p50:           {} ms (waiting for one of the worker's slots, then the claim)",
        p50(claim)
    );
    println!("per job, started to finished p50:         {} ms (checkout, `true`, log, result)", p50(body));
    Ok(())
}
