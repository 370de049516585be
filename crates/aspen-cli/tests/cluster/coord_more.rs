//! Barriers, the service registry and worker coordination against real clusters, with
//! participants, instances and workers dying, and the Raft leader killed.
//!
//! Nothing here waits a fixed time for an outcome: the tests wait (boundedly) for states they
//! can read, such as "three participants are registered" or "every task has a completion
//! record", and then check the recorded history.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aspen_client::{Client, ClientConfig, ReadConsistency};
use aspen_coord::{
    Barrier, Completed, CoordError, DoubleBarrier, Instance, Service, ServiceChange, Session, Submitted, Task,
    WorkPool, Worker,
};

use aspen_testkit::harness::{TestCluster, eventually};

/// Bound on each wait for a primitive to let a caller through.
const PATIENCE: Duration = Duration::from_secs(60);

/// A session kept alive by a task the test can stop: stopping it is the process dying
/// without a word (its lease ends one TTL later).
struct Mortal {
    session: Session,
    heart: tokio::task::JoinHandle<()>,
}

impl Mortal {
    async fn new(client: &Client, ttl: Duration) -> Mortal {
        let session = Session::new_manual(client.clone(), ttl).await.unwrap();
        let heart = tokio::spawn({
            let session = session.clone();
            async move {
                loop {
                    let _ = session.keepalive().await;
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
            }
        });
        Mortal { session, heart }
    }

    fn die(&self) {
        self.heart.abort();
    }
}

/// How many keys start with `prefix`, or `None` when the cluster cannot say right now (a
/// caller polling with `eventually` then asks again).
async fn count_keys(client: &Client, prefix: &str) -> Option<usize> {
    client.scan_prefix(prefix, 1000, ReadConsistency::Linearizable).await.ok().map(|p| p.kvs.len())
}

// ---------------------------------------------------------------------------------------
// Barriers

/// What one double-barrier participant saw.
#[derive(Debug, Clone, Copy)]
struct Passage {
    enter_called: Instant,
    entered: Instant,
    leave_called: Instant,
    left: Instant,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nobody_passes_a_double_barrier_before_all_n_entered_and_leave_waits_for_everyone() {
    const N: usize = 4;
    let c = TestCluster::start(1).await;
    let client = c.client().await;
    let arrived = Arc::new(AtomicUsize::new(0));
    let passed = Arc::new(AtomicUsize::new(0));
    let left = Arc::new(AtomicUsize::new(0));
    let last_may_leave = Arc::new(tokio::sync::Notify::new());
    let mut participants = Vec::new();
    let spawn = |i: usize| {
        let (client, arrived, passed, left, last_may_leave) =
            (client.clone(), arrived.clone(), passed.clone(), left.clone(), last_may_leave.clone());
        tokio::spawn(async move {
            let session = Session::new(client, Duration::from_secs(10)).await.unwrap();
            let mut barrier = DoubleBarrier::new(&session, "phase", N).unwrap();
            let enter_called = Instant::now();
            arrived.fetch_add(1, Ordering::SeqCst);
            barrier.enter(PATIENCE).await.unwrap();
            let entered = Instant::now();
            assert_eq!(arrived.load(Ordering::SeqCst), N, "participant {i} passed before all {N} arrived");
            passed.fetch_add(1, Ordering::SeqCst);
            if i == N - 1 {
                last_may_leave.notified().await;
            }
            let leave_called = Instant::now();
            barrier.leave(PATIENCE).await.unwrap();
            left.fetch_add(1, Ordering::SeqCst);
            let _ = session.close().await;
            Passage { enter_called, entered, leave_called, left: Instant::now() }
        })
    };
    for i in 0..N - 1 {
        participants.push(spawn(i));
    }
    // N - 1 have registered and are waiting: nobody may pass yet.
    eventually("N - 1 participants are registered", || async {
        (count_keys(&client, "_aspen/coord/dbarrier/phase/in/").await? == N - 1).then_some(())
    })
    .await;
    assert_eq!(passed.load(Ordering::SeqCst), 0, "someone passed with only {} of {N} in", N - 1);
    participants.push(spawn(N - 1));
    eventually("all N pass", || async { (passed.load(Ordering::SeqCst) == N).then_some(()) }).await;

    // The first N - 1 leave; they must wait for the last, which has not left yet.
    eventually("N - 1 participants have left and wait", || async {
        (count_keys(&client, "_aspen/coord/dbarrier/phase/in/").await? == 1).then_some(())
    })
    .await;
    assert_eq!(left.load(Ordering::SeqCst), 0, "someone finished leaving before the last participant left");
    last_may_leave.notify_one();
    let mut passages = Vec::new();
    for p in participants {
        passages.push(tokio::time::timeout(PATIENCE, p).await.expect("participant finished").unwrap());
    }
    let last_arrival = passages.iter().map(|p| p.enter_called).max().unwrap();
    let first_pass = passages.iter().map(|p| p.entered).min().unwrap();
    assert!(first_pass > last_arrival, "a participant passed enter before the last one arrived");
    let last_leave_call = passages.iter().map(|p| p.leave_called).max().unwrap();
    let first_left = passages.iter().map(|p| p.left).min().unwrap();
    assert!(first_left > last_leave_call, "a participant finished leaving before the last one began to");
    let ready = client.get("_aspen/coord/dbarrier/phase/ready", ReadConsistency::Linearizable).await.unwrap();
    assert!(ready.is_none(), "the last one out tidied the round's ready key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_participant_neither_wedges_leave_nor_lets_the_next_round_in_early() {
    let c = TestCluster::start(1).await;
    let client = c.client().await;

    // Round 1 of 3: one participant dies inside the barrier, without leaving.
    let doomed = Mortal::new(&client, Duration::from_secs(2)).await;
    let mut tasks = Vec::new();
    for _ in 0..2 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let session = Session::new(client, Duration::from_secs(10)).await.unwrap();
            let mut barrier = DoubleBarrier::new(&session, "round", 3).unwrap();
            barrier.enter(PATIENCE).await.unwrap();
            barrier.leave(PATIENCE).await
        }));
    }
    let mut dying = DoubleBarrier::new(&doomed.session, "round", 3).unwrap();
    dying.enter(PATIENCE).await.unwrap();
    doomed.die();
    for t in tasks.drain(..) {
        let left = tokio::time::timeout(PATIENCE, t).await.expect("leave returned").unwrap();
        assert!(left.is_ok(), "leave completes once the dead participant's lease ends: {left:?}");
    }

    // Round 2 of 2, where both participants die before leaving: the round's ready key stays.
    for _ in 0..2 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let session = Session::new(client, Duration::from_secs(10)).await.unwrap();
            let mut barrier = DoubleBarrier::new(&session, "stale", 2).unwrap();
            barrier.enter(PATIENCE).await.unwrap();
            session.close().await.unwrap();
            Ok(())
        }));
    }
    for t in tasks.drain(..) {
        tokio::time::timeout(PATIENCE, t).await.expect("round 2 entered").unwrap().unwrap();
    }
    let stale = client.get("_aspen/coord/dbarrier/stale/ready", ReadConsistency::Linearizable).await.unwrap();
    assert!(stale.is_some(), "nobody left round 2, so its ready key is still there");
    // Round 3: a lone newcomer is not let through by the stale ready key...
    let alone = Session::new(client.clone(), Duration::from_secs(10)).await.unwrap();
    let mut lone = DoubleBarrier::new(&alone, "stale", 2).unwrap();
    let err = lone.enter(Duration::from_secs(2)).await.unwrap_err();
    assert!(matches!(err, CoordError::Timeout(..)), "{err}");
    // ...but two newcomers are.
    let pair: Vec<_> = (0..2)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move {
                let session = Session::new(client, Duration::from_secs(10)).await.unwrap();
                let mut barrier = DoubleBarrier::new(&session, "stale", 2).unwrap();
                barrier.enter(PATIENCE).await.unwrap();
                barrier.leave(PATIENCE).await.unwrap();
            })
        })
        .collect();
    for t in pair {
        tokio::time::timeout(PATIENCE, t).await.expect("round 3 passed").unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_barrier_holds_waiters_until_released_or_until_its_holders_session_ends() {
    let c = TestCluster::start(1).await;
    let client = c.client().await;
    let gate = Barrier::new(&client, "gate").unwrap();
    gate.wait(Duration::from_secs(5)).await.expect("a barrier that is not up lets everyone through");
    gate.hold().await.unwrap();
    gate.hold().await.unwrap();
    let err = gate.wait(Duration::from_secs(1)).await.unwrap_err();
    assert!(matches!(err, CoordError::Timeout(..)), "{err}");
    let waiters: Vec<_> = (0..3)
        .map(|_| {
            let gate = gate.clone();
            tokio::spawn(async move { gate.wait(PATIENCE).await })
        })
        .collect();
    gate.release().await.unwrap();
    for w in waiters {
        w.await.unwrap().expect("released waiters go on");
    }
    // Held on a session: the barrier falls with the session.
    let holder = Mortal::new(&client, Duration::from_secs(2)).await;
    gate.hold_in(&holder.session).await.unwrap();
    assert!(gate.is_held().await.unwrap());
    holder.die();
    gate.wait(PATIENCE).await.expect("the barrier fell when its holder's session ended");
}

// ---------------------------------------------------------------------------------------
// Service registry

fn instance(addr: &str, tags: &[&str]) -> Instance {
    Instance {
        addr: addr.to_string(),
        tags: tags.iter().map(|t| t.to_string()).collect(),
        meta: BTreeMap::from([("version".to_string(), "1".to_string())]),
    }
}

fn tags(list: &[&str]) -> Vec<String> {
    list.iter().map(|t| t.to_string()).collect()
}

async fn ids(web: &Service, filter: &[&str]) -> Vec<String> {
    web.discover(&tags(filter)).await.unwrap().into_iter().map(|i| i.id).collect()
}

async fn next_change(watch: &mut aspen_coord::ServiceWatch) -> ServiceChange {
    tokio::time::timeout(PATIENCE, watch.next()).await.expect("a change within the bound").unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_are_discovered_by_tag_and_a_dead_instance_disappears_and_is_watched_down() {
    let c = TestCluster::start(3).await;
    let client = c.client().await;
    let web = Service::new(&client, "web").unwrap();
    let live = Session::new(client.clone(), Duration::from_secs(10)).await.unwrap();
    let doomed = Mortal::new(&client, Duration::from_secs(2)).await;
    let a = web.register(&live, "a", &instance("10.0.0.1:80", &["prod", "eu"])).await.unwrap();
    let _b = web.register(&doomed.session, "b", &instance("10.0.0.2:80", &["prod", "us"])).await.unwrap();

    assert_eq!(ids(&web, &[]).await, ["a", "b"]);
    assert_eq!(ids(&web, &["prod"]).await, ["a", "b"]);
    assert_eq!(ids(&web, &["eu"]).await, ["a"]);
    assert_eq!(ids(&web, &["prod", "us"]).await, ["b"]);
    assert!(ids(&web, &["eu", "us"]).await.is_empty(), "every given tag must match");
    // Other tools read the registry as JSON.
    let raw = client.get("_aspen/coord/service/web/a", ReadConsistency::Linearizable).await.unwrap().unwrap();
    let json: serde_json::Value = serde_json::from_slice(&raw.value).unwrap();
    assert_eq!(json["addr"], "10.0.0.1:80");
    assert_eq!(json["tags"], serde_json::json!(["prod", "eu"]));
    assert_eq!(json["meta"]["version"], "1");

    let mut watch = web.watch().await.unwrap();
    let snapshot: Vec<&str> = watch.instances().map(|i| i.id.as_str()).collect();
    assert_eq!(snapshot, ["a", "b"]);
    // Instance b's process dies: it stops keeping its session alive.
    doomed.die();
    assert_eq!(next_change(&mut watch).await, ServiceChange::Down { id: "b".into() });
    assert_eq!(ids(&web, &[]).await, ["a"]);

    let c_first = web.register(&live, "c", &instance("10.0.0.3:80", &["canary"])).await.unwrap();
    match next_change(&mut watch).await {
        ServiceChange::Up(i) => assert_eq!((i.id.as_str(), i.instance.addr.as_str()), ("c", "10.0.0.3:80")),
        other => panic!("expected c up, got {other:?}"),
    }
    // A restarted process takes its id back; the old registrant cannot remove it.
    let restarted = Session::new(client.clone(), Duration::from_secs(10)).await.unwrap();
    let _c = web.register(&restarted, "c", &instance("10.0.0.4:80", &["canary"])).await.unwrap();
    match next_change(&mut watch).await {
        ServiceChange::Up(i) => {
            assert_eq!((i.instance.addr.as_str(), i.lease), ("10.0.0.4:80", Some(restarted.lease())))
        }
        other => panic!("expected c up again, got {other:?}"),
    }
    c_first.deregister().await.unwrap();
    assert_eq!(ids(&web, &["canary"]).await, ["c"], "the replaced registrant's deregister left c alone");

    a.deregister().await.unwrap();
    assert_eq!(next_change(&mut watch).await, ServiceChange::Down { id: "a".into() });
    assert_eq!(ids(&web, &[]).await, ["c"]);
    assert!(Service::new(&client, "a/b").is_err() && web.register(&live, "", &Instance::default()).await.is_err());
}

// ---------------------------------------------------------------------------------------
// Worker coordination

/// Everything the workers did, for the checks at the end.
#[derive(Debug, Clone, Default)]
struct WorkLog {
    /// (task, worker, claim revision) of every completion the cluster confirmed.
    completed: Vec<(String, String, u64)>,
    /// Tasks whose completion was refused because the claim had been lost.
    lost: Vec<String>,
    /// The most tasks any one worker ran at once, per worker.
    most_at_once: BTreeMap<String, usize>,
}

/// Runs `lanes` loops on one worker: claim, work for `work`, complete. Runs until aborted.
fn spawn_worker(
    worker: Arc<Worker>,
    lanes: usize,
    work: Duration,
    log: Arc<Mutex<WorkLog>>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let running = Arc::new(AtomicUsize::new(0));
    (0..lanes)
        .map(|_| {
            let (worker, log, running) = (worker.clone(), log.clone(), running.clone());
            tokio::spawn(async move {
                loop {
                    let task = match worker.next_task().await {
                        Ok(task) => task,
                        Err(e) => {
                            tracing::info!(worker = worker.id(), "claim failed, retrying: {e}");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    };
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    {
                        let mut log = log.lock().unwrap();
                        let most = log.most_at_once.entry(worker.id().to_string()).or_default();
                        *most = (*most).max(now);
                    }
                    tokio::time::sleep(work).await;
                    running.fetch_sub(1, Ordering::SeqCst);
                    let outcome = loop {
                        match worker.complete(&task).await {
                            Ok(outcome) => break outcome,
                            Err(e) => {
                                tracing::info!(worker = worker.id(), "complete failed, retrying: {e}");
                                tokio::time::sleep(Duration::from_millis(100)).await;
                            }
                        }
                    };
                    let mut log = log.lock().unwrap();
                    match outcome {
                        Completed::Done => {
                            log.completed.push((task.id.clone(), worker.id().to_string(), task.claim_revision()))
                        }
                        Completed::Lost | Completed::Refused => log.lost.push(task.id.clone()),
                    }
                }
            })
        })
        .collect()
}

fn task_ids(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("t-{i:04}")).collect()
}

async fn submit_all(pool: &WorkPool, ids: &[String]) {
    for id in ids {
        loop {
            match pool.submit(id, format!("payload of {id}")).await {
                Ok(Submitted::Added | Submitted::AlreadyPending) => break,
                Ok(other) => panic!("task {id} was new, yet submit said {other:?}"),
                Err(e) => tracing::info!("submit {id} failed, retrying: {e}"),
            }
        }
    }
}

/// Waits until every one of `n` tasks has a completion record.
async fn wait_all_completed(pool: &WorkPool, n: usize) {
    eventually(&format!("all {n} tasks have completion records"), || async {
        (pool.list_completed().await.ok()?.len() == n).then_some(())
    })
    .await;
}

/// The checks every worker test ends with: each task completed exactly once, by the claim its
/// record names, with no task or claim left behind, and no worker over its capacity.
async fn assert_each_task_completed_exactly_once(pool: &WorkPool, ids: &[String], log: &WorkLog, capacity: usize) {
    let mut per_task: BTreeMap<&str, Vec<(&str, u64)>> = BTreeMap::new();
    for (task, worker, claim) in &log.completed {
        per_task.entry(task.as_str()).or_default().push((worker.as_str(), *claim));
    }
    for id in ids {
        let done = per_task.get(id.as_str()).map(Vec::as_slice).unwrap_or_default();
        assert_eq!(done.len(), 1, "task {id} was completed {} times: {done:?}", done.len());
        let record = pool.completion(id).await.unwrap().unwrap_or_else(|| panic!("no completion record for {id}"));
        assert_eq!((record.worker.as_str(), record.claim_revision), done[0], "the record names the completing claim");
    }
    assert_eq!(per_task.len(), ids.len(), "completions only of submitted tasks: {:?}", per_task.keys());
    assert!(pool.list_tasks().await.unwrap().is_empty(), "no task is left pending");
    for (worker, most) in &log.most_at_once {
        assert!(*most <= capacity, "worker {worker} ran {most} tasks at once, over its capacity {capacity}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_workers_tasks_are_reassigned_and_every_task_completes_exactly_once() {
    const TASKS: usize = 20;
    const CAPACITY: usize = 2;
    let c = TestCluster::start(3).await;
    let addrs: Vec<_> = (0..3).map(|i| c.node_addr(i)).collect();
    let client = c.client().await;
    let pool = WorkPool::new(&client, "jobs").unwrap();
    let ids = task_ids(TASKS);
    submit_all(&pool, &ids).await;

    // The doomed worker claims two tasks, and dies while "running" them.
    let doomed = Mortal::new(&client, Duration::from_secs(2)).await;
    let dying = Worker::register(&doomed.session, "jobs", "doomed", CAPACITY).await.unwrap();
    let held: Vec<Task> = vec![dying.next_task().await.unwrap(), dying.next_task().await.unwrap()];
    let listed = pool.list_workers().await.unwrap();
    assert_eq!(listed.iter().map(|w| (w.id.as_str(), w.capacity, w.load)).collect::<Vec<_>>(), [("doomed", 2, 2)]);
    let assigned: Vec<_> = pool.list_tasks().await.unwrap().into_iter().filter(|t| t.assignee.is_some()).collect();
    assert_eq!(assigned.len(), 2);
    assert!(assigned.iter().all(|t| t.assignee.as_deref() == Some("doomed")));
    let err =
        Worker::register(&Session::new(client.clone(), Duration::from_secs(10)).await.unwrap(), "jobs", "doomed", 1)
            .await
            .unwrap_err();
    assert!(err.to_string().contains("registered by another live session"), "{err}");

    let log = Arc::new(Mutex::new(WorkLog::default()));
    let mut lanes = Vec::new();
    let mut sessions = Vec::new();
    for name in ["w1", "w2"] {
        let client = c.over(addrs.clone(), ClientConfig::default()).await;
        let session = Session::new(client, Duration::from_secs(10)).await.unwrap();
        let worker = Arc::new(Worker::register(&session, "jobs", name, CAPACITY).await.unwrap());
        lanes.extend(spawn_worker(worker, CAPACITY + 1, Duration::from_millis(20), log.clone()));
        sessions.push(session);
    }
    // The live workers finish everything else, but not the doomed worker's two tasks.
    eventually("the live workers finish the unclaimed tasks", || async {
        (pool.list_completed().await.ok()?.len() == TASKS - 2).then_some(())
    })
    .await;
    doomed.die();
    wait_all_completed(&pool, TASKS).await;
    for task in &held {
        assert_eq!(dying.complete(task).await.unwrap(), Completed::Lost, "a dead worker cannot complete {}", task.id);
    }
    for lane in lanes {
        lane.abort();
    }
    let log = log.lock().unwrap().clone();
    assert_each_task_completed_exactly_once(&pool, &ids, &log, CAPACITY).await;
    for task in &held {
        let by = &log.completed.iter().find(|(id, ..)| *id == task.id).unwrap().1;
        assert!(by == "w1" || by == "w2", "task {} was reassigned to a live worker, not {by}", task.id);
    }
    let workers: Vec<_> = pool.list_workers().await.unwrap().into_iter().map(|w| w.id).collect();
    assert_eq!(workers, ["w1", "w2"], "the dead worker's registration went with its lease");
    for s in sessions {
        s.close().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_lost_its_lease_cannot_complete_a_task_another_worker_now_holds() {
    let c = TestCluster::start(1).await;
    let client = c.client().await;
    let pool = WorkPool::new(&client, "solo").unwrap();
    assert_eq!(pool.submit("only", "x").await.unwrap(), Submitted::Added);
    let stalled = Mortal::new(&client, Duration::from_secs(2)).await;
    let old = Worker::register(&stalled.session, "solo", "old", 1).await.unwrap();
    let claimed_first = old.next_task().await.unwrap();
    // The old worker stalls past its TTL; the new one is waiting, and gets the task.
    let session = Session::new(client.clone(), Duration::from_secs(10)).await.unwrap();
    let new = Worker::register(&session, "solo", "new", 1).await.unwrap();
    stalled.die();
    let claimed_again = tokio::time::timeout(PATIENCE, new.next_task()).await.expect("reassigned").unwrap();
    assert_eq!(claimed_again.id, "only");
    assert!(claimed_again.claim_revision() > claimed_first.claim_revision());
    // The old worker wakes up and tries to complete the task it no longer holds.
    assert_eq!(old.complete(&claimed_first).await.unwrap(), Completed::Lost);
    assert_eq!(pool.list_tasks().await.unwrap()[0].assignee.as_deref(), Some("new"), "the task is still the new one's");
    assert_eq!(new.complete(&claimed_again).await.unwrap(), Completed::Done);
    assert_eq!(new.complete(&claimed_again).await.unwrap(), Completed::Done, "completing again is idempotent");
    let record = pool.completion("only").await.unwrap().unwrap();
    assert_eq!((record.worker.as_str(), record.claim_revision), ("new", claimed_again.claim_revision()));
    assert_eq!(pool.submit("only", "x").await.unwrap(), Submitted::AlreadyCompleted);
    pool.forget("only").await.unwrap();
    assert_eq!(pool.submit("only", "again").await.unwrap(), Submitted::Added, "a forgotten id can be used again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_task_completes_exactly_once_while_the_raft_leader_is_killed() {
    const TASKS: usize = 40;
    const CAPACITY: usize = 2;
    let mut c = TestCluster::start(3).await;
    let addrs: Vec<_> = (0..3).map(|i| c.node_addr(i)).collect();
    let client = c.over(addrs.clone(), ClientConfig::default()).await;
    let pool = WorkPool::new(&client, "jobs").unwrap();
    let ids = task_ids(TASKS);
    let (first, second) = ids.split_at(TASKS / 2);
    submit_all(&pool, first).await;

    let log = Arc::new(Mutex::new(WorkLog::default()));
    let mut lanes = Vec::new();
    let mut sessions = Vec::new();
    for name in ["w1", "w2", "w3"] {
        let client = c.over(addrs.clone(), ClientConfig::default()).await;
        let session = Session::new(client, Duration::from_secs(15)).await.unwrap();
        let worker = Arc::new(Worker::register(&session, "jobs", name, CAPACITY).await.unwrap());
        lanes.extend(spawn_worker(worker, CAPACITY, Duration::from_millis(200), log.clone()));
        sessions.push(session);
    }
    let at_least = |n: usize| {
        let log = log.clone();
        move || {
            let done = log.lock().unwrap().completed.len() >= n;
            async move { done.then_some(()) }
        }
    };
    eventually("some tasks complete", at_least(3)).await;
    c.kill_and_restart_leader().await;
    submit_all(&pool, second).await;
    eventually("more tasks complete after the first kill", at_least(TASKS / 2 + 3)).await;
    c.kill_and_restart_leader().await;
    wait_all_completed(&pool, TASKS).await;
    for lane in lanes {
        lane.abort();
    }
    let log = log.lock().unwrap().clone();
    println!("completed {} tasks across two leader kills", log.completed.len());
    assert!(log.lost.is_empty(), "no worker died, so no claim was lost: {:?}", log.lost);
    assert_each_task_completed_exactly_once(&pool, &ids, &log, CAPACITY).await;
    for s in sessions {
        let _ = s.close().await;
    }
}

// ---------------------------------------------------------------------------------------
// The command line

fn aspen_cmd(args: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_aspen"));
    cmd.args(args).stdin(std::process::Stdio::null()).kill_on_drop(true);
    for var in ["ASPEN_TICKET", "ASPEN_TICKET_FILE", "ASPEN_TOKEN", "ASPEN_TOKEN_FILE", "ASPEN_IDENTITY_FILE"] {
        cmd.env_remove(var);
    }
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_barrier_service_and_worker_commands_refuse_bad_input_naming_the_problem() {
    let cases: &[(&[&str], &str)] = &[
        (&["barrier", "enter", "a/b", "--count", "2"], "must not contain '/'"),
        (&["barrier", "enter", "phase", "--count", "0", "--", "true"], "0 is not in 1..=5000"),
        (&["barrier", "wait", ""], "must not be empty"),
        (&["service", "register", "web", "--id", "a/b", "--addr", "x"], "must not contain '/'"),
        (&["service", "register", "web", "--id", "a", "--addr", "x", "--meta", "novalue"], "is not KEY=VALUE"),
        (&["service", "list", ""], "must not be empty"),
        (&["worker", "run", "jobs", "--id", "w1", "--capacity", "0", "--", "true"], "0 is not in 1..=10000"),
        (&["worker", "run", "jobs", "--id", "w1"], "<COMMAND>"),
        (&["worker", "submit", "jobs", "a/b", "x"], "must not contain '/'"),
        (&["worker", "list", "jo/bs"], "must not contain '/'"),
    ];
    for (args, expected) in cases {
        let out = aspen_cmd(args).output().await.unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?} should say {expected:?}: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_barrier_service_and_worker_commands_work_against_a_cluster() {
    let c = TestCluster::start(1).await;
    let ticket = c.nodes.node_ticket(0).unwrap();
    let token = c.token.encode();
    let run = |args: &[&str]| {
        let mut cmd = aspen_cmd(args);
        cmd.env("ASPEN_TICKET", &ticket).env("ASPEN_TOKEN", &token);
        cmd
    };
    let ok = |args: &'static [&'static str]| {
        let mut cmd = run(args);
        async move {
            let out = cmd.output().await.unwrap();
            assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
            String::from_utf8(out.stdout).unwrap()
        }
    };

    // Workers: submit, run a command per task, list.
    assert_eq!(ok(&["worker", "submit", "jobs", "t1", "one"]).await, "task t1 added\n");
    assert_eq!(ok(&["worker", "submit", "jobs", "t1", "one"]).await, "task t1 already pending\n");
    ok(&["worker", "submit", "jobs", "t2", "two"]).await;
    let listed: serde_json::Value = serde_json::from_str(&ok(&["--json", "worker", "list", "jobs"]).await).unwrap();
    assert_eq!(listed["tasks"].as_array().map(Vec::len), Some(2), "{listed}");
    let out = tempfile::tempdir().unwrap();
    let script = format!(
        "cat > {}/$ASPEN_TASK_ID.in && echo \"$ASPEN_TASK_PAYLOAD\" > {}/$ASPEN_TASK_ID.env",
        out.path().display(),
        out.path().display()
    );
    let worked =
        run(&["worker", "run", "jobs", "--id", "w1", "--capacity", "2", "--max-tasks", "2", "--", "sh", "-c", &script])
            .output()
            .await
            .unwrap();
    assert!(worked.status.success(), "{}", String::from_utf8_lossy(&worked.stderr));
    assert_eq!(std::fs::read_to_string(out.path().join("t1.in")).unwrap(), "one", "the payload on stdin");
    assert_eq!(std::fs::read_to_string(out.path().join("t2.env")).unwrap(), "two\n", "the payload in the environment");
    let listed: serde_json::Value = serde_json::from_str(&ok(&["--json", "worker", "list", "jobs"]).await).unwrap();
    assert_eq!(listed["tasks"], serde_json::json!([]), "{listed}");
    assert_eq!(listed["workers"], serde_json::json!([]), "the worker deregistered on exit: {listed}");
    assert_eq!(ok(&["worker", "submit", "jobs", "t1", "one"]).await, "task t1 already completed\n");
    let big = "x".repeat(aspen_coord::MAX_TASK_PAYLOAD_BYTES + 1);
    let refused = run(&["worker", "submit", "jobs", "big", &big]).output().await.unwrap();
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("MAX_TASK_PAYLOAD_BYTES"));

    // Services: registered while the command runs, which sees itself listed.
    let inner = format!("{} service list web --tag prod", env!("CARGO_BIN_EXE_aspen"));
    let registered = run(&[
        "service",
        "register",
        "web",
        "--id",
        "a",
        "--addr",
        "10.0.0.1:80",
        "--tag",
        "prod",
        "--",
        "sh",
        "-c",
        &inner,
    ])
    .output()
    .await
    .unwrap();
    assert!(registered.status.success(), "{}", String::from_utf8_lossy(&registered.stderr));
    assert_eq!(String::from_utf8_lossy(&registered.stdout), "a 10.0.0.1:80 tags=prod meta=\n");
    assert_eq!(ok(&["service", "list", "web"]).await, "", "deregistered when the command ended");
    let failed = run(&["service", "register", "web", "--id", "a", "--addr", "x", "--", "sh", "-c", "exit 3"])
        .output()
        .await
        .unwrap();
    assert_eq!(failed.status.code(), Some(3), "the command's exit status is passed on");

    // Barriers: a waiter goes on once the barrier is released; a double barrier of two.
    ok(&["barrier", "hold", "gate"]).await;
    let held = run(&["barrier", "wait", "gate", "--timeout", "1s"]).output().await.unwrap();
    assert!(String::from_utf8_lossy(&held.stderr).contains("timed out"), "{}", String::from_utf8_lossy(&held.stderr));
    let waiter = run(&["barrier", "wait", "gate", "--timeout", "60s"]).output();
    let releaser = async {
        ok(&["barrier", "release", "gate"]).await;
    };
    let (waited, ()) = tokio::join!(waiter, releaser);
    assert!(waited.unwrap().status.success());
    let pair = (
        run(&["barrier", "enter", "phase", "--count", "2", "--", "true"]).output(),
        run(&["barrier", "enter", "phase", "--count", "2"]).output(),
    );
    let (first, second) = tokio::join!(pair.0, pair.1);
    assert!(first.unwrap().status.success());
    assert_eq!(String::from_utf8(second.unwrap().stdout).unwrap(), "barrier phase entered and left\n");
}
