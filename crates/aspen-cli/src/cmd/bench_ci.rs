//! `aspen bench ci`: CI's own costs on a cluster, with a worker in this process.
//!
//! - push to job start: a one-job shell pipeline, a new tree each round (so nothing is
//!   reused), from before `git push` to the job's `started_ms`;
//! - throughput: one push of a pipeline of JOBS independent `true` jobs, from before the
//!   push to the run's end;
//! - scheduler overhead: per job, queued to started (the claim) and started to finished
//!   (checkout and `true`), p50;
//! - push to job start of `vm` jobs: a one-job vm pipeline whose script writes a file named
//!   after its commit into the shared workspace, from before `git push` to the job's
//!   `started_ms` (the worker took it), and to the moment that file appears on the host (the
//!   guest booted, mounted the workspace and ran the job's command). Skipped, with the reason
//!   printed, when there is no guest image or no hypervisor.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use aspen_ci::CiClient;
use aspen_ci::executor::{ExecutorSettings, VmSettings};
use aspen_ci::protocol::RunInfo;
use aspen_ci::records::State;
use aspen_ci::worker::{Checkout, WorkerConfig};
use aspen_ci_pipeline::ExecutorKind;
use aspen_client::Client;
use aspen_forge::ForgeClient;
use aspen_net::ClusterTicket;
use aspen_vm::doctor::{HypervisorChoice, default_image_dir, pick_hypervisor};
use aspen_vm::image::GuestImage;

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
    /// Pushes timed for push-to-job-start of `vm` jobs (0 skips them).
    #[arg(long, default_value_t = 3)]
    pub vm_rounds: usize,
    /// The guest image directory for the vm jobs [default: ~/.cache/aspen/vm-image].
    #[arg(long)]
    pub vm_image: Option<PathBuf>,
    /// The hypervisor for the vm jobs: auto, qemu, qemu-tcg, cloud-hypervisor (TCG by default:
    /// the same figure on every machine, and the one CI's vm test uses).
    #[arg(long, default_value = "qemu-tcg")]
    pub hypervisor: HypervisorChoice,
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

/// The microVM settings for the vm rounds, or why there are none.
fn vm_settings(args: &BenchCiArgs) -> Result<VmSettings, String> {
    if args.vm_rounds == 0 {
        return Err("--vm-rounds 0".into());
    }
    let image_dir = args.vm_image.clone().unwrap_or_else(default_image_dir);
    if !GuestImage::in_dir(&image_dir).exists() {
        return Err(format!(
            "no guest image in {} (build one with `aspen vm image build`, or pass --vm-image)",
            image_dir.display()
        ));
    }
    let hypervisor = pick_hypervisor(args.hypervisor)?;
    Ok(VmSettings { image_dir, hypervisor })
}

/// Whether a workspace under `work_dir` holds `name` (written there by a guest).
fn in_a_workspace(work_dir: &Path, name: &str) -> bool {
    std::fs::read_dir(work_dir).is_ok_and(|dir| dir.flatten().any(|e| e.path().join("src").join(name).exists()))
}

