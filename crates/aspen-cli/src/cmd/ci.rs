//! `aspen ci`: runs of repositories' pipelines (the ci app), and the worker that runs jobs.

use std::io::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use aspen_ci::CiClient;
use aspen_ci::executor::{ExecutorSettings, VmSettings};
use aspen_ci::protocol::RunInfo;
use aspen_ci::records::{self, State, Trigger};
use aspen_ci::worker::{Checkout, WorkerConfig};
use aspen_ci_pipeline::ExecutorKind;
use aspen_client::Client;
use aspen_vm::doctor::{HypervisorChoice, default_image_dir, pick_hypervisor};
use serde_json::json;

use crate::context::{Ctx, ExitWith};

#[derive(Debug, clap::Subcommand)]
pub enum CiCommand {
    /// Start runs on pushes to a forge repository (needs ci:admin).
    Enable { repo: String },
    /// Stop starting runs for a repository.
    Disable { repo: String },
    /// Runs, newest first.
    Runs {
        #[arg(long)]
        repo: Option<String>,
        /// Only runs numbered below this.
        #[arg(long)]
        before: Option<u64>,
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// A run and its jobs.
    Show { run: u64 },
    /// Wait until a run ends; exits 0 when it succeeded, 1 otherwise.
    Wait {
        run: u64,
        /// Give up after this many seconds (exit 124).
        #[arg(long, default_value_t = 3600)]
        within_secs: u64,
    },
    /// A job's log (its latest attempt).
    Logs {
        run: u64,
        job: String,
        /// Keep printing as the job runs, until it ends.
        #[arg(long, short)]
        follow: bool,
    },
    /// Cancel a run: jobs not started are cancelled, running ones are killed.
    Cancel { run: u64 },
    /// A new run of the same commit that runs again what did not succeed (or JOB, and what
    /// failed after it).
    Retry { run: u64, job: Option<String> },
    /// Start a run of a branch or tag as it is now.
    Run {
        #[arg(long)]
        repo: String,
        #[arg(long = "ref", default_value = "main")]
        ref_name: String,
        /// Run every job, even those whose inputs match an earlier success.
        #[arg(long)]
        force: bool,
    },
    /// Check a pipeline file against Aspen's contract, here, without a cluster.
    Validate {
        #[arg(default_value = ".aspen/ci.ncl")]
        file: PathBuf,
    },
    /// Print the Nickel contract pipelines are checked against.
    Contract,
    /// Run a worker: claim jobs this machine can run and run them, until SIGTERM.
    Worker(WorkerArgs),
    /// Trust patches signed by KEY (`aspen identity show` prints yours): their runs get
    /// secrets and run every executor. Without KEY, list the trusted keys. Needs ci:admin.
    Trust {
        repo: String,
        key: Option<String>,
        /// Stop trusting KEY.
        #[arg(long, requires = "key")]
        revoke: bool,
    },
    /// Delete finished runs past the newest --keep of a repository (or of all), with their
    /// jobs, logs and artifacts; runs a kept run reuses stay (needs ci:admin).
    Prune {
        #[arg(long)]
        repo: Option<String>,
        #[arg(long)]
        keep: u32,
    },
    /// Job secrets: stored sealed with the cluster's secrets key, given as environment
    /// variables to the trusted jobs that name them, masked in logs. Needs ci:secrets.
    #[command(subcommand)]
    Secret(SecretCommand),
}

#[derive(Debug, clap::Subcommand)]
pub enum SecretCommand {
    /// Set a secret from --value-file, or from standard input (one trailing newline dropped).
    Set {
        repo: String,
        name: String,
        #[arg(long)]
        value_file: Option<PathBuf>,
    },
    /// The names of a repository's secrets.
    List {
        repo: String,
    },
    Delete {
        repo: String,
        name: String,
    },
}

#[derive(Debug, clap::Args)]
pub struct WorkerArgs {
    /// Unique among the pool's live workers [default: the host name and a random suffix].
    #[arg(long, env = "ASPEN_CI_WORKER_ID")]
    id: Option<String>,
    /// Jobs at once.
    #[arg(long, env = "ASPEN_CI_CAPACITY", default_value_t = 2)]
    capacity: usize,
    /// Executors this worker offers, comma-separated: shell, nix, vm.
    #[arg(long, env = "ASPEN_CI_EXECUTORS", value_delimiter = ',', default_value = "shell,nix")]
    executors: Vec<String>,
    /// The most cpus one job may ask for [default: this machine's].
    #[arg(long, env = "ASPEN_CI_MAX_CPUS")]
    max_cpus: Option<u32>,
    /// The most memory one job may ask for, in MiB.
    #[arg(long, env = "ASPEN_CI_MAX_MEMORY_MIB", default_value_t = 8192)]
    max_memory_mib: u64,
    /// Where workspaces are made.
    #[arg(long, env = "ASPEN_CI_WORK_DIR", default_value = "/tmp/aspen-ci")]
    work_dir: PathBuf,
    /// Seconds after this worker dies before its jobs go to another worker.
    #[arg(long, env = "ASPEN_CI_SESSION_TTL_SECS", default_value_t = 15)]
    session_ttl_secs: u64,
    /// The cache `cache_push` jobs push their outputs to.
    #[arg(long, env = "ASPEN_CI_CACHE")]
    cache: Option<String>,
    /// Run shell jobs without new namespaces even where `unshare` works.
    #[arg(long, env = "ASPEN_CI_NO_ISOLATION")]
    no_isolation: bool,
    /// The guest image directory for vm jobs [default: ~/.cache/aspen/vm-image].
    #[arg(long, env = "ASPEN_CI_VM_IMAGE")]
    vm_image: Option<PathBuf>,
    /// The hypervisor for vm jobs: auto, qemu, qemu-tcg, cloud-hypervisor.
    #[arg(long, env = "ASPEN_CI_HYPERVISOR", default_value = "auto")]
    hypervisor: HypervisorChoice,
    /// The git program.
    #[arg(long, env = "ASPEN_CI_GIT", default_value = "git")]
    git: String,
    /// Variables of this worker's environment that jobs get, comma-separated (jobs start
    /// from a clean environment: PATH, HOME and TMPDIR, the job's `env`, its secrets and
    /// the CI variables). For example CARGO_HOME,RUSTUP_HOME for a rustup toolchain.
    #[arg(long, env = "ASPEN_CI_PASS_ENV", value_delimiter = ',')]
    pass_env: Vec<String>,
    /// Seconds a pipeline's evaluation may take (in a child process, killed at the limit).
    #[arg(long, env = "ASPEN_CI_EVAL_LIMIT_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    eval_limit_secs: u64,
}

pub async fn run(ctx: &Ctx, cmd: CiCommand) -> anyhow::Result<()> {
    match cmd {
        CiCommand::Validate { file } => validate(ctx, &file),
        CiCommand::Contract => {
            print!("{}", aspen_ci_pipeline::CONTRACT);
            Ok(())
        }
        CiCommand::Worker(args) => worker(ctx, args).await,
        cmd => ctx.with_client(async |client| run_with(ctx, client, cmd).await).await,
    }
}

fn validate(ctx: &Ctx, file: &std::path::Path) -> anyhow::Result<()> {
    let source = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    match aspen_ci_pipeline::evaluate(&file.display().to_string(), &source) {
        Ok(pipeline) => {
            if ctx.json {
                println!("{}", serde_json::to_string_pretty(&pipeline)?);
            } else {
                let order = aspen_ci_pipeline::topological_order(&pipeline);
                println!("{}: {} jobs, in order: {}", file.display(), order.len(), order.join(", "));
            }
            Ok(())
        }
        Err(e) => {
            eprintln!("{e}");
            Err(ExitWith(1).into())
        }
    }
}

async fn run_with(ctx: &Ctx, client: &Client, cmd: CiCommand) -> anyhow::Result<()> {
    let ci = CiClient::new(client);
    match cmd {
        CiCommand::Enable { repo } => {
            ci.enable(&repo).await?;
            println!("pushes to {repo} start runs");
        }
        CiCommand::Disable { repo } => {
            ci.disable(&repo).await?;
            println!("pushes to {repo} start no runs");
        }
        CiCommand::Runs { repo, before, limit } => {
            let runs = ci.runs(repo.as_deref(), before, limit).await?;
            if ctx.json {
                println!("{}", serde_json::to_string(&runs.iter().map(run_json).collect::<Vec<_>>())?);
            } else {
                for info in &runs {
                    println!("{}", run_line(info));
                }
            }
        }
        CiCommand::Show { run } => print_run(ctx, &ci.show(run).await?)?,
        CiCommand::Wait { run, within_secs: timeout } => {
            let deadline = Instant::now() + Duration::from_secs(timeout);
            let info = loop {
                let info = ci.show(run).await?;
                if info.run.state.is_final() {
                    break info;
                }
                if Instant::now() > deadline {
                    eprintln!("run {run} is still {} after {timeout} s", info.run.state.name());
                    return Err(ExitWith(124).into());
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            };
            print_run(ctx, &info)?;
            if info.run.state != State::Success {
                return Err(ExitWith(1).into());
            }
        }
        CiCommand::Logs { run, job, follow } => {
            if follow {
                let (state, message) = ci
                    .follow_log(run, &job, |bytes| {
                        let mut out = std::io::stdout().lock();
                        let _ = out.write_all(bytes);
                        let _ = out.flush();
                    })
                    .await?;
                eprintln!("job {job} {}{}", state.name(), message.map(|m| format!(": {m}")).unwrap_or_default());
                if state != State::Success {
                    return Err(ExitWith(1).into());
                }
            } else {
                std::io::stdout().write_all(&ci.read_log(run, &job).await?)?;
            }
        }
        CiCommand::Cancel { run } => {
            let info = ci.cancel(run).await?;
            println!("run {run}: cancel requested ({})", info.run.state.name());
        }
        CiCommand::Retry { run, job } => {
            let new = ci.retry(run, job.as_deref()).await?;
            if ctx.json {
                println!("{}", json!({ "run": new }));
            } else {
                println!("run {new} retries run {run}");
            }
        }
        CiCommand::Run { repo, ref_name, force } => {
            let new = ci.trigger(&repo, &ref_name, force).await?;
            if ctx.json {
                println!("{}", json!({ "run": new }));
            } else {
                println!("run {new} started");
            }
        }
        CiCommand::Trust { repo, key: None, .. } => print_names(ctx, "trusted", &ci.trusted(&repo).await?)?,
        CiCommand::Trust { repo, key: Some(key), revoke } => {
            print_names(ctx, "trusted", &ci.trust(&repo, &key, !revoke).await?)?
        }
        CiCommand::Secret(SecretCommand::Set { repo, name, value_file }) => {
            let value = match value_file {
                Some(path) => std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?,
                None => {
                    let mut value = Vec::new();
                    std::io::Read::read_to_end(&mut std::io::stdin(), &mut value).context("reading standard input")?;
                    if value.ends_with(b"\n") {
                        value.pop();
                    }
                    value
                }
            };
            print_names(ctx, "secrets", &ci.set_secret(&repo, &name, &value).await?)?
        }
        CiCommand::Secret(SecretCommand::List { repo }) => print_names(ctx, "secrets", &ci.secrets(&repo).await?)?,
        CiCommand::Secret(SecretCommand::Delete { repo, name }) => {
            print_names(ctx, "secrets", &ci.delete_secret(&repo, &name).await?)?
        }
        CiCommand::Prune { repo, keep } => {
            let report = ci.prune(repo.as_deref(), keep).await?;
            if ctx.json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                println!("{} runs and {} reuse records deleted", report.runs, report.reuse_records);
            }
        }
        CiCommand::Validate { .. } | CiCommand::Contract | CiCommand::Worker(_) => unreachable!("handled above"),
    }
    Ok(())
}

fn print_names(ctx: &Ctx, what: &str, names: &[String]) -> anyhow::Result<()> {
    if ctx.json {
        println!("{}", json!({ what: names }));
    } else {
        for name in names {
            println!("{name}");
        }
    }
    Ok(())
}

fn trigger_text(trigger: &Trigger) -> String {
    match trigger {
        Trigger::Push { pusher, .. } => format!("push by {}", &pusher[..pusher.len().min(12)]),
        Trigger::Patch { patch, revision } => format!("patch {} revision {revision}", &patch[..patch.len().min(12)]),
        Trigger::Manual { by } => format!("manual by {}", &by[..by.len().min(12)]),
        Trigger::Retry { of, .. } => format!("retry of run {of}"),
    }
}

fn run_line(info: &RunInfo) -> String {
    let r = &info.run;
    let branch = r.ref_name.strip_prefix("refs/heads/").unwrap_or(&r.ref_name);
    format!(
        "{:>6}  {:<10} {} {} {}  {}",
        info.number,
        r.state.name(),
        r.repo,
        branch,
        &records::hex(&r.commit)[..12],
        trigger_text(&r.trigger)
    )
}

fn run_json(info: &RunInfo) -> serde_json::Value {
    let r = &info.run;
    json!({
        "run": info.number,
        "repo": r.repo,
        "ref": r.ref_name,
        "commit": records::hex(&r.commit),
        "state": r.state.name(),
        "message": r.message,
        "trigger": trigger_text(&r.trigger),
        "created_ms": r.created_ms,
        "finished_ms": r.finished_ms,
        "forced": r.forced,
        "jobs": info.jobs.iter().map(|(name, j)| json!({
            "name": name,
            "state": j.state.name(),
            "attempt": j.attempt,
            "worker": j.worker,
            "exit_code": j.exit_code,
            "message": j.message,
            "needs": j.needs,
            "started_ms": j.started_ms,
            "finished_ms": j.finished_ms,
            "log_bytes": j.log_bytes,
            "reused_from": j.reused_from,
            "artifacts": j.artifacts.iter().map(|a| json!({"path": a.path, "blob": records::hex(&a.blob), "size": a.size})).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

fn print_run(ctx: &Ctx, info: &RunInfo) -> anyhow::Result<()> {
    if ctx.json {
        println!("{}", serde_json::to_string(&run_json(info))?);
        return Ok(());
    }
    println!("{}", run_line(info));
    if let Some(message) = &info.run.message {
        for line in message.lines() {
            println!("        {line}");
        }
    }
    for (name, job) in &info.jobs {
        let took = match (job.started_ms, job.finished_ms) {
            (Some(s), Some(f)) => format!(" {:.1}s", f.saturating_sub(s) as f64 / 1000.0),
            _ => String::new(),
        };
        println!(
            "        {name:<20} {:<10}{took}{}{}",
            job.state.name(),
            job.message.as_ref().map(|m| format!("  {m}")).unwrap_or_default(),
            if job.attempt > 1 { format!("  (attempt {})", job.attempt) } else { String::new() }
        );
    }
    Ok(())
}

fn parse_executor(name: &str) -> anyhow::Result<ExecutorKind> {
    Ok(match name.trim() {
        "shell" => ExecutorKind::Shell,
        "nix" => ExecutorKind::Nix,
        "vm" => ExecutorKind::Vm,
        other => bail!("unknown executor {other:?}: expected shell, nix or vm"),
    })
}

async fn worker(ctx: &Ctx, args: WorkerArgs) -> anyhow::Result<()> {
    let executors = args.executors.iter().map(|e| parse_executor(e)).collect::<anyhow::Result<Vec<_>>>()?;
    let vm = if executors.contains(&ExecutorKind::Vm) {
        let image_dir = args.vm_image.clone().unwrap_or_else(default_image_dir);
        let hypervisor = pick_hypervisor(args.hypervisor).map_err(anyhow::Error::msg)?;
        Some(VmSettings { image_dir, hypervisor })
    } else {
        None
    };
    let isolate = !args.no_isolation && aspen_ci::executor::isolation_works();
    let ticket = ctx.ticket()?;
    let token = ctx.token_for(&ticket)?;
    let helper_dir = std::env::current_exe().ok().and_then(|e| e.parent().map(|d| d.to_path_buf()));
    let id = args.id.unwrap_or_else(|| {
        let host =
            std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_string()).unwrap_or_else(|_| "worker".into());
        format!("{host}-{:04x}", rand::random::<u16>())
    });
    let cpus = std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1);
    let config = WorkerConfig {
        id: id.clone(),
        capacity: args.capacity,
        executors,
        max_cpus: args.max_cpus.unwrap_or(cpus),
        max_memory_mib: args.max_memory_mib,
        work_dir: args.work_dir,
        session_ttl: Duration::from_secs(args.session_ttl_secs.max(3)),
        checkout: Checkout { git: args.git, helper_dir, ticket: ticket.encode(), token: token.map(|t| t.encode()) },
        exec: ExecutorSettings { isolate, vm },
        cache: args.cache,
        pass_env: args.pass_env.into_iter().filter(|v| !v.is_empty()).collect(),
        // This very binary evaluates pipelines (`aspen --json ci validate FILE`), each in a
        // child process of its own.
        evaluator: Some(vec![
            std::env::current_exe().context("finding this program, which evaluates pipelines")?.display().to_string(),
            "--json".into(),
            "ci".into(),
            "validate".into(),
        ]),
        eval_limit: Duration::from_secs(args.eval_limit_secs),
    };
    eprintln!(
        "ci worker {id}: {} job(s) at once, executors {:?}, shell isolation {}",
        config.capacity,
        config.executors,
        if isolate { "on (unshare)" } else { "off" }
    );
    let client = ctx.client().await?;
    let stop = tokio_util::sync::CancellationToken::new();
    {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            stop.cancel();
        });
    }
    aspen_ci::worker::run(&client, config, stop).await?;
    eprintln!("ci worker {id} stopped");
    Ok(())
}
