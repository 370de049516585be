//! CI's node side over the KV: runs created from forge pushes (exactly one per push), jobs
//! queued as the plan ([`crate::plan`]) says, cancellation and retry, and the reads the
//! protocol answers. Every node runs the same loops; each decision is a transaction that
//! compares what it read, so two nodes deciding at once carry it out once.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use aspen_ci_pipeline::ExecutorKind;
use aspen_coord::WorkPool;
use aspen_core::AspenError;
use aspen_forge::records::{EVENT_PREFIX, PushEvent, REVISION_EVENT_PREFIX, RevisionEvent};
use aspen_forge::status::CommitStatus;
use aspen_kv::{Compare, CompareOp, CompareTarget, KeyValue, ReadConsistency, SharedKv, Txn, TxnOp, TxnOpResult};
use aspen_kv::{Kv as _, KvExt as _};
use tokio_util::sync::CancellationToken;

use crate::plan::{self, Action};
pub use crate::protocol::PruneReport;
use crate::records::{self, JobRecord, POOL, RepoConfig, RunRecord, State, TaskSpec, Trigger, WorkerProfile};

/// Attempts of a transaction whose compares keep failing because others moved the keys.
const CONTENDED_ROUNDS: usize = 20;
/// Between sweeps of the unfinished runs (what a missed event would leave waiting).
const SWEEP_EVERY: Duration = Duration::from_secs(10);
/// Most runs one listing returns.
pub const MAX_LIST: u32 = 1_000;

pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn absent(key: &[u8]) -> Compare {
    Compare { key: key.to_vec(), op: CompareOp::Equal, target: CompareTarget::CreateRevision(0) }
}

fn unchanged(kv: &KeyValue) -> Compare {
    Compare { key: kv.key.clone(), op: CompareOp::Equal, target: CompareTarget::ModRevision(kv.mod_revision) }
}

fn put(key: Vec<u8>, value: Vec<u8>) -> TxnOp {
    TxnOp::Put { key, value, lease: None }
}

fn kv_error(e: aspen_kv::KvError) -> AspenError {
    match e {
        aspen_kv::KvError::Aspen(e) => e,
        other => AspenError::Unavailable { reason: other.to_string() },
    }
}

fn coord_error(e: aspen_coord::CoordError) -> AspenError {
    AspenError::internal(e.to_string())
}

/// A new run, as a trigger asks for it.
#[derive(Debug, Clone)]
pub struct NewRun {
    pub repo: String,
    pub ref_name: String,
    pub commit: [u8; 20],
    pub trigger: Trigger,
    pub forced: bool,
    pub trusted: bool,
    /// Jobs known already (a retry copies them): the run starts running without evaluation.
    pub jobs: Option<BTreeMap<String, JobRecord>>,
}

/// A run and its jobs, as read at one revision.
#[derive(Debug, Clone)]
pub struct RunView {
    pub number: u64,
    pub run: RunRecord,
    pub jobs: BTreeMap<String, JobRecord>,
}

/// CI on one node.
pub struct CiService {
    kv: SharedKv,
    pool: WorkPool,
}

impl CiService {
    pub fn new(kv: SharedKv) -> Result<CiService, AspenError> {
        let pool = WorkPool::new(kv.clone(), POOL).map_err(coord_error)?;
        Ok(CiService { kv, pool })
    }

