//! The CI worker: a client process (`aspen ci worker`) that registers in the work pool on a
//! session lease, claims the tasks it can run, and records exactly one result per job.
//!
//! - **Matching.** A task says what it needs (executor, cpus, memory); the worker's claim is
//!   made only for tasks it can run ([`aspen_coord::Worker::next_task_where`]), so a job
//!   reaches only matching workers, and exactly one of them.
//! - **Concurrency.** At most `capacity` claims at once (the pool counts claims on the lease).
//! - **One result.** Every write about a job (running, its log, its result) is fenced by the
//!   claim: a worker whose lease ended writes nothing more, and the result goes in the same
//!   transaction as the task's completion.
//! - **Never twice at once.** A worker that cannot renew its lease within the TTL (cut off,
//!   paused) kills its jobs before the leader can expire the lease and give the task to
//!   another: it counts the TTL from before each renewal it sent.
//! - **Dead workers.** Their claims end with their lease; another worker claims the task
//!   and runs the job again from the start.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aspen_blob::BlobClient;
use aspen_cache::CacheClient;
use aspen_ci_pipeline::{ExecutorKind, Pipeline};
use aspen_client::Client;
use aspen_coord::{Completed, Session, Task, Worker};
use aspen_core::AspenError;
use aspen_kv::KvExt as _;
use aspen_kv::{Compare, CompareOp, CompareTarget, KeyValue, ReadConsistency, SharedKv, Txn, TxnOp};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::client::CiClient;
use crate::executor::{self, ExecEnd, ExecJob, ExecutorSettings};
use crate::mask::Masker;
use crate::records::{self, Artifact, JobRecord, POOL, Reuse, RunRecord, State, TaskSpec, Trigger, WorkerProfile};
use crate::service::now_ms;

/// Most bytes of one job attempt's log kept in the KV (for `--follow`); the whole log is
/// archived as a blob when the job ends.
pub const MAX_KV_LOG_BYTES: u64 = 4 * 1024 * 1024;
/// Largest piece of log one KV write carries.
const LOG_PIECE_BYTES: usize = 16 * 1024;
/// How often the log is written while a job prints.
const LOG_FLUSH: Duration = Duration::from_millis(250);
/// How often a running job's worker looks for a cancelled run or a lost claim.
const WATCH_EVERY: Duration = Duration::from_millis(500);
/// Longest a pipeline may take to evaluate.
/// Most memory (address space) a pipeline's evaluation in a child process may take.
const EVAL_MEMORY_BYTES: u64 = 4 << 30;
/// Job records written per transaction when a pipeline is evaluated (within MAX_TXN_OPS).
const JOB_PUTS_PER_TXN: usize = 100;
/// Largest pipeline file read.
const MAX_PIPELINE_BYTES: u64 = 1024 * 1024;

/// How the worker checks commits out of the forge: `git` with `git-remote-aspen`.
#[derive(Debug, Clone)]
pub struct Checkout {
    /// The git program.
    pub git: String,
    /// A directory holding `git-remote-aspen`, put first on git's `PATH`.
    pub helper_dir: Option<PathBuf>,
    /// The cluster ticket and token git's helper presents (written to files mode 0600).
    pub ticket: String,
    pub token: Option<String>,
}

/// A worker's settings.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Unique in the pool while it lives.
    pub id: String,
    /// Jobs at once.
    pub capacity: usize,
    pub executors: Vec<ExecutorKind>,
    /// The most cpus and memory one job may ask of this worker.
    pub max_cpus: u32,
    pub max_memory_mib: u64,
    /// Where workspaces are made (each job's is removed when it ends).
    pub work_dir: PathBuf,
    /// The lease TTL: how long after this worker dies its jobs go to another worker.
    pub session_ttl: Duration,
    pub checkout: Checkout,
    pub exec: ExecutorSettings,
    /// The cache `cache_push` jobs push to.
    pub cache: Option<String>,
    /// Variables of the worker's own environment its jobs get (the toolchain's homes, a
    /// shared build cache), under the job's own `env` and secrets.
    pub pass_env: Vec<String>,
    /// The command that evaluates a pipeline in a child process (given the file's path, it
    /// prints the pipeline as JSON, or Nickel's message on stderr and exits 1), as `aspen
    /// --json ci validate`; `None` evaluates in this process. A child is killed at the time
    /// limit and cannot take the worker down (Nickel has no step limit, and a value nested
    /// deep enough at run time overflows its stack); pipelines of patches from outside need it.
    pub evaluator: Option<Vec<String>>,
    /// Longest a pipeline's evaluation may take.
    pub eval_limit: Duration,
}

impl WorkerConfig {
    /// What this worker offers, as it publishes it.
    pub fn profile(&self) -> WorkerProfile {
        WorkerProfile {
            executors: self.executors.clone(),
            capacity: self.capacity.try_into().unwrap_or(u32::MAX),
            max_cpus: self.max_cpus,
            max_memory_mib: self.max_memory_mib,
            started_ms: now_ms(),
        }
    }
}

fn kv_error(e: aspen_kv::KvError) -> AspenError {
    match e {
        aspen_kv::KvError::Aspen(e) => e,
        other => AspenError::Unavailable { reason: other.to_string() },
    }
}

fn coord_error(e: aspen_coord::CoordError) -> AspenError {
    match e {
        aspen_coord::CoordError::Kv(e) => kv_error(e),
        other => AspenError::internal(other.to_string()),
    }
}

fn put(key: Vec<u8>, value: Vec<u8>) -> TxnOp {
    TxnOp::Put { key, value, lease: None }
}

fn unchanged(kv: &KeyValue) -> Compare {
    Compare { key: kv.key.clone(), op: CompareOp::Equal, target: CompareTarget::ModRevision(kv.mod_revision) }
}

