//! Worker coordination: a pool of tasks shared by registered workers, each claiming tasks up
//! to its capacity, with a dead worker's tasks going back to the others.
//!
//! Keys under `_aspen/coord/work/<pool>/`:
//!
//! - `workers/<worker id>`: `{"capacity": N}`, on the worker's session lease.
//! - `tasks/<task id>`: the payload, with no lease: a task stays until it is completed.
//! - `assign/<task id>`: the id of the worker that claimed the task, on **that worker's
//!   lease**.
//! - `done/<task id>`: `{"worker": ..., "claim_revision": R}`, the completion record.
//!
//! A claim is one transaction: "`assign/<task>` is absent, `tasks/<task>` is the version I
//! read, and `workers/<me>` is on my lease" then create `assign/<task>` on my lease. So a task
//! has at most one claim at a time, and only a live, registered worker makes one. When a
//! worker dies its lease ends, its assignments go with it, and the other workers (watching
//! for `assign/` deletes and `tasks/` puts) claim those tasks again: a dead worker's tasks are
//! reassigned within its TTL. Capacity is kept by each worker itself: it claims only while it
//! holds fewer assignments than its capacity.
//!
//! Completing is one transaction too: "`assign/<task>` is still my claim (my lease, the
//! revision I claimed at)" then delete the task and its assignment and write `done/<task>`.
//! A worker that lost its lease (paused, cut off) finds its claim gone and cannot complete,
//! so each task is completed at most once, and its `done/` record names the claim that did.
//! Execution is at least once: a worker that stalls past its TTL may still be running a task
//! that another worker has claimed since; only one of them completes it.
//!
//! Every write is idempotent (its failure branch reads back what an earlier attempt did), so
//! an `outcome_unknown` answer during a leader change is retried. Tasks are claimed in task id
//! order: use ids that sort in submission order (zero-padded numbers) for FIFO.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use aspen_kv::{
    Compare, CompareOp, CompareTarget, EventKind, KeyValue, LeaseId, ReadConsistency, SharedKv, Txn, TxnOp,
    TxnOpResult, key_successor, prefix_end,
};
use aspen_kv::{Kv as _, KvExt as _};
use serde::{Deserialize, Serialize};

use crate::idempotent::{is_lease_gone, retry};
use crate::name::{child_name, invalid, validate_name};
use crate::wake::wait_for;
use crate::{COORD_PREFIX, CoordError, Session};

/// Largest task payload: a page of [`TASK_PAGE`] tasks must fit in one response frame. Put
/// bigger inputs in their own keys and pass the key.
pub const MAX_TASK_PAYLOAD_BYTES: usize = 64 * 1024;
/// Tasks read per page while looking for one to claim, or listing.
const TASK_PAGE: u32 = 100;
/// Most tasks, assignments, workers or completions one listing reads.
pub const MAX_LISTED: usize = 10_000;
/// Largest capacity a worker may declare.
pub const MAX_WORKER_CAPACITY: usize = 10_000;
/// Rounds of create-or-rewrite a registration tries while its key keeps changing under it.
const REGISTER_ROUNDS: usize = 3;

/// A pool of tasks, as seen by whoever submits or inspects them; cheap to clone.
#[derive(Debug, Clone)]
pub struct WorkPool {
    client: SharedKv,
    name: String,
    workers: Vec<u8>,
    tasks: Vec<u8>,
    assign: Vec<u8>,
    done: Vec<u8>,
}

/// What [`WorkPool::submit`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Submitted {
    /// The task is new.
    Added,
    /// A task with this id is waiting or running (perhaps from an earlier attempt of the same
    /// submit whose answer was lost); it was left as it is.
    AlreadyPending,
    /// A task with this id was completed; it was not added again (see [`WorkPool::forget`]).
    AlreadyCompleted,
}

/// A registered worker, as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerInfo {
    pub id: String,
    pub capacity: usize,
    /// Tasks it holds claims on now.
    pub load: usize,
    pub lease: Option<LeaseId>,
}