    /// A transaction, tried again while the cluster is between leaders. Safe because every
    /// transaction here compares what it read: a repeat of one that went through fails its
    /// compares, and the caller reads again.
    async fn txn(&self, txn: Txn) -> Result<aspen_kv::TxnResponse, AspenError> {
        let mut delay = Duration::from_millis(50);
        for _ in 0..10 {
            match self.kv.txn(txn.clone()).await {
                Err(e) if e.is_transient() => {
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
                other => return other.map_err(kv_error),
            }
        }
        self.kv.txn(txn).await.map_err(kv_error)
    }

    async fn get(&self, key: &[u8]) -> Result<Option<KeyValue>, AspenError> {
        self.kv.get(key, ReadConsistency::Linearizable).await.map_err(kv_error)
    }

    pub async fn repo_config(&self, repo: &str) -> Result<Option<RepoConfig>, AspenError> {
        let key = records::repo_key(repo);
        self.get(&key).await?.map(|kv| records::decode("a repository's CI settings", &key, &kv.value)).transpose()
    }

    pub async fn enable(&self, repo: &str, by: &str) -> Result<RepoConfig, AspenError> {
        aspen_forge::names::validate_repo_name(repo)?;
        let config = RepoConfig { enabled_ms: now_ms(), enabled_by: by.to_string() };
        self.kv.put(records::repo_key(repo), records::encode(&config)?).await.map_err(kv_error)?;
        Ok(config)
    }

    pub async fn disable(&self, repo: &str) -> Result<bool, AspenError> {
        Ok(self.kv.delete(records::repo_key(repo)).await.map_err(kv_error)?.deleted > 0)
    }

    /// Trusts (or stops trusting) patch revisions of `repo` signed by `key` (hex); answers
    /// the keys trusted after it.
    pub async fn trust(&self, repo: &str, key: &str, trusted: bool) -> Result<Vec<String>, AspenError> {
        let bytes = records::parse_key_hex(key).ok_or_else(|| {
            AspenError::invalid(format!(
                "{key:?} is not a public key: 64 hex digits, as `aspen identity show` prints it"
            ))
        })?;
        let key = records::trust_key(repo, &records::hex(&bytes));
        if trusted {
            self.kv.put(key, Vec::new()).await.map_err(kv_error)?;
        } else {
            self.kv.delete(key).await.map_err(kv_error)?;
        }
        self.trusted(repo).await
    }

    /// The keys (hex) whose patch revisions of `repo` are trusted.
    pub async fn trusted(&self, repo: &str) -> Result<Vec<String>, AspenError> {
        let prefix = records::trust_prefix(repo);
        let (kvs, _) = self.kv.scan_all(&prefix, ReadConsistency::Linearizable).await.map_err(kv_error)?;
        Ok(kvs.iter().map(|kv| String::from_utf8_lossy(&kv.key[prefix.len()..]).into_owned()).collect())
    }

    /// Stores secret `name` of `repo`, sealed by `secrets`.
    pub async fn set_secret(
        &self,
        secrets: &aspen_app::SecretBox,
        repo: &str,
        name: &str,
        value: &[u8],
    ) -> Result<(), AspenError> {
        records::validate_secret_name(name)?;
        if value.len() > records::MAX_SECRET_BYTES {
            return Err(AspenError::invalid(format!(
                "secret {name} is {} bytes, over the {} byte limit",
                value.len(),
                records::MAX_SECRET_BYTES
            )));
        }
        let key = records::secret_key(repo, name);
        let sealed = secrets.seal(&key, value)?;
        self.kv.put(key, sealed).await.map_err(kv_error)?;
        Ok(())
    }

    /// Deletes secret `name` of `repo`; false when there was none.
    pub async fn delete_secret(&self, repo: &str, name: &str) -> Result<bool, AspenError> {
        records::validate_secret_name(name)?;
        Ok(self.kv.delete(records::secret_key(repo, name)).await.map_err(kv_error)?.deleted > 0)
    }

    /// The names of `repo`'s secrets.
    pub async fn secret_names(&self, repo: &str) -> Result<Vec<String>, AspenError> {
        let prefix = records::secrets_prefix(repo);
        let (kvs, _) = self.kv.scan_all(&prefix, ReadConsistency::Linearizable).await.map_err(kv_error)?;
        Ok(kvs.iter().map(|kv| String::from_utf8_lossy(&kv.key[prefix.len()..]).into_owned()).collect())
    }

    /// The secrets job `job` of run `number` names, opened, for the worker running it: only
    /// while it runs, and only in a trusted run.
    pub async fn job_secrets(
        &self,
        secrets: &aspen_app::SecretBox,
        number: u64,
        job: &str,
    ) -> Result<Vec<(String, Vec<u8>)>, AspenError> {
        let view = self.show(number).await?.ok_or_else(|| AspenError::invalid(format!("there is no run {number}")))?;
        let record =
            view.jobs.get(job).ok_or_else(|| AspenError::invalid(format!("run {number} has no job {job:?}")))?;
        if !view.run.trusted {
            return Err(AspenError::invalid(format!(
                "run {number} is of a patch from an untrusted author: its jobs get no secrets"
            )));
        }
        if record.state != State::Running {
            return Err(AspenError::invalid(format!(
                "job {job} of run {number} is {}: secrets are given only to a running job",
                record.state.name()
            )));
        }
        let mut out = Vec::new();
        for name in record.def()?.secrets {
            let key = records::secret_key(&view.run.repo, &name);
            let kv = self.get(&key).await?.ok_or_else(|| {
                AspenError::invalid(format!(
                    "job {job} names secret {name}, which {} does not have (`aspen ci secret set {} {name}`)",
                    view.run.repo, view.run.repo
                ))
            })?;
            out.push((name, secrets.open(&key, &kv.value)?));
        }
        Ok(out)
    }

    /// Creates the run `source` asks for, unless `source` started one already; returns its
    /// number and whether it is new.
    pub async fn create_run(&self, source: &str, new: NewRun) -> Result<(u64, bool), AspenError> {
        let trigger_key = records::trigger_key(source);
        let counter_key = records::next_run_key();
        for _ in 0..CONTENDED_ROUNDS {
            let counter = self.get(&counter_key).await?;
            let number = match &counter {
                Some(kv) => u64::from_be_bytes(
                    kv.value.as_slice().try_into().map_err(|_| AspenError::internal("next-run is not 8 bytes"))?,
                ),
                None => 1,
            };
            let running = new.jobs.is_some();
            let run = RunRecord {
                repo: new.repo.clone(),
                ref_name: new.ref_name.clone(),
                commit: new.commit,
                trigger: new.trigger.clone(),
                state: if running { State::Running } else { State::Pending },
                message: None,
                created_ms: now_ms(),
                finished_ms: None,
                jobs: new.jobs.as_ref().map(|j| j.keys().cloned().collect()).unwrap_or_default(),
                cancel_requested: false,
                forced: new.forced,
                trusted: new.trusted,
            };
            let mut compare =
                vec![counter.as_ref().map(unchanged).unwrap_or_else(|| absent(&counter_key)), absent(&trigger_key)];
            let mut success = vec![
                put(counter_key.clone(), (number + 1).to_be_bytes().to_vec()),
                put(trigger_key.clone(), number.to_be_bytes().to_vec()),
                put(records::run_key(number), records::encode(&run)?),
                put(records::by_repo_key(&new.repo, number), Vec::new()),
                put(records::active_key(number), Vec::new()),
            ];
            match &new.jobs {
                Some(jobs) => {
                    for (name, job) in jobs {
                        success.push(put(records::job_key(number, name), records::encode(job)?));
                    }
                }
                None => {
                    let spec = TaskSpec { run: number, job: None, attempt: 1, executor: None, cpus: 1, memory_mib: 0 };
                    let (c, ops) = self
                        .pool
                        .submit_ops(&records::task_id(number, None, 1), records::encode(&spec)?)
                        .map_err(coord_error)?;
                    compare.extend(c);
                    success.extend(ops);
                }
            }
            let resp =
                self.txn(Txn { compare, success, failure: vec![TxnOp::Get { key: trigger_key.clone() }] }).await?;
            if resp.succeeded {
                tracing::info!(run = number, repo = %new.repo, commit = %records::hex(&new.commit), source, "run created");
                return Ok((number, true));
            }
            if let Some(TxnOpResult::Get { kv: Some(kv) }) = resp.results.first() {
                let number = u64::from_be_bytes(kv.value.as_slice().try_into().unwrap_or([0; 8]));
                return Ok((number, false));
            }
            // Another run took the number meanwhile: read it again.
        }
        Err(AspenError::Unavailable { reason: "run numbers kept moving under concurrent triggers".into() })
    }

    pub async fn run(&self, number: u64) -> Result<Option<(KeyValue, RunRecord)>, AspenError> {
        let key = records::run_key(number);
        match self.get(&key).await? {
            Some(kv) => {
                let run = records::decode("a run", &key, &kv.value)?;
                Ok(Some((kv, run)))
            }
            None => Ok(None),
        }
    }

    async fn jobs_kv(&self, number: u64) -> Result<BTreeMap<String, (KeyValue, JobRecord)>, AspenError> {
        let prefix = records::jobs_prefix(number);
        let (kvs, _) = self.kv.scan_all(&prefix, ReadConsistency::Linearizable).await.map_err(kv_error)?;
        let mut jobs = BTreeMap::new();
        for kv in kvs {
            let name = String::from_utf8_lossy(&kv.key[prefix.len()..]).into_owned();
            let job: JobRecord = records::decode("a job", &kv.key, &kv.value)?;
            jobs.insert(name, (kv, job));
        }
        Ok(jobs)
    }

    pub async fn show(&self, number: u64) -> Result<Option<RunView>, AspenError> {
        let Some((_, run)) = self.run(number).await? else { return Ok(None) };
        let jobs = self.jobs_kv(number).await?.into_iter().map(|(n, (_, j))| (n, j)).collect();
        Ok(Some(RunView { number, run, jobs }))
    }

    /// Says of each queued job in `views` that no live worker takes, why: what it asks and
    /// what the live workers offer (or that none runs). Only shown, never stored. Says
    /// nothing when it cannot tell: a live worker that published no offer (an older one, or
    /// one just starting), or a failed read.
    pub async fn note_waiting(&self, views: &mut [RunView]) {
        let queued = |j: &JobRecord| j.state == State::Queued;
        if !views.iter().any(|v| v.jobs.values().any(queued)) {
            return;
        }
        let offers = match self.live_offers().await {
            Ok(Some(offers)) => offers,
            Ok(None) => return,
            Err(e) => {
                tracing::debug!("ci: reading the workers' offers: {e}");
                return;
            }
        };
        for job in views.iter_mut().flat_map(|v| v.jobs.values_mut()).filter(|j| queued(j)) {
            let Ok(def) = job.def() else { continue };
            let spec = TaskSpec {
                run: 0,
                job: None,
                attempt: job.attempt,
                executor: Some(job.executor),
                cpus: def.resources.cpus,
                memory_mib: def.resources.memory_mib,
            };
            if offers.iter().any(|(_, p)| p.takes(&spec)) {
                continue;
            }
            let note = waiting_note(&spec, &offers);
            job.message = Some(match job.message.take() {
                Some(before) => format!("{before}; {note}"),
                None => note,
            });
        }
    }

    /// What each live worker of the pool offers, by id; `None` when one of them published
    /// no offer on its current lease.
    async fn live_offers(&self) -> Result<Option<Vec<(String, WorkerProfile)>>, AspenError> {
        let live = self.pool.list_workers().await.map_err(coord_error)?;
        let prefix = records::worker_prefix();
        let (kvs, _) = self.kv.scan_all(&prefix, ReadConsistency::Linearizable).await.map_err(kv_error)?;
        let mut published = BTreeMap::new();
        for kv in kvs {
            let id = String::from_utf8_lossy(&kv.key[prefix.len()..]).into_owned();
            let profile: WorkerProfile = records::decode("a worker's offer", &kv.key, &kv.value)?;
            published.insert(id, (kv.lease, profile));
        }
        let mut offers = Vec::new();
        for worker in live {
            match published.remove(&worker.id) {
                Some((lease, profile)) if lease == worker.lease => offers.push((worker.id, profile)),
                _ => return Ok(None),
            }
        }
        Ok(Some(offers))
    }

    /// Runs of `repo` (or of every repository), newest first, numbered below `before`.
    pub async fn list(&self, repo: Option<&str>, before: Option<u64>, limit: u32) -> Result<Vec<RunView>, AspenError> {
        let limit = limit.clamp(1, MAX_LIST);
        let numbers: Vec<u64> = match repo {
            Some(repo) => {
                let prefix = records::by_repo_prefix(repo);
                let (kvs, _) = self.kv.scan_all(&prefix, ReadConsistency::Linearizable).await.map_err(kv_error)?;
                kvs.iter().filter_map(|kv| std::str::from_utf8(&kv.key[prefix.len()..]).ok()?.parse().ok()).collect()
            }
            None => {
                let (kvs, _) =
                    self.kv.scan_all(records::run_prefix(), ReadConsistency::Linearizable).await.map_err(kv_error)?;
                kvs.iter().filter_map(|kv| records::run_of_key(&kv.key)).collect()
            }
        };
        let mut out = Vec::new();
        for number in numbers.into_iter().rev().filter(|n| before.is_none_or(|b| *n < b)).take(limit as usize) {
            if let Some(view) = self.show(number).await? {
                out.push(view);
            }
        }
        Ok(out)
    }

    /// Takes every step the plan allows for run `number`, until it allows none.
    pub async fn advance(&self, number: u64) -> Result<(), AspenError> {
        for _ in 0..CONTENDED_ROUNDS {
            let Some((run_kv, run)) = self.run(number).await? else { return Ok(()) };
            let jobs_kv = self.jobs_kv(number).await?;
            let jobs: BTreeMap<String, JobRecord> = jobs_kv.iter().map(|(n, (_, j))| (n.clone(), j.clone())).collect();
            let actions = plan::advance(&run, &jobs);
            if actions.is_empty() {
                return self.report(number, &run_kv, &run, &jobs).await;
            }
            for action in actions {
                self.carry_out(number, &run_kv, &run, &jobs_kv, action).await?;
            }
        }
        Ok(())
    }

    async fn carry_out(
        &self,
        number: u64,
        run_kv: &KeyValue,
        run: &RunRecord,
        jobs: &BTreeMap<String, (KeyValue, JobRecord)>,
        action: Action,
    ) -> Result<(), AspenError> {
        let txn = match action {
            Action::Queue { job } => {
                let (kv, record) = &jobs[&job];
                let def = record.def()?;
                let mut next = record.clone();
                next.state = State::Queued;
                next.queued_ms = Some(now_ms());
                let spec = TaskSpec {
                    run: number,
                    job: Some(job.clone()),
                    attempt: record.attempt,
                    executor: Some(record.executor),
                    cpus: def.resources.cpus,
                    memory_mib: def.resources.memory_mib,
                };
                let (c, ops) = self
                    .pool
                    .submit_ops(&records::task_id(number, Some(&job), record.attempt), records::encode(&spec)?)
                    .map_err(coord_error)?;
                let mut success = vec![put(kv.key.clone(), records::encode(&next)?)];
                success.extend(ops);
                Txn { compare: [vec![unchanged(kv)], c].concat(), success, failure: vec![] }
            }
            Action::Skip { job, because } => {
                let (kv, record) = &jobs[&job];
                let mut next = record.clone();
                next.state = State::Skipped;
                next.message = Some(because);
                next.finished_ms = Some(now_ms());
                Txn {
                    compare: vec![unchanged(kv)],
                    success: vec![put(kv.key.clone(), records::encode(&next)?)],
                    failure: vec![],
                }
            }
            Action::Cancel { job } => {
                let (kv, record) = &jobs[&job];
                let mut next = record.clone();
                next.state = State::Cancelled;
                next.message = Some("cancelled before it started".into());
                next.finished_ms = Some(now_ms());
                let mut compare = vec![unchanged(kv)];
                let mut success = vec![put(kv.key.clone(), records::encode(&next)?)];
                if record.state == State::Queued {
                    // Only while no worker holds it: a claimed job is the worker's to end.
                    let (c, op) = self
                        .pool
                        .withdraw_ops(&records::task_id(number, Some(&job), record.attempt))
                        .map_err(coord_error)?;
                    compare.push(c);
                    success.push(op);
                }
                Txn { compare, success, failure: vec![] }
            }
            Action::Finish { state, message } => {
                let mut next = run.clone();
                next.state = state;
                next.message = message;
                next.finished_ms = Some(now_ms());
                tracing::info!(run = number, state = state.name(), "run finished");
                Txn {
                    compare: vec![unchanged(run_kv)],
                    // `active/` goes once the end is reported on the commit (`report`).
                    success: vec![put(run_kv.key.clone(), records::encode(&next)?)],
                    failure: vec![],
                }
            }
        };
        // A failed compare means another node (or a worker) moved the record first; the
        // next round of `advance` reads it again.
        self.txn(txn).await.map(drop)
    }

    /// Deletes the finished runs of each repository past its newest `keep`, with their jobs,
    /// logs, artifacts' and logs' blob pins, trigger markers and reuse records. A run that a
    /// kept run's job reused stays (the kept job shows its log). Safe beside other nodes
    /// doing the same: each run goes in transactions that compare it unchanged.
    pub async fn prune(&self, repo: Option<&str>, keep: usize) -> Result<PruneReport, AspenError> {
        let (kvs, _) =
            self.kv.scan_all(records::run_prefix(), ReadConsistency::Linearizable).await.map_err(kv_error)?;
        let mut by_repo: BTreeMap<String, Vec<(u64, KeyValue, RunRecord)>> = BTreeMap::new();
        for kv in kvs {
            let Some(number) = records::run_of_key(&kv.key) else { continue };
            let run: RunRecord = records::decode("a run", &kv.key, &kv.value)?;
            if repo.is_none_or(|r| r == run.repo) {
                by_repo.entry(run.repo.clone()).or_default().push((number, kv, run));
            }
        }
        // Trigger markers and reuse records, by the run they name.
        let mut triggers: BTreeMap<u64, Vec<KeyValue>> = BTreeMap::new();
        let prefix = format!("{}trigger/", records::CI_PREFIX).into_bytes();
        for kv in self.kv.scan_all(&prefix, ReadConsistency::Linearizable).await.map_err(kv_error)?.0 {
            if let Ok(bytes) = <[u8; 8]>::try_from(kv.value.as_slice()) {
                triggers.entry(u64::from_be_bytes(bytes)).or_default().push(kv);
            }
        }
        let mut reuses: BTreeMap<u64, Vec<KeyValue>> = BTreeMap::new();
        let prefix = format!("{}done/", records::CI_PREFIX).into_bytes();
        for kv in self.kv.scan_all(&prefix, ReadConsistency::Linearizable).await.map_err(kv_error)?.0 {
            if let Ok(reuse) = records::decode::<records::Reuse>("a reuse record", &kv.key, &kv.value) {
                reuses.entry(reuse.run).or_default().push(kv);
            }
        }
        let mut report = PruneReport::default();
        for (_, mut runs) in by_repo {
            runs.sort_by_key(|(n, _, _)| std::cmp::Reverse(*n));
            let mut kept = std::collections::BTreeSet::new();
            for (i, (number, _, run)) in runs.iter().enumerate() {
                if i < keep || !run.state.is_final() {
                    kept.insert(*number);
                }
            }
            // What kept runs link to stays, and what those link to.
            let mut look: Vec<u64> = kept.iter().copied().collect();
            while let Some(number) = look.pop() {
                for (_, (_, job)) in self.jobs_kv(number).await? {
                    if let Some(from) = job.reused_from
                        && kept.insert(from)
                    {
                        look.push(from);
                    }
                }
            }
            for (number, kv, run) in runs.into_iter().filter(|(n, _, _)| !kept.contains(n)) {
                let markers = triggers.remove(&number).unwrap_or_default();
                let linked = reuses.remove(&number).unwrap_or_default();
                report.reuse_records += self.delete_run(number, &kv, &run, &markers, &linked).await?;
                report.runs += 1;
            }
        }
        Ok(report)
    }

    /// Deletes finished run `number` (its record read as `kv`): its reuse records (those
    /// still naming it), trigger markers, jobs, blob pins and log pieces first, its record
    /// last, so a pruning cut short leaves the run for the next one to finish. Returns how
    /// many reuse records went.
    async fn delete_run(
        &self,
        number: u64,
        kv: &KeyValue,
        run: &RunRecord,
        markers: &[KeyValue],
        linked: &[KeyValue],
    ) -> Result<u64, AspenError> {
        // A reuse record a newer success replaced (same inputs) meanwhile stays.
        let mut reuse_records = 0;
        for reuse in linked {
            let txn = Txn {
                compare: vec![unchanged(reuse)],
                success: vec![TxnOp::Delete { key: reuse.key.clone() }],
                failure: vec![],
            };
            reuse_records += u64::from(self.txn(txn).await?.succeeded);
        }
        let pin_prefix = aspen_blob::records::pin_key(&format!("{}{number}/", records::PIN_SCOPE));
        let (pins, _) = self.kv.scan_all(&pin_prefix, ReadConsistency::Linearizable).await.map_err(kv_error)?;
        let mut ops: Vec<TxnOp> = markers.iter().map(|m| TxnOp::Delete { key: m.key.clone() }).collect();
        ops.extend(self.jobs_kv(number).await?.values().map(|(kv, _)| TxnOp::Delete { key: kv.key.clone() }));
        for pin in &pins {
            let (Some(name), Some(hash)) =
                (aspen_blob::records::pin_name(&pin.key), aspen_blob::records::pin_hash(&pin.value))
            else {
                continue;
            };
            ops.extend(aspen_blob::records::unpin_ops(name, &hash));
        }
        for chunk in ops.chunks(aspen_core::limits::MAX_TXN_OPS) {
            self.txn(Txn { compare: vec![], success: chunk.to_vec(), failure: vec![] }).await?;
        }
        let logs = format!("{}log/{number:012}/", records::CI_PREFIX).into_bytes();
        self.kv.delete_prefix(logs).await.map_err(kv_error)?;
        // A finished run does not change; the compare only keeps two prunings from racing.
        let txn = Txn {
            compare: vec![unchanged(kv)],
            success: vec![
                TxnOp::Delete { key: kv.key.clone() },
                TxnOp::Delete { key: records::by_repo_key(&run.repo, number) },
                TxnOp::Delete { key: records::active_key(number) },
            ],
            failure: vec![],
        };
        self.txn(txn).await?;
        tracing::info!(run = number, repo = %run.repo, "run pruned");
        Ok(reuse_records)
    }

    /// Prunes every `every`, keeping `keep` finished runs per repository.
    pub async fn prune_every(self: Arc<Self>, every: Duration, keep: usize, stop: CancellationToken) {
        loop {
            if sleep_or_stop(&stop, every).await {
                return;
            }
            match self.prune(None, keep).await {
                Ok(report) if report.runs > 0 => tracing::info!(runs = report.runs, "ci: old runs pruned"),
                Ok(_) => {}
                Err(e) => tracing::warn!("ci: pruning old runs: {e}"),
            }
        }
    }

    /// Reports where run `number` stands as its commit's status in the forge (context
    /// [`plan::status_context`], ordered by run number), unless it says so already or a newer
    /// run reported on the commit; a finished run then leaves `active/`. Compares the run
    /// record, so a node that read an older state cannot write over a newer one.
    async fn report(
        &self,
        number: u64,
        run_kv: &KeyValue,
        run: &RunRecord,
        jobs: &BTreeMap<String, JobRecord>,
    ) -> Result<(), AspenError> {
        let context = plan::status_context(run);
        let mut status = plan::commit_status(number, run, jobs);
        let key = aspen_forge::status::status_key(&run.repo, &run.commit, context);
        let current = self.get(&key).await?;
        let stored: Option<CommitStatus> = current.as_ref().and_then(|kv| postcard::from_bytes(&kv.value).ok());
        let said = stored.as_ref().is_some_and(|s| {
            s.seq > number
                || (s.seq == number
                    && s.state == status.state
                    && s.description
                        == aspen_forge::status::clip(&status.description, aspen_forge::status::MAX_DESCRIPTION))
        });
        let mut compare = vec![unchanged(run_kv)];
        let mut success = Vec::new();
        if !said {
            status.updated_ms = now_ms();
            status.by = "ci".into();
            let step = aspen_forge::status::status_step(
                &run.repo,
                &run.commit,
                context,
                &status,
                current.as_ref().map(|kv| (kv.value.as_slice(), kv.mod_revision)),
            )?;
            if let Some((c, op)) = step {
                compare.push(c);
                success.push(op);
            }
        }
        let active = records::active_key(number);
        if run.state.is_final() && self.get(&active).await?.is_some() {
            success.push(TxnOp::Delete { key: active });
        }
        if success.is_empty() {
            return Ok(());
        }
        // A failed compare: the run or the status moved; whoever moved it reports (the
        // watch wakes every scheduler, and the sweep covers what it misses).
        self.txn(Txn { compare, success, failure: vec![] }).await.map(drop)
    }

    /// Asks run `number` to stop: what has not started is cancelled here, what runs is
    /// killed by its worker, which sees the request.
    pub async fn cancel(&self, number: u64, by: &str) -> Result<RunRecord, AspenError> {
        for _ in 0..CONTENDED_ROUNDS {
            let Some((kv, run)) = self.run(number).await? else {
                return Err(AspenError::invalid(format!("there is no run {number}")));
            };
            if run.state.is_final() || run.cancel_requested {
                return Ok(run);
            }
            let mut next = run.clone();
            next.cancel_requested = true;
            next.message = Some(format!("cancelled by {by}"));
            // A run still evaluating is ended by its evaluation's worker, which sees the mark.
            let txn = Txn {
                compare: vec![unchanged(&kv)],
                success: vec![put(kv.key.clone(), records::encode(&next)?)],
                failure: vec![],
            };
            if self.txn(txn).await?.succeeded {
                self.advance(number).await?;
                return Ok(next);
            }
        }
        Err(AspenError::Unavailable { reason: format!("run {number} kept changing while cancelling it") })
    }

    /// A new run of `number`'s commit that runs again its jobs that did not succeed (or
    /// `only` and what failed after it); the others keep their success.
    pub async fn retry(&self, number: u64, only: Option<&str>, by: &str) -> Result<u64, AspenError> {
        let Some(view) = self.show(number).await? else {
            return Err(AspenError::invalid(format!("there is no run {number}")));
        };
        if !view.run.state.is_final() {
            return Err(AspenError::invalid(format!(
                "run {number} is still {}; cancel it or wait before retrying",
                view.run.state.name()
            )));
        }
        if view.jobs.is_empty() {
            return Err(AspenError::invalid(format!(
                "run {number} has no jobs (its pipeline did not evaluate): push a fix, or `aspen ci run` again"
            )));
        }
        if let Some(job) = only
            && !view.jobs.contains_key(job)
        {
            return Err(AspenError::invalid(format!("run {number} has no job {job:?}")));
        }
        let again = plan::retry_set(&view.jobs, only);
        let jobs = view
            .jobs
            .iter()
            .map(|(name, job)| {
                let mut next = job.clone();
                if again.contains(name) {
                    next.state = State::Pending;
                    next.attempt = 1;
                    next.worker = None;
                    next.queued_ms = None;
                    next.started_ms = None;
                    next.finished_ms = None;
                    next.exit_code = None;
                    next.message = None;
                    next.log_blob = None;
                    next.log_bytes = 0;
                    next.artifacts = Vec::new();
                    next.reused_from = None;
                } else {
                    next.reused_from = Some(job.reused_from.unwrap_or(number));
                }
                (name.clone(), next)
            })
            .collect();
        let source = format!("retry/{number}/{}", rand::random::<u64>());
        let new = NewRun {
            repo: view.run.repo,
            ref_name: view.run.ref_name,
            commit: view.run.commit,
            trigger: Trigger::Retry { of: number, by: by.to_string() },
            forced: true,
            trusted: view.run.trusted,
            jobs: Some(jobs),
        };
        let (retried, _) = self.create_run(&source, new).await?;
        self.advance(retried).await?;
        Ok(retried)
    }

    /// Follows the forge's push events from where this node's last look ended and starts a
    /// run for each push to an enabled repository. Every node does this; the trigger key
    /// makes each push start one run.
    pub async fn follow_pushes(self: Arc<Self>, stop: CancellationToken) {
        self.follow(Events::Pushes, stop).await
    }

    /// Follows the forge's patch revision events, as [`Self::follow_pushes`] does pushes:
    /// one run per revision of a patch to an enabled repository.
    pub async fn follow_patches(self: Arc<Self>, stop: CancellationToken) {
        self.follow(Events::Revisions, stop).await
    }

    async fn follow(&self, events: Events, stop: CancellationToken) {
        let cursor_key = records::cursor_key(events.cursor());
        loop {
            // Without a cursor, from the start of the watch history (or of the events, when
            // that is gone): an event counts only if its repository was enabled before it.
            let from = match self.get(&cursor_key).await {
                Ok(Some(kv)) => u64::from_be_bytes(kv.value.as_slice().try_into().unwrap_or([0; 8])),
                Ok(None) => 0,
                Err(e) => {
                    tracing::debug!("ci: waiting for the cluster: {e}");
                    if sleep_or_stop(&stop, Duration::from_secs(1)).await {
                        return;
                    }
                    continue;
                }
            };
            let mut watch = self.kv.watch(events.prefix().as_bytes(), from + 1);
            loop {
                let event = tokio::select! {
                    () = stop.cancelled() => return,
                    e = watch.next() => e,
                };
                match event {
                    Some(Ok(event)) if event.kind == aspen_kv::EventKind::Put => {
                        if let Err(e) = self.on_event(events, &event.kv).await {
                            tracing::warn!("ci: a forge event was not handled (will retry): {e}");
                            if sleep_or_stop(&stop, Duration::from_secs(1)).await {
                                return;
                            }
                            break;
                        }
                        let _ = self.kv.put(&cursor_key, event.revision().to_be_bytes().to_vec()).await;
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        if matches!(e.aspen(), Some(AspenError::Compacted { .. })) {
                            if let Err(e) = self.catch_up(events, &cursor_key, from).await {
                                tracing::warn!("ci: catching up on forge events: {e}");
                            }
                        } else {
                            tracing::debug!("ci: the forge event watch broke: {e}");
                        }
                        if sleep_or_stop(&stop, Duration::from_millis(500)).await {
                            return;
                        }
                        break;
                    }
                    None => break,
                }
            }
        }
    }

    /// After the watch history lost events: every event newer than the cursor, read from
    /// the events themselves (the forge keeps them).
    async fn catch_up(&self, events: Events, cursor_key: &[u8], from: u64) -> Result<(), AspenError> {
        let (kvs, revision) =
            self.kv.scan_all(events.prefix().as_bytes(), ReadConsistency::Linearizable).await.map_err(kv_error)?;
        for kv in kvs.iter().filter(|kv| kv.mod_revision > from) {
            self.on_event(events, kv).await?;
        }
        self.kv.put(cursor_key, revision.to_be_bytes().to_vec()).await.map_err(kv_error)?;
        Ok(())
    }

    async fn on_event(&self, events: Events, kv: &KeyValue) -> Result<(), AspenError> {
        match events {
            Events::Pushes => self.on_push(kv).await,
            Events::Revisions => self.on_revision(kv).await,
        }
    }

    /// Whether `repo` was enabled before the event written at `revision`.
    async fn enabled_before(&self, repo: &str, revision: u64) -> Result<bool, AspenError> {
        Ok(matches!(self.get(&records::repo_key(repo)).await?, Some(config) if config.create_revision < revision))
    }

    /// Starts the run of one new revision of a patch: trusted when its author is.
    async fn on_revision(&self, kv: &KeyValue) -> Result<(), AspenError> {
        let event: RevisionEvent = match postcard::from_bytes(&kv.value) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(key = %String::from_utf8_lossy(&kv.key), "ci: a revision event does not read: {e}");
                return Ok(());
            }
        };
        if !self.enabled_before(&event.repo, kv.mod_revision).await? {
            return Ok(());
        }
        let author = records::hex(&event.author);
        let trusted = self.get(&records::trust_key(&event.repo, &author)).await?.is_some();
        let new = NewRun {
            repo: event.repo.clone(),
            ref_name: aspen_forge::names::branch_ref(&event.target),
            commit: event.head,
            trigger: Trigger::Patch { patch: records::hex(&event.patch), revision: event.number },
            forced: false,
            trusted,
            jobs: None,
        };
        self.create_run(&format!("patch/{}", records::hex(&event.revision)), new).await.map(drop)
    }

    async fn on_push(&self, kv: &KeyValue) -> Result<(), AspenError> {
        let event: PushEvent = match postcard::from_bytes(&kv.value) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(key = %String::from_utf8_lossy(&kv.key), "ci: a push event does not read: {e}");
                return Ok(());
            }
        };
        let Some(commit) = event.new else { return Ok(()) };
        if !(event.ref_name.starts_with("refs/heads/") || event.ref_name.starts_with("refs/tags/")) {
            return Ok(());
        }
        // Only pushes made after the repository was enabled.
        if !self.enabled_before(&event.repo, kv.mod_revision).await? {
            return Ok(());
        }
        let id = String::from_utf8_lossy(&kv.key[EVENT_PREFIX.len()..]).into_owned();
        let new = NewRun {
            repo: event.repo.clone(),
            ref_name: event.ref_name.clone(),
            commit,
            trigger: Trigger::Push { event: id.clone(), pusher: event.pusher.clone() },
            forced: false,
            trusted: true,
            jobs: None,
        };
        self.create_run(&format!("push/{id}"), new).await.map(drop)
    }

    /// Advances every run whose jobs or record change, and, every [`SWEEP_EVERY`], every
    /// unfinished run.
    pub async fn follow_jobs(self: Arc<Self>, stop: CancellationToken) {
        let mut sweep = tokio::time::interval(SWEEP_EVERY);
        loop {
            let from = match self.kv.get_with_revision(&records::next_run_key(), ReadConsistency::Linearizable).await {
                Ok(r) => r.revision,
                Err(_) => {
                    if sleep_or_stop(&stop, Duration::from_secs(1)).await {
                        return;
                    }
                    continue;
                }
            };
            self.sweep().await;
            // Runs and jobs only: the log pieces workers write (most of CI's writes) wake
            // nothing here.
            let mut runs = self.kv.watch(&records::run_prefix(), from + 1);
            let mut jobs = self.kv.watch(&records::all_jobs_prefix(), from + 1);
            loop {
                let event = tokio::select! {
                    () = stop.cancelled() => return,
                    _ = sweep.tick() => { self.sweep().await; continue; }
                    e = runs.next() => e,
                    e = jobs.next() => e,
                };
                match event {
                    Some(Ok(event)) => {
                        let number =
                            records::run_of_job_key(&event.kv.key).or_else(|| records::run_of_key(&event.kv.key));
                        if let Some(number) = number
                            && let Err(e) = self.advance(number).await
                        {
                            tracing::debug!(run = number, "ci: advancing: {e}");
                        }
                    }
                    Some(Err(e)) => {
                        tracing::debug!("ci: the job watch broke: {e}");
                        break;
                    }
                    None => break,
                }
            }
            if sleep_or_stop(&stop, Duration::from_millis(200)).await {
                return;
            }
        }
    }

    async fn sweep(&self) {
        let Ok((kvs, _)) = self.kv.scan_all(records::active_prefix(), ReadConsistency::Linearizable).await else {
            return;
        };
        let prefix = records::active_prefix();
        for kv in kvs {
            let Some(number) = std::str::from_utf8(&kv.key[prefix.len()..]).ok().and_then(|s| s.parse().ok()) else {
                continue;
            };
            if let Err(e) = self.advance(number).await {
                tracing::debug!(run = number, "ci: sweeping: {e}");
            }
        }
    }
}