struct Shared {
    config: WorkerConfig,
    kv: SharedKv,
    blobs: BlobClient,
    cache: CacheClient,
    ci: CiClient,
    worker: Worker,
    /// When the last successful lease renewal was sent.
    renewed: Mutex<Instant>,
    stop: CancellationToken,
    credentials: PathBuf,
}

/// Longest the listing of a flake's checks may take (it may fetch the flake's inputs).
const FLAKE_EVAL_LIMIT: Duration = Duration::from_secs(600);

/// Runs a worker until `stop` fires or its lease ends (an error then: start it again).
pub async fn run(client: &Client, config: WorkerConfig, stop: CancellationToken) -> Result<(), AspenError> {
    std::fs::create_dir_all(&config.work_dir)
        .map_err(|e| AspenError::invalid(format!("cannot make {}: {e}", config.work_dir.display())))?;
    let credentials = write_credentials(&config.work_dir, &config.checkout)?;
    let kv = client.kv();
    let sent = Instant::now();
    let session = Session::new_manual(kv.clone(), config.session_ttl).await.map_err(coord_error)?;
    let worker = Worker::register(&session, POOL, &config.id, config.capacity).await.map_err(coord_error)?;
    tracing::info!(id = %config.id, capacity = config.capacity, executors = ?config.executors, "ci worker registered");
    // What it offers, for `ci show` to say when no live worker takes a queued job.
    let profile = TxnOp::Put {
        key: records::worker_key(&config.id),
        value: records::encode(&config.profile())?,
        lease: Some(session.lease()),
    };
    kv.txn(Txn { compare: vec![], success: vec![profile], failure: vec![] }).await.map_err(kv_error)?;
    let shared = Arc::new(Shared {
        blobs: BlobClient::new(client),
        cache: CacheClient::new(client),
        ci: CiClient::new(client),
        kv,
        worker,
        renewed: Mutex::new(sent),
        stop: stop.clone(),
        credentials,
        config,
    });
    let keepalive = tokio::spawn(shared.clone().keep_alive());
    let mut jobs = tokio::task::JoinSet::new();
    let accept = {
        let profile = shared.config.profile();
        move |_: &str, payload: &[u8]| postcard::from_bytes::<TaskSpec>(payload).is_ok_and(|spec| profile.takes(&spec))
    };
    let result = loop {
        let task = tokio::select! {
            () = stop.cancelled() => break Ok(()),
            t = shared.worker.next_task_where(&accept) => t,
        };
        match task {
            Ok(task) => {
                let shared = shared.clone();
                jobs.spawn(async move { shared.handle(task).await });
            }
            Err(aspen_coord::CoordError::SessionEnded) => {
                break Err(AspenError::Unavailable { reason: "this worker's lease ended; start it again".into() });
            }
            Err(e) => {
                tracing::warn!("ci worker: looking for work: {e}");
                tokio::select! {
                    () = stop.cancelled() => break Ok(()),
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
        while jobs.try_join_next().is_some() {}
    };
    stop.cancel();
    while jobs.join_next().await.is_some() {}
    keepalive.abort();
    let _ = session.close().await;
    result
}

/// The ticket and token git's helper reads, as files only this user can read.
fn write_credentials(work_dir: &Path, checkout: &Checkout) -> Result<PathBuf, AspenError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let dir = work_dir.join(".credentials");
    std::fs::create_dir_all(&dir).map_err(AspenError::internal)?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).map_err(AspenError::internal)?;
    let write = |name: &str, text: &str| -> Result<(), AspenError> {
        let path = dir.join(name);
        let _ = std::fs::remove_file(&path);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(AspenError::internal)?;
        std::io::Write::write_all(&mut file, text.as_bytes()).map_err(AspenError::internal)
    };
    write("ticket", &checkout.ticket)?;
    if let Some(token) = &checkout.token {
        write("token", token)?;
    }
    Ok(dir)
}

/// Why a job was stopped from outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stopped {
    Cancelled,
    LeaseLost,
}

impl Shared {
    async fn keep_alive(self: Arc<Self>) {
        let ttl = self.config.session_ttl;
        loop {
            tokio::time::sleep(ttl / 4).await;
            let sent = Instant::now();
            match self.worker.session().keepalive().await {
                Ok(()) => *self.renewed.lock().expect("renewed") = sent,
                Err(aspen_coord::CoordError::SessionEnded) => {
                    tracing::error!("ci worker: the lease ended; stopping every job");
                    self.stop.cancel();
                    return;
                }
                Err(e) => tracing::warn!("ci worker: renewing the lease: {e}"),
            }
        }
    }

    /// True once the lease may have ended: not renewed for most of its TTL.
    fn lease_in_doubt(&self) -> bool {
        let ttl = self.config.session_ttl;
        self.worker.session().ended() || self.renewed.lock().expect("renewed").elapsed() >= ttl - ttl / 5
    }