/// A task not yet completed, as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskInfo {
    pub id: String,
    pub payload: Vec<u8>,
    /// The worker that claimed it, if any.
    pub assignee: Option<String>,
    pub submitted_revision: u64,
}

/// The record of a completed task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    pub task_id: String,
    pub worker: String,
    /// The revision of the claim that completed it.
    pub claim_revision: u64,
    /// The revision of the completion.
    pub revision: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct WorkerRecord {
    capacity: usize,
}

#[derive(Debug, Serialize, Deserialize)]
struct DoneRecord {
    worker: String,
    claim_revision: u64,
}

/// A worker registered in a pool on its session's lease.
#[derive(Debug)]
pub struct Worker {
    session: Session,
    pool: WorkPool,
    id: String,
    capacity: usize,
    key: Vec<u8>,
    /// Claims of this worker are made one at a time, so its load never passes its capacity.
    claiming: Arc<tokio::sync::Mutex<()>>,
}

/// A task this worker has claimed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Task {
    pub id: String,
    pub payload: Vec<u8>,
    /// The task's create revision: which submission of this id it is.
    submitted_revision: u64,
    /// The create revision of this worker's `assign/` key: which claim it is.
    claim_revision: u64,
}

/// What [`Worker::complete`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completed {
    /// The task is completed, by this claim.
    Done,
    /// The claim was lost before completing (the worker's lease ended, or it gave the task
    /// back): the task was not completed by this worker, and may be completed by another.
    Lost,
    /// The claim stands, but the caller's own compares failed: nothing was written.
    Refused,
}

fn key(prefix: &[u8], name: &str) -> Vec<u8> {
    [prefix, name.as_bytes()].concat()
}

fn absent(key: &[u8]) -> Compare {
    Compare { key: key.to_vec(), op: CompareOp::Equal, target: CompareTarget::CreateRevision(0) }
}

fn corrupt(what: &str, kv: &KeyValue, e: serde_json::Error) -> CoordError {
    CoordError::Corrupt(format!("{what} {} is not valid JSON: {e}", String::from_utf8_lossy(&kv.key)))
}

