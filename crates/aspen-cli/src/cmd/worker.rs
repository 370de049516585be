//! `aspen worker`: submit tasks to a pool, run a worker that runs a command per task, and
//! list a pool's workers and tasks.
//!
//! `worker run` registers on a session lease and claims tasks up to its capacity. Each task's
//! command gets the payload on stdin (and in `$ASPEN_TASK_PAYLOAD` when it is UTF-8), its id in
//! `$ASPEN_TASK_ID`. Exit status 0 completes the task; any other status gives it back to the
//! pool for another try. If this process dies, its lease ends and its tasks go to other workers.

use std::io::{IsTerminal, Read};
use std::process::ExitStatus;
use std::time::Duration;

use anyhow::Context as _;
use aspen_client::Client;
use aspen_coord::{Completed, MAX_TASK_PAYLOAD_BYTES, MAX_WORKER_CAPACITY, Session, Submitted, Task, WorkPool, Worker};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::task::JoinSet;

use crate::cmd::coord::parse_name;
use crate::context::Ctx;
use crate::duration::parse_duration;
use crate::output::{self, text};

/// Failures in a row of claiming work (the cluster unreachable) before `worker run` gives up.
const CLAIM_FAILURES: u32 = 10;

#[derive(Debug, clap::Subcommand)]
pub enum WorkerCommand {
    /// Add a task to a pool. The payload is the argument, or stdin when omitted or `-`.
    Submit {
        #[arg(value_parser = parse_name)]
        pool: String,
        #[arg(value_parser = parse_name)]
        task_id: String,
        payload: Option<String>,
    },
    /// Work on a pool's tasks: run the command (after `--`) once per claimed task, up to
    /// --capacity at once, until Ctrl-C (or --max-tasks completions).
    Run {
        #[arg(value_parser = parse_name)]
        pool: String,
        /// This worker's id, unique among the pool's live workers.
        #[arg(long, value_parser = parse_name)]
        id: String,
        /// Most tasks run at once.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=MAX_WORKER_CAPACITY as u64))]
        capacity: u64,
        /// Session lease TTL: how soon this worker's tasks go to others if it dies.
        #[arg(long, value_parser = parse_duration, default_value = "10s")]
        ttl: Duration,
        /// Stop after completing this many tasks.
        #[arg(long, value_name = "N")]
        max_tasks: Option<u64>,
        /// The command run per task.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// List a pool's workers (with capacity and load) and pending tasks (with assignee).
    List {
        #[arg(value_parser = parse_name)]
        pool: String,
    },
}

pub async fn run(ctx: &Ctx, cmd: WorkerCommand) -> anyhow::Result<()> {
    match cmd {
        WorkerCommand::Submit { pool, task_id, payload } => {
            // Read stdin before connecting: a person typing the payload holds no connection.
            let payload = match payload {
                Some(p) if p != "-" => p.into_bytes(),
                _ => read_stdin()?,
            };
            submit(ctx, &pool, &task_id, payload).await
        }
        WorkerCommand::Run { pool, id, capacity, ttl, max_tasks, command } => {
            let capacity = usize::try_from(capacity).context("--capacity does not fit this machine's word")?;
            ctx.with_client(async |client| work(client, &pool, &id, capacity, ttl, max_tasks, &command).await).await
        }
        WorkerCommand::List { pool } => {
            ctx.with_client(async |client| list(ctx, &WorkPool::new(client, &pool)?).await).await
        }
    }
}

fn read_stdin() -> anyhow::Result<Vec<u8>> {
    let mut stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprintln!("reading the payload from stdin; end it with Ctrl-D");
    }
    let mut buf = Vec::new();
    let limit = u64::try_from(MAX_TASK_PAYLOAD_BYTES + 1).unwrap_or(u64::MAX);
    stdin.by_ref().take(limit).read_to_end(&mut buf).context("cannot read the payload from stdin")?;
    Ok(buf)
}

async fn submit(ctx: &Ctx, pool: &str, task_id: &str, payload: Vec<u8>) -> anyhow::Result<()> {
    let submitted = ctx.with_client(async |client| Ok(WorkPool::new(client, pool)?.submit(task_id, payload).await?));
    let state = match submitted.await? {
        Submitted::Added => "added",
        Submitted::AlreadyPending => "already pending",
        Submitted::AlreadyCompleted => "already completed",
    };
    if ctx.json {
        output::print_json(&json!({"pool": pool, "task": task_id, "state": state}))?;
    } else {
        output::print_line(&format!("task {task_id} {state}"))?;
    }
    Ok(())
}