    async fn handle(&self, task: Task) {
        let spec: TaskSpec = match postcard::from_bytes(&task.payload) {
            Ok(spec) => spec,
            Err(e) => {
                tracing::warn!(task = %task.id, "ci worker: dropping a task that does not read: {e}");
                let _ = self.worker.complete(&task).await;
                return;
            }
        };
        let result = match &spec.job {
            None => self.evaluate(&task, &spec).await,
            Some(job) => self.run_job(&task, &spec, job).await,
        };
        if let Err(e) = result {
            // The cluster failed us, not the job: give the task back for a later try.
            tracing::warn!(task = %task.id, "ci worker: giving the task back: {e}");
            let _ = self.worker.release(&task).await;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    async fn get(&self, key: &[u8]) -> Result<Option<KeyValue>, AspenError> {
        self.kv.get(key, ReadConsistency::Linearizable).await.map_err(kv_error)
    }

    async fn read_run(&self, run: u64) -> Result<Option<(KeyValue, RunRecord)>, AspenError> {
        let key = records::run_key(run);
        match self.get(&key).await? {
            Some(kv) => {
                let record = records::decode("a run", &key, &kv.value)?;
                Ok(Some((kv, record)))
            }
            None => Ok(None),
        }
    }

    /// A fresh directory for one task, removed when the guard drops.
    fn workspace(&self, task: &Task) -> Result<TempDir, AspenError> {
        let dir = self.config.work_dir.join(format!("{}-{}", task.id, rand::random::<u32>()));
        std::fs::create_dir_all(dir.join("src")).map_err(AspenError::internal)?;
        Ok(TempDir(dir))
    }

    /// Fetches `commit` of `repo` into `dir` and checks it out; returns its tree id.
    async fn checkout(&self, repo: &str, commit: &[u8; 20], dir: &Path, home: &Path) -> Result<String, String> {
        let hex = records::hex(commit);
        let url = format!("aspen://default/{repo}");
        let steps: Vec<Vec<String>> = vec![
            vec!["init".into(), "-q".into(), dir.display().to_string()],
            vec![
                "-C".into(),
                dir.display().to_string(),
                "fetch".into(),
                "-q".into(),
                "--depth".into(),
                "1".into(),
                url,
                hex,
            ],
            vec![
                "-C".into(),
                dir.display().to_string(),
                "-c".into(),
                "advice.detachedHead=false".into(),
                "checkout".into(),
                "-q".into(),
                "--detach".into(),
                "FETCH_HEAD".into(),
            ],
            vec!["-C".into(), dir.display().to_string(), "rev-parse".into(), "HEAD^{tree}".into()],
        ];
        let path = match &self.config.checkout.helper_dir {
            Some(d) => format!("{}:{}", d.display(), std::env::var("PATH").unwrap_or_default()),
            None => std::env::var("PATH").unwrap_or_default(),
        };
        std::fs::create_dir_all(home).map_err(|e| e.to_string())?;
        let mut last = String::new();
        for args in steps {
            let mut command = tokio::process::Command::new(&self.config.checkout.git);
            command
                .args(&args)
                .env_clear()
                .env("PATH", &path)
                .env("HOME", home)
                .env("GIT_CONFIG_NOSYSTEM", "1")
                .env("GIT_TERMINAL_PROMPT", "0")
                .env("ASPEN_TICKET_FILE", self.credentials.join("ticket"))
                .kill_on_drop(true);
            if self.config.checkout.token.is_some() {
                command.env("ASPEN_TOKEN_FILE", self.credentials.join("token"));
            }
            let output = tokio::time::timeout(Duration::from_secs(600), command.output())
                .await
                .map_err(|_| "git took over 10 minutes".to_string())?
                .map_err(|e| format!("cannot run {}: {e}", self.config.checkout.git))?;
            if !output.status.success() {
                return Err(format!(
                    "git {} failed: {}",
                    args.iter().find(|a| !a.starts_with('-') && !a.contains('/')).cloned().unwrap_or_default(),
                    String::from_utf8_lossy(&output.stderr).trim()
                ));
            }
            last = String::from_utf8_lossy(&output.stdout).trim().to_string();
        }
        Ok(last)
    }

    /// Evaluates run `spec.run`'s pipeline and writes its jobs, or the reason it has none.
    async fn evaluate(&self, task: &Task, spec: &TaskSpec) -> Result<(), AspenError> {
        let Some((run_kv, run)) = self.read_run(spec.run).await? else {
            self.worker.complete(task).await.map_err(coord_error)?;
            return Ok(());
        };
        if run.state != State::Pending {
            self.worker.complete(task).await.map_err(coord_error)?;
            return Ok(());
        }
        let space = self.workspace(task)?;
        let verdict = if run.cancel_requested {
            Err((State::Cancelled, run.message.clone().unwrap_or_else(|| "cancelled".into())))
        } else {
            self.plan_run(&run, &space.0).await
        };
        let mut next = run.clone();
        let mut ops = Vec::new();
        match verdict {
            Ok((pipeline, jobs)) => {
                next.state = State::Running;
                next.jobs = jobs.keys().cloned().collect();
                // The job records go first, in batches within a transaction's op limit, each
                // fenced by the claim and by the run being unchanged; the run turns `Running`
                // (which is what lets the scheduler act on them) with the completion.
                let puts: Vec<TxnOp> = jobs
                    .iter()
                    .map(|(name, job)| Ok(put(records::job_key(spec.run, name), records::encode(job)?)))
                    .collect::<Result<_, AspenError>>()?;
                for batch in puts.chunks(JOB_PUTS_PER_TXN) {
                    let txn = Txn { compare: vec![unchanged(&run_kv)], success: batch.to_vec(), failure: vec![] };
                    if !self.worker.fenced_txn(task, txn).await.map_err(coord_error)? {
                        if self.worker.holds(task).await.map_err(coord_error)? {
                            return Box::pin(self.evaluate(task, spec)).await;
                        }
                        return Ok(());
                    }
                }
                tracing::info!(run = spec.run, jobs = jobs.len(), triggers = ?pipeline.triggers, "pipeline evaluated");
            }
            Err((state, message)) => {
                tracing::info!(run = spec.run, state = state.name(), "pipeline not run: {message}");
                next.state = state;
                next.message = Some(message);
                next.finished_ms = Some(now_ms());
                // `active/` stays until a scheduler has reported the end on the commit.
            }
        }
        ops.push(put(run_kv.key.clone(), records::encode(&next)?));
        match self.worker.complete_with(task, vec![unchanged(&run_kv)], ops).await.map_err(coord_error)? {
            Completed::Done | Completed::Lost => Ok(()),
            // The run changed meanwhile (a cancel): evaluate again with what it says now.
            Completed::Refused => Box::pin(self.evaluate(task, spec)).await,
        }
    }

    /// Checks the run's commit out, evaluates its pipeline and makes its jobs; or says why
    /// the run ends here (the error's state and message).
    async fn plan_run(
        &self,
        run: &RunRecord,
        space: &Path,
    ) -> Result<(Pipeline, BTreeMap<String, JobRecord>), (State, String)> {
        let src = space.join("src");
        self.checkout(&run.repo, &run.commit, &src, &space.join("home"))
            .await
            .map_err(|e| (State::Error, format!("checking out {}: {e}", records::hex(&run.commit))))?;
        let path = src.join(records::PIPELINE_PATH);
        let size = std::fs::metadata(&path).map(|m| m.len()).map_err(|_| {
            (State::Error, format!("{} has no {} at {}", run.repo, records::PIPELINE_PATH, records::hex(&run.commit)))
        })?;
        if size > MAX_PIPELINE_BYTES {
            return Err((
                State::Error,
                format!("{} is {size} bytes, over {MAX_PIPELINE_BYTES}", records::PIPELINE_PATH),
            ));
        }
        let source = std::fs::read_to_string(&path)
            .map_err(|e| (State::Error, format!("{} does not read as UTF-8 text: {e}", records::PIPELINE_PATH)))?;
        let limit = self.config.eval_limit;
        let pipeline = match &self.config.evaluator {
            Some(command) => evaluate_in_child(command, &src, limit).await?,
            None => {
                let evaluated = tokio::time::timeout(
                    limit,
                    tokio::task::spawn_blocking(move || aspen_ci_pipeline::evaluate(records::PIPELINE_PATH, &source)),
                )
                .await;
                match evaluated {
                    Err(_) => return Err((State::Error, over_limit(limit))),
                    Ok(Err(e)) => return Err((State::Error, format!("the evaluation crashed: {e}"))),
                    Ok(Ok(Err(e))) => return Err((State::Error, format!("the pipeline does not evaluate:\n{e}"))),
                    Ok(Ok(Ok(p))) => p,
                }
            }
        };
        match &run.trigger {
            Trigger::Push { .. } => {
                let default_branch = self.default_branch(&run.repo).await.unwrap_or_else(|| "main".into());
                if !pipeline.triggers.matches_push(&run.ref_name, &default_branch) {
                    return Err((State::Skipped, format!("the pipeline's triggers do not take {}", run.ref_name)));
                }
            }
            Trigger::Manual { .. } if !pipeline.triggers.manual => {
                return Err((State::Skipped, "the pipeline's triggers turn manual runs off".into()));
            }
            Trigger::Patch { .. } if !pipeline.triggers.patches => {
                return Err((State::Skipped, "the pipeline's triggers turn patch runs off".into()));
            }
            _ => {}
        }
        let mut pipeline = pipeline;
        let expand: Vec<String> =
            pipeline.jobs.iter().filter(|(_, d)| d.flake_checks).map(|(n, _)| n.clone()).collect();
        if !expand.is_empty() {
            let (system, checks) = list_flake_checks(&src, &space.join("home")).await.map_err(|e| (State::Error, e))?;
            for name in expand {
                pipeline
                    .expand_flake_checks(&name, &system, &checks)
                    .map_err(|e| (State::Error, format!("{}: {e}", records::PIPELINE_PATH)))?;
            }
        }
        let mut jobs = BTreeMap::new();
        for (name, def) in &pipeline.jobs {
            let def_json = serde_json::to_string(def).map_err(|e| (State::Error, e.to_string()))?;
            jobs.insert(name.clone(), JobRecord::new(def_json, def.executor, def.needs.clone()));
        }
        Ok((pipeline, jobs))
    }

    async fn default_branch(&self, repo: &str) -> Option<String> {
        let key = format!("{}{repo}", aspen_forge::records::REPO_PREFIX);
        let kv = self.get(key.as_bytes()).await.ok()??;
        postcard::from_bytes::<aspen_forge::records::RepoRecord>(&kv.value).ok().map(|r| r.default_branch)
    }

    /// Runs one attempt of a job and records its result with the task's completion.
    async fn run_job(&self, task: &Task, spec: &TaskSpec, name: &str) -> Result<(), AspenError> {
        let job_key = records::job_key(spec.run, name);
        let Some(job_kv) = self.get(&job_key).await? else {
            self.worker.complete(task).await.map_err(coord_error)?;
            return Ok(());
        };
        let record: JobRecord = records::decode("a job", &job_key, &job_kv.value)?;
        // A task for an attempt that is over (or was never queued) has nothing to do. A
        // job still `Running` belonged to a worker whose claim ended: this one runs it anew.
        if record.attempt != spec.attempt || !matches!(record.state, State::Queued | State::Running) {
            self.worker.complete(task).await.map_err(coord_error)?;
            return Ok(());
        }
        let Some((_, run)) = self.read_run(spec.run).await? else {
            self.worker.complete(task).await.map_err(coord_error)?;
            return Ok(());
        };
        if run.cancel_requested {
            let mut done = record.clone();
            done.state = State::Cancelled;
            done.message = Some("cancelled before it started".into());
            done.finished_ms = Some(now_ms());
            let ops = vec![put(job_key.clone(), records::encode(&done)?)];
            self.worker.complete_with(task, Vec::new(), ops).await.map_err(coord_error)?;
            return Ok(());
        }
        let mut running = record.clone();
        running.state = State::Running;
        running.worker = Some(self.config.id.clone());
        running.started_ms = Some(now_ms());
        let txn = Txn {
            compare: vec![unchanged(&job_kv)],
            success: vec![put(job_key.clone(), records::encode(&running)?)],
            failure: vec![],
        };
        if !self.worker.fenced_txn(task, txn).await.map_err(coord_error)? {
            if !self.worker.holds(task).await.map_err(coord_error)? {
                return Ok(());
            }
            // The job moved meanwhile (cancelled): look again from the start.
            return Box::pin(self.run_job(task, spec, name)).await;
        }
        tracing::info!(run = spec.run, job = name, attempt = spec.attempt, "job started");

        let space = self.workspace(task)?;
        let stopped: Mutex<Option<Stopped>> = Mutex::new(None);
        let cancel = CancellationToken::new();
        let (log_tx, log_rx) = mpsc::channel::<Vec<u8>>(64);
        let log_file = space.0.join("job.log");
        // A job that names secrets gets them from a node (only a running job of a trusted
        // run does), and its log masks them.
        let secrets = self.job_secrets(spec, name, &record).await;
        let masker = Masker::new(secrets.iter().flatten().map(|(_, v)| v.as_slice()));
        let writer = LogWriter::new(&log_file, spec.run, name, spec.attempt, masker).await?;
        // The writer ends once the job's senders are gone, that is when the job has ended.
        let work = async {
            tokio::join!(
                self.execute_job(spec, name, &run, &record, &space.0, secrets, log_tx, &cancel),
                writer.run(log_rx, self, task)
            )
        };
        tokio::pin!(work);
        let watch = self.watch_job(spec.run, &cancel, &stopped);
        tokio::pin!(watch);
        let mut watching = true;
        let ((end, inputs, artifacts), (log_bytes, log_ok)) = loop {
            tokio::select! {
                r = &mut work => break r,
                () = &mut watch, if watching => watching = false,
            }
        };
        let stopped = *stopped.lock().expect("stopped");
        if stopped == Some(Stopped::LeaseLost) || (!log_ok && !self.worker.holds(task).await.unwrap_or(false)) {
            tracing::warn!(run = spec.run, job = name, "job stopped: this worker's claim is gone");
            return Ok(());
        }
        let log_blob = self.archive_log(&log_file, spec.run, name, spec.attempt).await;

        let mut done = running.clone();
        done.finished_ms = Some(now_ms());
        done.log_bytes = log_bytes;
        done.log_blob = log_blob;
        done.artifacts = artifacts;
        done.input_hash = inputs.as_ref().map(|(h, _)| *h);
        let reused = inputs.as_ref().and_then(|(_, r)| r.clone());
        let time_limit = record.def().map(|d| d.timeout_secs).unwrap_or(0);
        let (state, message, exit) = match (&end, stopped) {
            (_, Some(Stopped::Cancelled)) | (ExecEnd::Cancelled, _) => {
                (State::Cancelled, Some("cancelled while running".to_string()), None)
            }
            (ExecEnd::Exited(0), _) => (State::Success, None, Some(0)),
            (ExecEnd::Exited(code), _) => (State::Failure, Some(format!("exited with {code}")), Some(*code)),
            (ExecEnd::Signalled(sig), _) => (State::Failure, Some(format!("killed by signal {sig}")), None),
            (ExecEnd::TimedOut, _) => {
                (State::TimedOut, Some(format!("killed at its time limit of {time_limit} s")), None)
            }
            (ExecEnd::Error(e), _) => (State::Error, Some(e.clone()), None),
        };
        done.state = state;
        done.message = message;
        done.exit_code = exit;
        if let Some(reuse) = &reused {
            done.reused_from = Some(reuse.run);
            done.log_blob = reuse.log_blob;
            done.log_bytes = reuse.log_bytes;
            done.message = Some(format!("reused the success of run {} (same inputs)", reuse.run));
        }
        let mut ops = Vec::new();
        let retries = record.def().map(|d| d.retries).unwrap_or(0);
        let retry = matches!(state, State::Failure | State::TimedOut | State::Error) && spec.attempt <= retries;
        if retry {
            // Another attempt: the job goes back to the pool under a new task id.
            let mut again = done.clone();
            again.state = State::Queued;
            again.attempt = spec.attempt + 1;
            again.queued_ms = Some(now_ms());
            let next = TaskSpec { attempt: spec.attempt + 1, ..spec.clone() };
            let (_, submit) = self
                .worker
                .pool()
                .submit_ops(&records::task_id(spec.run, Some(name), next.attempt), records::encode(&next)?)
                .map_err(coord_error)?;
            ops.push(put(job_key.clone(), records::encode(&again)?));
            ops.extend(submit);
        } else {
            ops.push(put(job_key.clone(), records::encode(&done)?));
            if state == State::Success
                && reused.is_none()
                && let Some((hash, _)) = &inputs
            {
                let reuse = Reuse {
                    run: spec.run,
                    job: name.to_string(),
                    finished_ms: now_ms(),
                    log_blob: done.log_blob,
                    log_bytes: done.log_bytes,
                };
                ops.push(put(records::reuse_key(hash), records::encode(&reuse)?));
            }
        }
        match self.worker.complete_with(task, Vec::new(), ops).await.map_err(coord_error)? {
            Completed::Done => tracing::info!(run = spec.run, job = name, state = state.name(), retry, "job ended"),
            Completed::Lost | Completed::Refused => {
                tracing::warn!(run = spec.run, job = name, "job ended, but this worker's claim is gone: not recorded")
            }
        }
        Ok(())
    }

    /// The secrets the job names, from a node; an error says why there are none.
    async fn job_secrets(
        &self,
        spec: &TaskSpec,
        name: &str,
        record: &JobRecord,
    ) -> Result<Vec<(String, Vec<u8>)>, String> {
        let wanted = record.def().map_err(|e| e.to_string())?.secrets;
        if wanted.is_empty() {
            return Ok(Vec::new());
        }
        self.ci.job_secrets(spec.run, name).await.map_err(|e| format!("getting the job's secrets: {e}"))
    }

    /// Checks the job's commit out, skips it when an earlier success had the same inputs,
    /// else runs it with its executor (then pushes its outputs and keeps its artifacts).
    /// Returns how it ended, its input hash with the success it reused, and its artifacts.
    #[allow(clippy::too_many_arguments)]
    async fn execute_job(
        &self,
        spec: &TaskSpec,
        name: &str,
        run: &RunRecord,
        record: &JobRecord,
        space: &Path,
        secrets: Result<Vec<(String, Vec<u8>)>, String>,
        log: mpsc::Sender<Vec<u8>>,
        cancel: &CancellationToken,
    ) -> (ExecEnd, Option<([u8; 32], Option<Reuse>)>, Vec<Artifact>) {
        let say = |text: String| {
            let log = log.clone();
            async move {
                let _ = log.send(format!("[aspen-ci] {text}\n").into_bytes()).await;
            }
        };
        say(format!(
            "run {} job {name} attempt {} on worker {} ({} executor)",
            spec.run,
            spec.attempt,
            self.config.id,
            executor_name(record.executor)
        ))
        .await;
        let src = space.join("src");
        let tree = match self.checkout(&run.repo, &run.commit, &src, &space.join("home")).await {
            Ok(tree) => tree,
            Err(e) => {
                return (ExecEnd::Error(format!("checking out {}: {e}", records::hex(&run.commit))), None, Vec::new());
            }
        };
        let def = match record.def() {
            Ok(def) => def,
            Err(e) => return (ExecEnd::Error(e.to_string()), None, Vec::new()),
        };
        let input_hash = input_hash(&tree, &record.def_json, record.executor, def.image.as_deref());
        if !run.forced
            && let Ok(Some(kv)) = self.get(&records::reuse_key(&input_hash)).await
            && let Ok(reuse) = records::decode::<Reuse>("a reuse record", &kv.key, &kv.value)
        {
            say(format!(
                "skipped: job {} of run {} succeeded with the same inputs (tree {tree}); a forced run runs it",
                reuse.job, reuse.run
            ))
            .await;
            // Its artifacts are the reused job's, for the jobs that need this one.
            let key = records::job_key(reuse.run, &reuse.job);
            let artifacts = match self.get(&key).await {
                Ok(Some(kv)) => {
                    records::decode::<JobRecord>("a job", &key, &kv.value).map(|r| r.artifacts).unwrap_or_default()
                }
                _ => Vec::new(),
            };
            return (ExecEnd::Exited(0), Some((input_hash, Some(reuse))), artifacts);
        }
        let secrets = match secrets {
            Ok(secrets) => secrets,
            Err(e) => return (ExecEnd::Error(e), Some((input_hash, None)), Vec::new()),
        };
        if let Err(e) = self.fetch_needed_artifacts(spec.run, &record.needs, &src, &log).await {
            return (ExecEnd::Error(e), Some((input_hash, None)), Vec::new());
        }
        let mut env: Vec<(String, String)> = self
            .config
            .pass_env
            .iter()
            .filter(|k| !def.env.contains_key(*k))
            .filter_map(|k| std::env::var(k).ok().map(|v| (k.clone(), v)))
            .collect();
        env.extend(def.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        for (secret, value) in secrets {
            let Ok(text) = String::from_utf8(value) else {
                return (
                    ExecEnd::Error(format!(
                        "secret {secret} is not UTF-8 text, so it cannot be an environment variable"
                    )),
                    Some((input_hash, None)),
                    Vec::new(),
                );
            };
            if text.len() < crate::mask::MIN_MASKED {
                say(format!(
                    "secret {secret} is shorter than {} bytes: the log does not mask it",
                    crate::mask::MIN_MASKED
                ))
                .await;
            }
            env.retain(|(k, _)| k != &secret);
            env.push((secret, text));
        }
        env.extend([
            ("CI".to_string(), "true".to_string()),
            ("ASPEN_CI".into(), "true".into()),
            ("ASPEN_CI_RUN".into(), spec.run.to_string()),
            ("ASPEN_CI_JOB".into(), name.to_string()),
            ("ASPEN_CI_ATTEMPT".into(), spec.attempt.to_string()),
            ("ASPEN_CI_REPO".into(), run.repo.clone()),
            ("ASPEN_CI_REF".into(), run.ref_name.clone()),
            ("ASPEN_CI_COMMIT".into(), records::hex(&run.commit)),
        ]);
        let scratch = space.join("scratch");
        let job = ExecJob {
            workspace: &src,
            scratch: &scratch,
            def: &def,
            env,
            timeout: Duration::from_secs(def.timeout_secs),
        };
        let (end, outputs) = executor::execute(&self.config.exec, &job, log.clone(), cancel).await;
        say(format!("ended: {}", describe(&end))).await;
        if end == ExecEnd::Exited(0) && def.cache_push && !outputs.is_empty() {
            match &self.config.cache {
                Some(cache) => {
                    let nix = aspen_cache::push::NixCommand::default();
                    match aspen_cache::push::push(&self.cache, &nix, cache, &outputs, |_| {}).await {
                        Ok(report) => {
                            say(format!(
                                "pushed {} of {} paths ({} bytes) to cache {cache}",
                                report.pushed, report.closure, report.bytes
                            ))
                            .await
                        }
                        Err(e) => {
                            say(format!("pushing to cache {cache} failed: {e}")).await;
                            return (ExecEnd::Error(format!("cache push: {e}")), Some((input_hash, None)), Vec::new());
                        }
                    }
                }
                None => say("cache_push is on, but this worker has no --cache to push to".into()).await,
            }
        }
        let artifacts = self.keep_artifacts(spec.run, name, &src, &def.artifacts, &log).await;
        (end, Some((input_hash, None)), artifacts)
    }

    /// Fires `cancel` when the run is cancelled or this worker's lease is in doubt, and
    /// says which in `stopped`; returns then (the job's end cancels the whole wait).
    async fn watch_job(&self, run: u64, cancel: &CancellationToken, stopped: &Mutex<Option<Stopped>>) {
        let key = records::run_key(run);
        loop {
            let reason = if self.lease_in_doubt() || self.stop.is_cancelled() {
                Some(Stopped::LeaseLost)
            } else {
                match self.get(&key).await {
                    Ok(Some(kv)) => records::decode::<RunRecord>("a run", &key, &kv.value)
                        .ok()
                        .filter(|r| r.cancel_requested)
                        .map(|_| Stopped::Cancelled),
                    _ => None,
                }
            };
            if let Some(reason) = reason {
                *stopped.lock().expect("stopped") = Some(reason);
                cancel.cancel();
                return;
            }
            tokio::time::sleep(WATCH_EVERY).await;
        }
    }

    /// Puts the artifacts of the jobs this one needs into its workspace, at the paths they
    /// were kept from, as a later stage of a pipeline expects (a build's output for the job
    /// that tests or ships it).
    async fn fetch_needed_artifacts(
        &self,
        run: u64,
        needs: &[String],
        src: &Path,
        log: &mpsc::Sender<Vec<u8>>,
    ) -> Result<(), String> {
        for need in needs {
            let key = records::job_key(run, need);
            let record: JobRecord = match self.get(&key).await {
                Ok(Some(kv)) => records::decode("a job", &key, &kv.value).map_err(|e| e.to_string())?,
                Ok(None) => return Err(format!("job {need}, which this job needs, has no record")),
                Err(e) => return Err(format!("reading job {need}: {e}")),
            };
            for artifact in &record.artifacts {
                let file = src.join(&artifact.path);
                if let Some(dir) = file.parent() {
                    tokio::fs::create_dir_all(dir).await.map_err(|e| format!("creating {}: {e}", dir.display()))?;
                }
                let mut out =
                    tokio::fs::File::create(&file).await.map_err(|e| format!("creating {}: {e}", file.display()))?;
                let bytes = self.blobs.get_to(artifact.blob, &mut out).await.map_err(|e| {
                    format!("fetching artifact {} of job {need} ({}): {e}", artifact.path, records::hex(&artifact.blob))
                })?;
                tokio::io::AsyncWriteExt::flush(&mut out)
                    .await
                    .map_err(|e| format!("writing {}: {e}", file.display()))?;
                let note =
                    format!("[aspen-ci] artifact {} of job {need}: {bytes} bytes in the workspace\n", artifact.path);
                let _ = log.send(note.into_bytes()).await;
            }
        }
        Ok(())
    }

    /// Stores each named artifact (a file under the workspace) as a pinned blob.
    async fn keep_artifacts(
        &self,
        run: u64,
        job: &str,
        src: &Path,
        paths: &[String],
        log: &mpsc::Sender<Vec<u8>>,
    ) -> Vec<Artifact> {
        let mut kept = Vec::new();
        for path in paths {
            let file = src.join(path);
            let note = match tokio::fs::read(&file).await {
                Ok(bytes) => match self.blobs.add_bytes(&bytes).await {
                    Ok(added) => match self.blobs.pin(&records::artifact_pin(run, job, path), added.hash).await {
                        Ok(()) => {
                            kept.push(Artifact { path: path.clone(), blob: added.hash, size: bytes.len() as u64 });
                            format!("artifact {path}: {} bytes kept", bytes.len())
                        }
                        Err(e) => format!("artifact {path}: pinning failed: {e}"),
                    },
                    Err(e) => format!("artifact {path}: storing failed: {e}"),
                },
                Err(e) => format!("artifact {path}: not kept: {e}"),
            };
            let _ = log.send(format!("[aspen-ci] {note}\n").into_bytes()).await;
        }
        kept
    }

    /// The whole log as a pinned blob.
    async fn archive_log(&self, file: &Path, run: u64, job: &str, attempt: u32) -> Option<[u8; 32]> {
        let bytes = tokio::fs::read(file).await.ok()?;
        let added = match self.blobs.add_bytes(&bytes).await {
            Ok(added) => added,
            Err(e) => {
                tracing::warn!(run, job, "archiving the log failed: {e}");
                return None;
            }
        };
        if let Err(e) = self.blobs.pin(&records::log_pin(run, job, attempt), added.hash).await {
            tracing::warn!(run, job, "pinning the log failed: {e}");
            return None;
        }
        Some(added.hash)
    }
}

fn over_limit(limit: Duration) -> String {
    format!("{} did not evaluate within {} s", records::PIPELINE_PATH, limit.as_secs())
}

/// Evaluates the checkout's pipeline with `command` in a child process, in its own process
/// group, with at most [`EVAL_MEMORY_BYTES`] of memory, killed at `limit`.
async fn evaluate_in_child(command: &[String], src: &Path, limit: Duration) -> Result<Pipeline, (State, String)> {
    let Some((program, args)) = command.split_first() else {
        return Err((State::Error, "the worker's evaluator command is empty".into()));
    };
    let mut child = tokio::process::Command::new(program);
    child
        .args(args)
        .arg(records::PIPELINE_PATH)
        .current_dir(src)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()))
        .stdin(std::process::Stdio::null())
        .process_group(0)
        .kill_on_drop(true);
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        child.pre_exec(|| {
            let cap = libc::rlimit { rlim_cur: EVAL_MEMORY_BYTES, rlim_max: EVAL_MEMORY_BYTES };
            if libc::setrlimit(libc::RLIMIT_AS, &cap) != 0 || libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = match tokio::time::timeout(limit, child.output()).await {
        Err(_) => return Err((State::Error, over_limit(limit))),
        Ok(Err(e)) => return Err((State::Error, format!("cannot start the evaluator {program}: {e}"))),
        Ok(Ok(out)) => out,
    };
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    match out.status.code() {
        Some(0) => serde_json::from_slice(&out.stdout)
            .map_err(|e| (State::Error, format!("the evaluator's answer does not read: {e}"))),
        Some(1) => Err((State::Error, format!("the pipeline does not evaluate:\n{stderr}"))),
        _ => {
            use std::os::unix::process::ExitStatusExt as _;
            let how = match out.status.signal() {
                Some(signal) => format!("killed by signal {signal}"),
                None => format!("exit {}", out.status.code().unwrap_or(-1)),
            };
            Err((
                State::Error,
                format!(
                    "the evaluation of {} crashed ({how}; over {} MiB of memory, or nested too deep?): {stderr}",
                    records::PIPELINE_PATH,
                    EVAL_MEMORY_BYTES >> 20
                ),
            ))
        }
    }
}

/// The system this worker's nix builds for, and the attribute names of the checked-out
/// flake's `checks.<system>` (what `flake_checks` expands to).
async fn list_flake_checks(src: &Path, home: &Path) -> Result<(String, Vec<String>), String> {
    async fn nix(src: &Path, home: &Path, args: &[&str]) -> Result<String, String> {
        std::fs::create_dir_all(home).map_err(|e| format!("cannot make {}: {e}", home.display()))?;
        let mut command = tokio::process::Command::new("nix");
        command
            .args(["--extra-experimental-features", "nix-command flakes"])
            .args(args)
            .current_dir(src)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()))
            .env("HOME", home)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        for var in ["NIX_REMOTE", "NIX_STORE_DIR", "NIX_STATE_DIR", "NIX_CONF_DIR", "NIX_CONFIG"] {
            if let Some(value) = std::env::var_os(var) {
                command.env(var, value);
            }
        }
        let out = tokio::time::timeout(FLAKE_EVAL_LIMIT, command.output())
            .await
            .map_err(|_| format!("`nix {}` took over {} s", args.join(" "), FLAKE_EVAL_LIMIT.as_secs()))?
            .map_err(|e| format!("flake_checks needs nix on the worker that evaluates the pipeline: {e}"))?;
        if !out.status.success() {
            return Err(format!("`nix {}` failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }
    let system = nix(src, home, &["eval", "--impure", "--raw", "--expr", "builtins.currentSystem"]).await?;
    let attr = format!(".#checks.{system}");
    let names = nix(src, home, &["eval", "--json", &attr, "--apply", "builtins.attrNames"]).await?;
    let checks: Vec<String> =
        serde_json::from_str(&names).map_err(|e| format!("`nix eval {attr}` did not answer a list of names: {e}"))?;
    Ok((system, checks))
}

/// What decides whether a job runs again: the tree it checks out, its definition, its
/// executor and image.
pub fn input_hash(tree: &str, def_json: &str, executor: ExecutorKind, image: Option<&str>) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(b"aspen-ci/inputs/1\0");
    for part in [tree, def_json, executor_name(executor), image.unwrap_or("")] {
        h.update(&(part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    *h.finalize().as_bytes()
}

pub fn executor_name(kind: ExecutorKind) -> &'static str {
    match kind {
        ExecutorKind::Shell => "shell",
        ExecutorKind::Nix => "nix",
        ExecutorKind::Vm => "vm",
    }
}

fn describe(end: &ExecEnd) -> String {
    match end {
        ExecEnd::Exited(code) => format!("exit code {code}"),
        ExecEnd::Signalled(sig) => format!("signal {sig}"),
        ExecEnd::TimedOut => "time limit reached, killed".into(),
        ExecEnd::Cancelled => "cancelled, killed".into(),
        ExecEnd::Error(e) => format!("error: {e}"),
    }
}

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes a job's log: to a local file (archived at the end) and, in pieces, to the KV for
/// whoever follows it, each piece fenced by the job's claim.
struct LogWriter {
    file: tokio::fs::File,
    run: u64,
    job: String,
    attempt: u32,
    /// Secrets never reach the file or the KV.
    masker: Masker,
}

impl LogWriter {
    async fn new(path: &Path, run: u64, job: &str, attempt: u32, masker: Masker) -> Result<LogWriter, AspenError> {
        let file = tokio::fs::File::create(path).await.map_err(AspenError::internal)?;
        Ok(LogWriter { file, run, job: job.to_string(), attempt, masker })
    }

    /// Runs until every sender is dropped; returns the log's length and whether every
    /// fenced write went through.
    async fn run(mut self, mut rx: mpsc::Receiver<Vec<u8>>, shared: &Shared, task: &Task) -> (u64, bool) {
        let mut pending: Vec<u8> = Vec::new();
        let mut total = 0u64;
        let mut in_kv = 0u64;
        let mut seq = 0u32;
        let mut ok = true;
        let mut truncated = false;
        let mut tick = tokio::time::interval(LOG_FLUSH);
        loop {
            // What woke the loop: bytes (`Some(false)`), the flush tick (`Some(true)`), or the
            // end of the job (`None`).
            let woke = tokio::select! {
                bytes = rx.recv() => bytes.map(|b| self.masker.push(&b)),
                _ = tick.tick() => Some(Vec::new()),
            };
            let rest = if woke.is_none() { self.masker.finish() } else { Vec::new() };
            let fresh = woke.as_deref().unwrap_or(&rest);
            if !fresh.is_empty() {
                pending.extend_from_slice(fresh);
                total += fresh.len() as u64;
                let _ = self.file.write_all(fresh).await;
            }
            let flush = match &woke {
                None => true,
                Some(bytes) => bytes.is_empty() || pending.len() >= LOG_PIECE_BYTES,
            };
            if flush && !ok {
                pending.clear();
            }
            if flush && !pending.is_empty() && ok {
                for piece in pending.chunks(LOG_PIECE_BYTES) {
                    if in_kv >= MAX_KV_LOG_BYTES {
                        if !truncated {
                            truncated = true;
                            let note =
                                b"\n[aspen-ci] the live log stops here; the whole log is archived when the job ends\n";
                            let _ = self.write_piece(shared, task, seq, note.to_vec()).await;
                            seq += 1;
                        }
                        break;
                    }
                    if !self.write_piece(shared, task, seq, piece.to_vec()).await {
                        ok = false;
                        break;
                    }
                    in_kv += piece.len() as u64;
                    seq += 1;
                }
                pending.clear();
            }
            if woke.is_none() {
                let _ = self.file.flush().await;
                return (total, ok);
            }
        }
    }

    async fn write_piece(&self, shared: &Shared, task: &Task, seq: u32, bytes: Vec<u8>) -> bool {
        let key = records::log_key(self.run, &self.job, self.attempt, seq);
        let txn = Txn { compare: vec![], success: vec![put(key, bytes)], failure: vec![] };
        shared.worker.fenced_txn(task, txn).await.unwrap_or(false)
    }
}