impl WorkPool {
    /// The pool `name` (non-empty, no `/`).
    pub fn new(kv: impl aspen_kv::IntoSharedKv, name: &str) -> Result<WorkPool, CoordError> {
        validate_name("pool name", name)?;
        let prefix = format!("{COORD_PREFIX}work/{name}/");
        Ok(WorkPool {
            client: kv.into_shared_kv(),
            name: name.to_string(),
            workers: format!("{prefix}workers/").into_bytes(),
            tasks: format!("{prefix}tasks/").into_bytes(),
            assign: format!("{prefix}assign/").into_bytes(),
            done: format!("{prefix}done/").into_bytes(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn prefix(&self) -> Vec<u8> {
        format!("{COORD_PREFIX}work/{}/", self.name).into_bytes()
    }

    /// Adds task `task_id` with `payload`, unless a task with that id is pending or was
    /// completed. Safe to repeat: ids make it idempotent.
    pub async fn submit(&self, task_id: &str, payload: impl Into<Vec<u8>>) -> Result<Submitted, CoordError> {
        validate_name("task id", task_id)?;
        let payload = payload.into();
        if payload.len() > MAX_TASK_PAYLOAD_BYTES {
            return Err(invalid(format!(
                "task {task_id:?} has a {}-byte payload, over the limit MAX_TASK_PAYLOAD_BYTES = {MAX_TASK_PAYLOAD_BYTES}; \
                 store big inputs in their own keys and pass the key",
                payload.len()
            )));
        }
        let task = key(&self.tasks, task_id);
        let done = key(&self.done, task_id);
        let txn = Txn {
            compare: vec![absent(&task), absent(&done)],
            success: vec![TxnOp::Put { key: task.clone(), value: payload, lease: None }],
            failure: vec![TxnOp::Get { key: done }],
        };
        let resp = retry("task submit", || self.client.txn(txn.clone())).await?;
        Ok(match resp.results.first() {
            _ if resp.succeeded => Submitted::Added,
            Some(TxnOpResult::Get { kv: Some(_) }) => Submitted::AlreadyCompleted,
            _ => Submitted::AlreadyPending,
        })
    }

    /// The compares and operations that submit task `task_id` inside a caller's own
    /// transaction (beside records that must appear with it): the task is added only if no
    /// task with that id is pending or completed.
    pub fn submit_ops(&self, task_id: &str, payload: Vec<u8>) -> Result<(Vec<Compare>, Vec<TxnOp>), CoordError> {
        validate_name("task id", task_id)?;
        if payload.len() > MAX_TASK_PAYLOAD_BYTES {
            return Err(invalid(format!(
                "task {task_id:?} has a {}-byte payload, over the limit MAX_TASK_PAYLOAD_BYTES = {MAX_TASK_PAYLOAD_BYTES}",
                payload.len()
            )));
        }
        let task = key(&self.tasks, task_id);
        let done = key(&self.done, task_id);
        Ok((vec![absent(&task), absent(&done)], vec![TxnOp::Put { key: task, value: payload, lease: None }]))
    }

    /// The operations that withdraw task `task_id` if nobody has claimed it, for a caller's
    /// own transaction: the compare that it is unclaimed, and the delete.
    pub fn withdraw_ops(&self, task_id: &str) -> Result<(Compare, TxnOp), CoordError> {
        validate_name("task id", task_id)?;
        Ok((absent(&key(&self.assign, task_id)), TxnOp::Delete { key: key(&self.tasks, task_id) }))
    }

    /// Every registered worker, with its capacity and current load, in id order.
    pub async fn list_workers(&self) -> Result<Vec<WorkerInfo>, CoordError> {
        let assignments = self.assignments().await?;
        let page = self.client.scan_prefix(&self.workers, MAX_LISTED as u32, ReadConsistency::Linearizable).await?;
        let mut workers = Vec::new();
        for kv in &page.kvs {
            let Some(id) = child_name(&self.workers, &kv.key) else { continue };
            let record: WorkerRecord = serde_json::from_slice(&kv.value).map_err(|e| corrupt("worker", kv, e))?;
            let load = assignments.values().filter(|a| a.value == id.as_bytes() && a.lease == kv.lease).count();
            workers.push(WorkerInfo { id: id.to_string(), capacity: record.capacity, load, lease: kv.lease });
        }
        Ok(workers)
    }

    /// Tasks not yet completed (at most [`MAX_LISTED`]), with who has claimed them, in id order.
    pub async fn list_tasks(&self) -> Result<Vec<TaskInfo>, CoordError> {
        let assignments = self.assignments().await?;
        let mut tasks = Vec::new();
        let mut start = self.tasks.clone();
        let end = prefix_end(&self.tasks);
        while tasks.len() < MAX_LISTED {
            let page = self.client.scan(&start, &end, TASK_PAGE, ReadConsistency::Linearizable).await?;
            for kv in &page.kvs {
                let Some(id) = child_name(&self.tasks, &kv.key) else { continue };
                let assignee = assignments.get(id).map(|a| String::from_utf8_lossy(&a.value).into_owned());
                tasks.push(TaskInfo {
                    id: id.to_string(),
                    payload: kv.value.clone(),
                    assignee,
                    submitted_revision: kv.create_revision,
                });
            }
            match page.kvs.last() {
                Some(last) if page.more => start = key_successor(&last.key),
                _ => break,
            }
        }
        Ok(tasks)
    }

    /// The completion record of `task_id`, if it was completed.
    pub async fn completion(&self, task_id: &str) -> Result<Option<Completion>, CoordError> {
        validate_name("task id", task_id)?;
        match self.client.get(key(&self.done, task_id), ReadConsistency::Linearizable).await? {
            Some(kv) => self.decode_completion(&kv).map(Some),
            None => Ok(None),
        }
    }

    /// Completion records (at most [`MAX_LISTED`]), in task id order.
    pub async fn list_completed(&self) -> Result<Vec<Completion>, CoordError> {
        let page = self.client.scan_prefix(&self.done, MAX_LISTED as u32, ReadConsistency::Linearizable).await?;
        page.kvs.iter().map(|kv| self.decode_completion(kv)).collect()
    }

    /// Deletes `task_id`'s completion record, so the id can be submitted again.
    pub async fn forget(&self, task_id: &str) -> Result<(), CoordError> {
        validate_name("task id", task_id)?;
        let done = key(&self.done, task_id);
        retry("task forget", || self.client.delete(&done)).await.map(drop)
    }

    fn decode_completion(&self, kv: &KeyValue) -> Result<Completion, CoordError> {
        let task_id = child_name(&self.done, &kv.key)
            .ok_or_else(|| CoordError::Corrupt(format!("unexpected key {}", String::from_utf8_lossy(&kv.key))))?;
        let record: DoneRecord = serde_json::from_slice(&kv.value).map_err(|e| corrupt("completion", kv, e))?;
        Ok(Completion {
            task_id: task_id.to_string(),
            worker: record.worker,
            claim_revision: record.claim_revision,
            revision: kv.mod_revision,
        })
    }

    /// Every assignment, by task id, and the revision they were read at.
    async fn assignments_at(&self) -> Result<(BTreeMap<String, KeyValue>, u64), CoordError> {
        let page = self.client.scan_prefix(&self.assign, MAX_LISTED as u32, ReadConsistency::Linearizable).await?;
        if page.more {
            tracing::warn!(pool = %self.name, "over {MAX_LISTED} assignments; counting the first by task id");
        }
        let revision = page.revision;
        let map = page
            .kvs
            .into_iter()
            .filter_map(|kv| child_name(&self.assign, &kv.key).map(|id| (id.to_string(), kv.clone())))
            .collect();
        Ok((map, revision))
    }

    async fn assignments(&self) -> Result<BTreeMap<String, KeyValue>, CoordError> {
        Ok(self.assignments_at().await?.0)
    }
}

impl Worker {
    /// Registers worker `id` in pool `pool` on `session`'s lease, taking up to `capacity`
    /// tasks at once. Refused while another live session has registered the same id.
    pub async fn register(session: &Session, pool: &str, id: &str, capacity: usize) -> Result<Worker, CoordError> {
        let pool = WorkPool::new(session.kv(), pool)?;
        validate_name("worker id", id)?;
        if capacity == 0 || capacity > MAX_WORKER_CAPACITY {
            return Err(invalid(format!(
                "worker {id:?} needs a capacity from 1 to {MAX_WORKER_CAPACITY}, not {capacity}"
            )));
        }
        if session.ended() {
            return Err(CoordError::SessionEnded);
        }
        let key = key(&pool.workers, id);
        let value = serde_json::to_vec(&WorkerRecord { capacity })
            .map_err(|e| CoordError::Corrupt(format!("cannot encode worker {id}: {e}")))?;
        let lease = session.lease();
        // Create the key, or rewrite it if it is already ours (a repeated register).
        let create = Txn {
            compare: vec![absent(&key)],
            success: vec![TxnOp::Put { key: key.clone(), value: value.clone(), lease: Some(lease) }],
            failure: vec![TxnOp::Get { key: key.clone() }],
        };
        let rewrite = Txn {
            compare: vec![Compare { key: key.clone(), op: CompareOp::Equal, target: CompareTarget::Lease(lease.0) }],
            success: vec![TxnOp::Put { key: key.clone(), value: value.clone(), lease: Some(lease) }],
            failure: vec![TxnOp::Get { key: key.clone() }],
        };
        let worker = Worker {
            session: session.clone(),
            pool,
            id: id.to_string(),
            capacity,
            key,
            claiming: Arc::new(tokio::sync::Mutex::new(())),
        };
        // The key can only come and go between the two attempts if another session's lease
        // ends meanwhile: a few rounds settle it.
        for _ in 0..REGISTER_ROUNDS {
            for txn in [&create, &rewrite] {
                let resp = match retry("worker register", || session.kv().txn(txn.clone())).await {
                    Err(e) if is_lease_gone(&e) => return Err(CoordError::SessionEnded),
                    other => other?,
                };
                if resp.succeeded {
                    return Ok(worker);
                }
                if let Some(TxnOpResult::Get { kv: Some(kv) }) = resp.results.first()
                    && kv.lease != Some(lease)
                {
                    let other = kv.lease.map_or("no lease".to_string(), |l| format!("lease {l}"));
                    return Err(invalid(format!(
                        "worker id {id:?} in pool {:?} is registered by another live session ({other}); \
                         pick another id, or wait for that session to end",
                        worker.pool.name
                    )));
                }
            }
        }
        Err(CoordError::Corrupt(format!("worker key of {id:?} changed while registering; try again")))
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn pool(&self) -> &WorkPool {
        &self.pool
    }

    /// Waits until this worker holds fewer claims than its capacity and an unclaimed task
    /// exists, claims it and returns it. Waiting is a watch on the pool, not polling.
    /// Cancelling this future mid-claim may leave a claim the caller never sees; it ends
    /// with the session (or [`Worker::leave`]).
    pub async fn next_task(&self) -> Result<Task, CoordError> {
        self.next_task_where(&|_, _| true).await
    }

    /// Like [`Worker::next_task`], but claims only a task for which `accept(id, payload)` is
    /// true: a worker that cannot run a task leaves it for one that can (the claim is still
    /// the one transaction, so the task goes to exactly one of the accepting workers).
    pub async fn next_task_where(
        &self,
        accept: &(dyn Fn(&str, &[u8]) -> bool + Send + Sync),
    ) -> Result<Task, CoordError> {
        let _one_claim_at_a_time = self.claiming.lock().await;
        let pool = &self.pool;
        let lease = self.session.lease();
        loop {
            if self.session.ended() {
                return Err(CoordError::SessionEnded);
            }
            let (assignments, revision) = pool.assignments_at().await?;
            let load = assignments.values().filter(|a| a.lease == Some(lease)).count();
            if load < self.capacity
                && let Some(task) = self.claim_first_free(&assignments, accept).await?
            {
                return Ok(task);
            }
            // Wait for a new task, a freed claim, or the end of our registration.
            let mut watch = pool.client.watch(&pool.prefix(), revision + 1);
            wait_for(&mut watch, |kind, key| match kind {
                EventKind::Put => key.starts_with(&pool.tasks),
                EventKind::Delete => key.starts_with(&pool.assign) || key == self.key.as_slice(),
            })
            .await;
        }
    }

    /// Pages through the tasks in id order and claims the first unassigned one it can.
    async fn claim_first_free(
        &self,
        assignments: &BTreeMap<String, KeyValue>,
        accept: &(dyn Fn(&str, &[u8]) -> bool + Send + Sync),
    ) -> Result<Option<Task>, CoordError> {
        let pool = &self.pool;
        let end = prefix_end(&pool.tasks);
        let mut start = pool.tasks.clone();
        let mut tried: HashSet<Vec<u8>> = HashSet::new();
        loop {
            let page = pool.client.scan(&start, &end, TASK_PAGE, ReadConsistency::Linearizable).await?;
            for kv in &page.kvs {
                let Some(id) = child_name(&pool.tasks, &kv.key) else { continue };
                if assignments.contains_key(id) || !accept(id, &kv.value) || !tried.insert(kv.key.clone()) {
                    continue;
                }
                if let Some(task) = self.claim(id, kv).await? {
                    return Ok(Some(task));
                }
            }
            match page.kvs.last() {
                Some(last) if page.more => start = key_successor(&last.key),
                _ => return Ok(None),
            }
        }
    }

    /// One claim: the transaction described in the module comment. `None` when someone else
    /// claimed the task first or it changed.
    async fn claim(&self, id: &str, task: &KeyValue) -> Result<Option<Task>, CoordError> {
        let pool = &self.pool;
        let lease = self.session.lease();
        let assign = key(&pool.assign, id);
        let txn = Txn {
            compare: vec![
                absent(&assign),
                Compare {
                    key: task.key.clone(),
                    op: CompareOp::Equal,
                    target: CompareTarget::ModRevision(task.mod_revision),
                },
                Compare { key: self.key.clone(), op: CompareOp::Equal, target: CompareTarget::Lease(lease.0) },
            ],
            success: vec![TxnOp::Put { key: assign.clone(), value: self.id.as_bytes().to_vec(), lease: Some(lease) }],
            failure: vec![TxnOp::Get { key: assign.clone() }, TxnOp::Get { key: self.key.clone() }],
        };
        let resp = match retry("task claim", || pool.client.txn(txn.clone())).await {
            Err(e) if is_lease_gone(&e) => return Err(CoordError::SessionEnded),
            other => other?,
        };
        let claimed = |claim_revision| Task {
            id: id.to_string(),
            payload: task.value.clone(),
            submitted_revision: task.create_revision,
            claim_revision,
        };
        if resp.succeeded {
            tracing::debug!(pool = %pool.name, worker = %self.id, task = id, "claimed");
            return Ok(Some(claimed(resp.revision)));
        }
        let mut results = resp.results.into_iter();
        let (Some(TxnOpResult::Get { kv: assigned }), Some(TxnOpResult::Get { kv: me })) =
            (results.next(), results.next())
        else {
            return Err(CoordError::Corrupt("a claim's failure branch answered unexpectedly".into()));
        };
        match assigned {
            // An earlier attempt of this claim went through; its answer was lost.
            Some(a) if a.lease == Some(lease) && a.value == self.id.as_bytes() => Ok(Some(claimed(a.create_revision))),
            _ if me.is_none_or(|me| me.lease != Some(lease)) => Err(CoordError::SessionEnded),
            _ => Ok(None),
        }
    }

    /// Completes `task` (deletes it and its claim, writes its completion record) if this
    /// worker's claim on it still stands; [`Completed::Lost`] if it does not.
    pub async fn complete(&self, task: &Task) -> Result<Completed, CoordError> {
        self.complete_with(task, Vec::new(), Vec::new()).await
    }

    /// [`Worker::complete`], with `ops` (the task's result records) written in the same
    /// transaction: they land exactly when the completion does, so a task's result is
    /// written once, by the claim that completed it, and never by a worker whose claim was
    /// lost. `compare` adds the caller's own conditions (the records it read are unchanged);
    /// when they fail while the claim stands, nothing is written and the answer is
    /// [`Completed::Refused`]: read again and decide again.
    pub async fn complete_with(
        &self,
        task: &Task,
        compare: Vec<Compare>,
        ops: Vec<TxnOp>,
    ) -> Result<Completed, CoordError> {
        let own_compares = !compare.is_empty();
        let pool = &self.pool;
        let task_key = key(&pool.tasks, &task.id);
        let assign = key(&pool.assign, &task.id);
        let done = key(&pool.done, &task.id);
        let record = DoneRecord { worker: self.id.clone(), claim_revision: task.claim_revision };
        let value = serde_json::to_vec(&record).map_err(|e| CoordError::Corrupt(format!("cannot encode: {e}")))?;
        let txn = Txn {
            compare: vec![
                self.claim_stands(task),
                Compare {
                    key: task_key.clone(),
                    op: CompareOp::Equal,
                    target: CompareTarget::CreateRevision(task.submitted_revision),
                },
            ]
            .into_iter()
            .chain(compare)
            .collect(),
            success: [
                vec![
                    TxnOp::Delete { key: task_key },
                    TxnOp::Delete { key: assign },
                    TxnOp::Put { key: done.clone(), value, lease: None },
                ],
                ops,
            ]
            .concat(),
            failure: vec![TxnOp::Get { key: done }],
        };
        let resp = retry("task complete", || pool.client.txn(txn.clone())).await?;
        if resp.succeeded {
            return Ok(Completed::Done);
        }
        // An earlier attempt may have gone through with its answer lost: the record says.
        match resp.results.into_iter().next() {
            Some(TxnOpResult::Get { kv: Some(kv) })
                if pool.decode_completion(&kv)?.claim_revision == task.claim_revision =>
            {
                Ok(Completed::Done)
            }
            _ if own_compares && self.holds(task).await? => Ok(Completed::Refused),
            _ => Ok(Completed::Lost),
        }
    }

    /// Gives `task` back to the pool uncompleted, for another worker (or this one) to claim.
    pub async fn release(&self, task: &Task) -> Result<(), CoordError> {
        let txn = Txn {
            compare: vec![self.claim_stands(task)],
            success: vec![TxnOp::Delete { key: key(&self.pool.assign, &task.id) }],
            failure: vec![],
        };
        retry("task release", || self.pool.client.txn(txn.clone())).await.map(drop)
    }

    /// Deregisters: gives back every task this worker holds and removes its worker key.
    pub async fn leave(self) -> Result<(), CoordError> {
        let lease = self.session.lease();
        let mine = |kv: &KeyValue| Compare {
            key: kv.key.clone(),
            op: CompareOp::Equal,
            target: CompareTarget::Lease(lease.0),
        };
        for kv in self.pool.assignments().await?.values().filter(|kv| kv.lease == Some(lease)) {
            let txn =
                Txn { compare: vec![mine(kv)], success: vec![TxnOp::Delete { key: kv.key.clone() }], failure: vec![] };
            retry("task release", || self.pool.client.txn(txn.clone())).await?;
        }
        let txn = Txn {
            compare: vec![Compare {
                key: self.key.clone(),
                op: CompareOp::Equal,
                target: CompareTarget::Lease(lease.0),
            }],
            success: vec![TxnOp::Delete { key: self.key.clone() }],
            failure: vec![],
        };
        retry("worker leave", || self.pool.client.txn(txn.clone())).await.map(drop)
    }

    /// Runs `txn` only while this worker's claim on `task` stands (its compares plus the
    /// claim's): a worker whose lease ended, or that gave the task back, writes nothing.
    /// `Ok(false)` when the claim is gone or `txn`'s own compares failed.
    pub async fn fenced_txn(&self, task: &Task, mut txn: Txn) -> Result<bool, CoordError> {
        txn.compare.push(self.claim_stands(task));
        Ok(retry("fenced write", || self.pool.client.txn(txn.clone())).await?.succeeded)
    }

    /// Whether this worker's claim on `task` still stands (a linearizable read).
    pub async fn holds(&self, task: &Task) -> Result<bool, CoordError> {
        let assign = key(&self.pool.assign, &task.id);
        let kv = self.pool.client.get(&assign, ReadConsistency::Linearizable).await?;
        Ok(kv.is_some_and(|kv| kv.create_revision == task.claim_revision))
    }

    /// The session this worker is registered on.
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// The compare that holds while this worker's claim on `task` stands.
    fn claim_stands(&self, task: &Task) -> Compare {
        Compare {
            key: key(&self.pool.assign, &task.id),
            op: CompareOp::Equal,
            target: CompareTarget::CreateRevision(task.claim_revision),
        }
    }
}

impl Task {
    /// The revision of this claim: unique to it, and recorded in the completion it makes.
    pub fn claim_revision(&self) -> u64 {
        self.claim_revision
    }
}

#[cfg(test)]
mod golden {
    use aspen_core::golden::recorded_text;

    use super::{DoneRecord, WorkerRecord};

    /// Worker and completion records are JSON in the KV: a node of the next version (or a
    /// worker running it) must read the ones written today.
    #[test]
    fn worker_records_keep_their_json() {
        let path = aspen_core::golden::crate_dir(env!("CARGO_MANIFEST_DIR")).join("tests/golden/worker_records.txt");
        let worker = serde_json::to_string(&WorkerRecord { capacity: 4 }).unwrap();
        let recorded = recorded_text(&path, "WorkerRecord", || worker.clone());
        assert_eq!(recorded, worker);
        assert_eq!(serde_json::from_str::<WorkerRecord>(&recorded).unwrap().capacity, 4);
        let done = serde_json::to_string(&DoneRecord { worker: "w1".into(), claim_revision: 17 }).unwrap();
        let recorded = recorded_text(&path, "DoneRecord", || done.clone());
        assert_eq!(recorded, done);
        let back: DoneRecord = serde_json::from_str(&recorded).unwrap();
        assert_eq!((back.worker.as_str(), back.claim_revision), ("w1", 17));
    }
}