async fn head_commit(dir: &Path) -> anyhow::Result<String> {
    let out = tokio::process::Command::new("git").args(["rev-parse", "HEAD"]).current_dir(dir).output().await?;
    if !out.status.success() {
        bail!("git rev-parse HEAD failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8(out.stdout)?.trim().to_string())
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

    let vm = vm_settings(args);
    let mut executors = vec![ExecutorKind::Shell];
    if vm.is_ok() {
        executors.push(ExecutorKind::Vm);
    }
    let work_dir = scratch.join("worker");
    let config = WorkerConfig {
        id: format!("bench-{:04x}", rand::random::<u16>()),
        capacity: args.capacity,
        executors,
        max_cpus: 64,
        max_memory_mib: 1 << 20,
        work_dir: work_dir.clone(),
        session_ttl: Duration::from_secs(15),
        checkout: Checkout {
            git: "git".into(),
            helper_dir: Some(helper_dir),
            ticket: aspen_ticket.encode(),
            token: token.map(|t| t.encode()),
        },
        exec: ExecutorSettings { isolate: aspen_ci::executor::isolation_works(), vm: vm.clone().ok() },
        cache: None,
        pass_env: Vec::new(),
        evaluator: None,
        eval_limit: Duration::from_secs(30),
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
    if run.run.state != State::Success {
        stop.cancel();
        bail!("the throughput run ended {}: {:?}", run.run.state.name(), run.run.message);
    }

    // Push to job start of vm jobs: the worker's claim, and the guest running the command. A
    // failure here is told in the vm rows; the shell figures stand.
    let vm_figures: Result<(Vec<u64>, Vec<u64>), String> = match &vm {
        Err(why) => Err(format!("skipped: {why}")),
        Ok(_) => {
            let rounds = async {
                let vm_repo = format!("bench/ci-vm-{id}");
                let pipeline = "{ jobs = { guest = { executor = 'vm, \
                                run = \"touch /workspace/started-$ASPEN_CI_COMMIT\", \
                                resources = { cpus = 1, memory_mib = 256 }, timeout_secs = 180 } } }\n";
                let dir = setup(&vm_repo, pipeline.into()).await?;
                let (mut to_start, mut to_command) = (Vec::new(), Vec::new());
                let mut last = 0;
                for round in 0..args.vm_rounds {
                    let t0 = commit_and_push(&dir, &env, round).await?;
                    let marker = format!("started-{}", head_commit(&dir).await?);
                    let deadline = std::time::Instant::now() + Duration::from_secs(600);
                    let mut polls = 0u64;
                    let seen = loop {
                        if in_a_workspace(&work_dir, &marker) {
                            break now_ms();
                        }
                        polls += 1;
                        if polls.is_multiple_of(200)
                            && let Some(r) =
                                ci.runs(Some(&vm_repo), None, 1).await?.into_iter().find(|r| r.number > last)
                            && r.run.state.is_final()
                        {
                            let log = ci.read_log(r.number, "guest").await.unwrap_or_default();
                            bail!(
                                "vm run {} ended {} before its guest ran the job:\n{}",
                                r.number,
                                r.run.state.name(),
                                String::from_utf8_lossy(&log)
                            );
                        }
                        if std::time::Instant::now() > deadline {
                            bail!("no guest of {vm_repo} ran its job within 600 s");
                        }
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    };
                    let run = wait_run(&ci, &vm_repo, last, |r| r.run.state.is_final()).await?;
                    last = run.number;
                    if run.run.state != State::Success {
                        bail!("vm run {} ended {}: {:?}", run.number, run.run.state.name(), run.jobs[0].1.message);
                    }
                    to_start.push(run.jobs[0].1.started_ms.unwrap_or(t0).saturating_sub(t0));
                    to_command.push(seen.saturating_sub(t0));
                }
                anyhow::Ok((to_start, to_command))
            };
            rounds.await.map_err(|e| format!("failed: {e:#}"))
        }
    };
    stop.cancel();
    let _ = worker.await;
    let end = run.run.finished_ms.unwrap_or_else(now_ms);
    let wall = end.saturating_sub(t0) as f64 / 1000.0;
    let claim: Vec<u64> =
        run.jobs.iter().filter_map(|(_, j)| Some(j.started_ms?.saturating_sub(j.queued_ms?))).collect();
    let body: Vec<u64> =
        run.jobs.iter().filter_map(|(_, j)| Some(j.finished_ms?.saturating_sub(j.started_ms?))).collect();

    println!(
        "worker in this process: capacity {}, {} executor{}, isolation {}",
        args.capacity,
        if vm.is_ok() { "shell and vm" } else { "shell" },
        if vm.is_ok() { "s" } else { "" },
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
    match vm_figures {
        Ok((to_start, to_command)) => {
            let name = vm.as_ref().map(|vm| vm.hypervisor.name()).unwrap_or("?");
            println!(
                "push to job start, p50 over {} pushes:    {} ms (vm, {name}: the worker took it)",
                args.vm_rounds,
                p50(to_start)
            );
            println!(
                "push to guest command, p50 over {} pushes: {} ms (vm, {name}: the job's command wrote to its \
                 workspace, seen on the host)",
                args.vm_rounds,
                p50(to_command)
            );
        }
        Err(why) => println!("push to job start (vm):                   {why}"),
    }
    Ok(())
}