/// The forge's event streams CI follows.
#[derive(Debug, Clone, Copy)]
enum Events {
    Pushes,
    Revisions,
}

impl Events {
    fn prefix(self) -> &'static str {
        match self {
            Events::Pushes => EVENT_PREFIX,
            Events::Revisions => REVISION_EVENT_PREFIX,
        }
    }

    fn cursor(self) -> &'static str {
        match self {
            Events::Pushes => "push",
            Events::Revisions => "patch",
        }
    }
}

/// Sleeps `d`; true when `stop` fired first.
async fn sleep_or_stop(stop: &CancellationToken, d: Duration) -> bool {
    tokio::select! {
        () = stop.cancelled() => true,
        () = tokio::time::sleep(d) => false,
    }
}

/// Why no live worker takes a job asking for `spec`.
fn waiting_note(spec: &TaskSpec, offers: &[(String, WorkerProfile)]) -> String {
    let kind = |k: &ExecutorKind| format!("{k:?}").to_lowercase();
    let asks = format!(
        "{} job with {} cpus and {} MiB",
        spec.executor.as_ref().map(kind).unwrap_or_else(|| "an evaluation".into()),
        spec.cpus,
        spec.memory_mib
    );
    if offers.is_empty() {
        return format!("waiting: no worker is running (it is a {asks})");
    }
    let offered: Vec<String> = offers
        .iter()
        .map(|(id, p)| {
            let kinds: Vec<String> = p.executors.iter().map(kind).collect();
            format!("{id}: {} up to {} cpus and {} MiB", kinds.join(","), p.max_cpus, p.max_memory_mib)
        })
        .collect();
    format!("waiting: no live worker takes a {asks} ({})", offered.join("; "))
}