async fn list(ctx: &Ctx, pool: &WorkPool) -> anyhow::Result<()> {
    let workers = pool.list_workers().await?;
    let tasks = pool.list_tasks().await?;
    if ctx.json {
        let workers: Vec<Value> = workers
            .iter()
            .map(|w| json!({"id": w.id, "capacity": w.capacity, "load": w.load, "lease": w.lease.map(|l| l.0)}))
            .collect();
        let tasks: Vec<Value> = tasks
            .iter()
            .map(|t| {
                let mut v = output::bytes_object("payload", &t.payload);
                v.insert("id".into(), json!(t.id));
                v.insert("assignee".into(), json!(t.assignee));
                v.insert("submitted_revision".into(), json!(t.submitted_revision));
                Value::Object(v)
            })
            .collect();
        output::print_json(&json!({"pool": pool.name(), "workers": workers, "tasks": tasks}))?;
    } else {
        for w in &workers {
            output::print_line(&format!("worker {} capacity={} load={}", w.id, w.capacity, w.load))?;
        }
        for t in &tasks {
            let assignee = t.assignee.as_deref().unwrap_or("-");
            output::print_line(&format!("task {} assignee={assignee} payload={}", t.id, text(&t.payload)))?;
        }
    }
    Ok(())
}

/// What one task's command came to.
struct Ran {
    task: Task,
    status: std::io::Result<ExitStatus>,
}

async fn work(
    client: &Client,
    pool: &str,
    id: &str,
    capacity: usize,
    ttl: Duration,
    max_tasks: Option<u64>,
    command: &[String],
) -> anyhow::Result<()> {
    let mut interrupts = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .context("cannot listen for Ctrl-C")?;
    let session = Session::new(client.clone(), ttl).await.context("cannot start a worker session")?;
    let result = async {
        let worker = Worker::register(&session, pool, id, capacity).await?;
        let mut running: JoinSet<Ran> = JoinSet::new();
        let mut completed = 0u64;
        let mut failures = 0u32;
        // The claim in flight is never cancelled mid-way (a claim made but not seen would sit
        // idle until our lease ends); it is only dropped when we stop.
        let mut claim = Box::pin(worker.next_task());
        loop {
            tokio::select! {
                _ = interrupts.recv() => return Ok(()),
                claimed = &mut claim => {
                    claim = Box::pin(worker.next_task());
                    match claimed {
                        Ok(task) => {
                            failures = 0;
                            running.spawn(run_task(task, command.to_vec(), worker.id().to_string(), pool.to_string()));
                        }
                        Err(e @ aspen_coord::CoordError::SessionEnded) => return Err(e.into()),
                        Err(e) => {
                            failures += 1;
                            if failures >= CLAIM_FAILURES {
                                return Err(anyhow::Error::from(e).context("cannot claim work"));
                            }
                            eprintln!("warning: claiming work failed, retrying: {e}");
                            tokio::time::sleep(Duration::from_millis(200 << failures.min(5))).await;
                        }
                    }
                }
                Some(ran) = running.join_next() => {
                    let Ran { task, status } = ran.context("a task runner panicked")?;
                    if finish(&worker, &task, status).await? {
                        completed += 1;
                        if max_tasks.is_some_and(|max| completed >= max) {
                            return Ok(());
                        }
                    }
                }
            }
        }
    }
    .await;
    // Revoking the lease gives back every task still claimed.
    let _ = session.close().await;
    result
}

/// Runs the command for one task, payload on stdin.
async fn run_task(task: Task, command: Vec<String>, worker: String, pool: String) -> Ran {
    let status = async {
        let (program, args) = command.split_first().ok_or_else(|| std::io::Error::other("no command"))?;
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(args)
            .env("ASPEN_TASK_ID", &task.id)
            .env("ASPEN_WORKER_ID", worker)
            .env("ASPEN_POOL", pool)
            .stdin(std::process::Stdio::piped())
            // If this worker stops, its claims end with its lease: the task is someone else's.
            .kill_on_drop(true);
        // The environment cannot hold a NUL byte; such payloads come on stdin only.
        if let Ok(payload) = std::str::from_utf8(&task.payload)
            && !payload.contains('\0')
        {
            cmd.env("ASPEN_TASK_PAYLOAD", payload);
        }
        let mut child = cmd.spawn()?;
        if let Some(mut stdin) = child.stdin.take() {
            // A command that does not read its payload may close stdin early: not an error.
            let _ = stdin.write_all(&task.payload).await;
        }
        child.wait().await
    }
    .await;
    Ran { task, status }
}

/// Completes a task whose command succeeded, or gives it back; whether it was completed.
async fn finish(worker: &Worker, task: &Task, status: std::io::Result<ExitStatus>) -> anyhow::Result<bool> {
    match status {
        Ok(status) if status.success() => match worker.complete(task).await? {
            Completed::Done => {
                eprintln!("completed task {}", task.id);
                Ok(true)
            }
            Completed::Lost | Completed::Refused => {
                eprintln!("warning: task {} ran, but this worker's claim had ended; another worker has it", task.id);
                Ok(false)
            }
        },
        other => {
            let why = match other {
                Ok(status) => format!("exited with {status}"),
                Err(e) => format!("could not run: {e}"),
            };
            eprintln!("warning: task {} {why}; giving it back to the pool", task.id);
            worker.release(task).await?;
            Ok(false)
        }
    }
}
