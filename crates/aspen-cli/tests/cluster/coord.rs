//! Coordination primitives against real clusters, under faults.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aspen_client::{AspenError, ClientConfig, ReadConsistency};
use aspen_coord::{CoordError, Lock, Session};

use aspen_testkit::harness::TestCluster;

/// One critical section as a worker saw it.
#[derive(Debug, Clone)]
struct Section {
    worker: usize,
    token: u64,
    acquired: Instant,
    releasing: Instant,
    /// The fenced increment was refused: the hold had been lost.
    lost: bool,
}

fn counter(kv: Option<aspen_client::KeyValue>) -> u64 {
    kv.map(|kv| String::from_utf8_lossy(&kv.value).parse().unwrap_or(0)).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_holders_never_overlap_and_tokens_only_grow_while_the_leader_is_killed() {
    let mut c = TestCluster::start(3).await;
    let addrs: Vec<_> = (0..3).map(|i| c.node_addr(i)).collect();
    let sections = Arc::new(Mutex::new(Vec::<Section>::new()));
    let increments = Arc::new(Mutex::new(0u64));
    let run_for = Duration::from_secs(std::env::var("ASPEN_COORD_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(8));
    let stop_at = Instant::now() + run_for;
    let mut workers = Vec::new();
    for worker in 0..4 {
        let client = c.over(addrs.clone(), ClientConfig::default()).await;
        let sections = sections.clone();
        let increments = increments.clone();
        workers.push(tokio::spawn(async move {
            let mut session = Session::new(client.clone(), Duration::from_secs(15)).await.unwrap();
            while Instant::now() < stop_at {
                let lock = Lock::new(&session, "mutex");
                let guard = match lock.acquire(Duration::from_secs(60)).await {
                    Ok(g) => g,
                    Err(CoordError::SessionEnded) => {
                        session = Session::new(client.clone(), Duration::from_secs(15)).await.unwrap();
                        continue;
                    }
                    Err(e) => {
                        tracing::info!(worker, "acquire failed, retrying: {e}");
                        continue;
                    }
                };
                let acquired = Instant::now();
                // Critical section: read the counter, write it back plus one, fenced.
                let mut lost = false;
                loop {
                    let before = match client.get("coord/counter", ReadConsistency::Linearizable).await {
                        Ok(kv) => counter(kv),
                        Err(_) => continue,
                    };
                    match guard.fenced_put("coord/counter", (before + 1).to_string()).await {
                        Ok(_) => {
                            *increments.lock().unwrap() += 1;
                            break;
                        }
                        Err(CoordError::StaleToken { .. }) => {
                            lost = true;
                            break;
                        }
                        Err(CoordError::Kv(e)) if matches!(e.aspen(), Some(AspenError::OutcomeUnknown { .. })) => {
                            // Did it land? Only we write while we hold the lock.
                            let now = loop {
                                if let Ok(kv) = client.get("coord/counter", ReadConsistency::Linearizable).await {
                                    break counter(kv);
                                }
                            };
                            if now == before + 1 {
                                *increments.lock().unwrap() += 1;
                                break;
                            }
                        }
                        Err(_) => {}
                    }
                }
                let releasing = Instant::now();
                let token = guard.token();
                let _ = guard.release().await;
                sections.lock().unwrap().push(Section { worker, token, acquired, releasing, lost });
            }
            let _ = session.close().await;
        }));
    }
    // Nemesis: kill the leader twice while the workers contend.
    for _ in 0..2 {
        tokio::time::sleep(run_for / 3).await;
        c.kill_and_restart_leader().await;
    }
    for w in workers {
        w.await.unwrap();
    }

    let mut sections = sections.lock().unwrap().clone();
    sections.sort_by_key(|s| s.acquired);
    assert!(sections.len() > 20, "too little contention to judge: {} sections", sections.len());
    println!("lock history: {} sections, {} lost holds", sections.len(), sections.iter().filter(|s| s.lost).count());
    for pair in sections.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        assert!(b.token > a.token, "fencing tokens must grow with each new holder: {a:?} then {b:?}");
        if !a.lost {
            assert!(b.acquired > a.releasing, "two holders at once: {a:?} and {b:?}");
        }
    }
    let workers_served: std::collections::BTreeSet<usize> = sections.iter().map(|s| s.worker).collect();
    assert_eq!(workers_served.len(), 4, "the queue is fair: every worker got the lock");
    let client = c.client().await;
    let value = counter(client.get("coord/counter", ReadConsistency::Linearizable).await.unwrap());
    let confirmed = *increments.lock().unwrap();
    assert_eq!(value, confirmed, "every confirmed fenced increment, and nothing else, is in the counter");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_holders_late_write_is_refused_by_its_stale_token() {
    let c = TestCluster::start(1).await;
    let client = c.client().await;
    // The holder keeps its session alive by hand, then stalls (a long GC pause, a frozen VM).
    let stalled = Session::new_manual(client.clone(), Duration::from_secs(2)).await.unwrap();
    let old = Lock::new(&stalled, "fenced").acquire(Duration::from_secs(5)).await.unwrap();
    old.fenced_put("fenced/data", "first holder").await.unwrap();

    let live = Session::new(client.clone(), Duration::from_secs(10)).await.unwrap();
    let started = Instant::now();
    let new = Lock::new(&live, "fenced").acquire(Duration::from_secs(30)).await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(500), "the second holder waited for the lease to end");
    assert!(new.token() > old.token(), "{} then {}", old.token(), new.token());
    new.fenced_put("fenced/data", "second holder").await.unwrap();

    // The first holder wakes up and writes as if it still held the lock.
    let err = old.fenced_put("fenced/data", "stale write").await.unwrap_err();
    assert!(matches!(err, CoordError::StaleToken { .. }), "{err}");
    assert!(err.to_string().contains("no longer current"), "{err}");
    let kv = client.get("fenced/data", ReadConsistency::Linearizable).await.unwrap().unwrap();
    assert_eq!(kv.value, b"second holder");
    assert!(stalled.keepalive().await.is_err(), "the stalled session is over");
    let second = new.token();
    new.release().await.unwrap();
    let again = Lock::new(&live, "fenced").try_acquire().await.unwrap();
    assert!(again.is_some_and(|g| g.token() > second), "released, so free again, with a newer token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn try_acquire_does_not_wait_and_a_closed_session_frees_its_locks() {
    let c = TestCluster::start(1).await;
    let client = c.client().await;
    let a = Session::new(client.clone(), Duration::from_secs(10)).await.unwrap();
    let b = Session::new(client.clone(), Duration::from_secs(10)).await.unwrap();
    let held = Lock::new(&a, "t").try_acquire().await.unwrap().expect("free lock");
    assert!(Lock::new(&b, "t").try_acquire().await.unwrap().is_none());
    let err = Lock::new(&b, "t").acquire(Duration::from_millis(300)).await.unwrap_err();
    assert!(matches!(err, CoordError::Timeout(..)), "{err}");
    // The timed-out waiter left the queue: closing the holder's session frees the lock.
    a.close().await.unwrap();
    let got = Lock::new(&b, "t").acquire(Duration::from_secs(10)).await.unwrap();
    assert!(got.token() > held.token());
}

/// The most intervals `[start, end)` open at once.
fn max_overlap(intervals: &[(Instant, Instant)]) -> usize {
    let mut edges: Vec<(Instant, i32)> = intervals.iter().flat_map(|(a, b)| [(*a, 1), (*b, -1)]).collect();
    // At equal instants, close before opening.
    edges.sort_by_key(|(t, d)| (*t, *d));
    let (mut open, mut most) = (0i32, 0i32);
    for (_, d) in edges {
        open += d;
        most = most.max(open);
    }
    most as usize
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_semaphore_never_has_more_holders_than_permits_while_the_leader_is_killed() {
    let mut c = TestCluster::start(3).await;
    let addrs: Vec<_> = (0..3).map(|i| c.node_addr(i)).collect();
    let held = Arc::new(Mutex::new(Vec::<(Instant, Instant)>::new()));
    let stop_at = Instant::now() + Duration::from_secs(8);
    let mut workers = Vec::new();
    for _ in 0..5 {
        let client = c.over(addrs.clone(), ClientConfig::default()).await;
        let held = held.clone();
        workers.push(tokio::spawn(async move {
            let session = Session::new(client, Duration::from_secs(15)).await.unwrap();
            let sem = aspen_coord::Semaphore::new(&session, "pool", 2);
            while Instant::now() < stop_at {
                let Ok(permit) = sem.acquire(Duration::from_secs(60)).await else { continue };
                let start = Instant::now();
                tokio::time::sleep(Duration::from_millis(5)).await;
                let end = Instant::now();
                let _ = permit.release().await;
                held.lock().unwrap().push((start, end));
            }
            let _ = session.close().await;
        }));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    c.kill_and_restart_leader().await;
    for w in workers {
        w.await.unwrap();
    }
    let held = held.lock().unwrap().clone();
    assert!(held.len() > 20, "too few permits taken to judge: {}", held.len());
    let most = max_overlap(&held);
    assert!(most <= 2, "{most} holders at once of a 2-permit semaphore");
    assert_eq!(most, 2, "with 5 workers on 2 permits, both permits were in use at some point");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elections_never_show_two_leaders_for_one_term_while_the_leader_is_killed() {
    let mut c = TestCluster::start(3).await;
    let addrs: Vec<_> = (0..3).map(|i| c.node_addr(i)).collect();
    let terms = Arc::new(Mutex::new(Vec::<(u64, usize, Instant, Instant)>::new()));
    let stop_at = Instant::now() + Duration::from_secs(8);
    // An observer sees the proclaimed values change.
    let observer_client = c.over(addrs.clone(), ClientConfig::default()).await;
    let observer = tokio::spawn(async move {
        let session = Session::new(observer_client, Duration::from_secs(15)).await.unwrap();
        let election = aspen_coord::Election::new(&session, "primary");
        let mut seen = Vec::new();
        let mut known = None;
        while seen.len() < 3 {
            match election.observe_change(known.as_ref()).await {
                Ok(leader) => {
                    if let Some(l) = &leader {
                        seen.push(l.clone());
                    }
                    known = leader;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        seen
    });
    let mut candidates = Vec::new();
    for id in 0..3usize {
        let client = c.over(addrs.clone(), ClientConfig::default()).await;
        let terms = terms.clone();
        candidates.push(tokio::spawn(async move {
            let session = Session::new(client, Duration::from_secs(15)).await.unwrap();
            let election = aspen_coord::Election::new(&session, "primary");
            while Instant::now() < stop_at {
                let Ok(lead) = election.campaign(format!("candidate-{id}"), Duration::from_secs(60)).await else {
                    continue;
                };
                let start = Instant::now();
                let _ = lead.proclaim(format!("candidate-{id} serving")).await;
                tokio::time::sleep(Duration::from_millis(10)).await;
                let still = election.is_leader(&lead).await.unwrap_or(false);
                let end = Instant::now();
                let term = lead.term();
                let _ = lead.resign().await;
                if still {
                    terms.lock().unwrap().push((term, id, start, end));
                }
            }
            let _ = session.close().await;
        }));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    c.kill_and_restart_leader().await;
    for cand in candidates {
        cand.await.unwrap();
    }
    let mut terms = terms.lock().unwrap().clone();
    terms.sort_by_key(|t| t.2);
    assert!(terms.len() > 10, "too few terms to judge: {}", terms.len());
    for pair in terms.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        assert!(b.0 > a.0, "terms must grow: {a:?} then {b:?}");
        assert!(b.2 > a.3, "two leaders at once: {a:?} and {b:?}");
    }
    let seen = tokio::time::timeout(Duration::from_secs(30), observer).await.expect("observer").unwrap();
    assert!(seen.iter().all(|l| String::from_utf8_lossy(&l.value).starts_with("candidate-")), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_add_exactly_and_sequences_hand_out_unique_growing_ids() {
    let c = TestCluster::start(3).await;
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let client = c.client().await;
        tasks.push(tokio::spawn(async move {
            let counter = aspen_coord::Counter::new(&client, "hits");
            for _ in 0..25 {
                counter.add(2).await.unwrap();
            }
            let mut seq = aspen_coord::Sequence::new(&client, "ids", 10);
            let mut ids = Vec::new();
            for _ in 0..30 {
                ids.push(seq.next().await.unwrap());
            }
            ids
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        let ids = t.await.unwrap();
        assert!(ids.windows(2).all(|w| w[1] > w[0]), "one client's ids grow: {ids:?}");
        all.extend(ids);
    }
    let client = c.client().await;
    assert_eq!(aspen_coord::Counter::new(&client, "hits").get().await.unwrap(), 200);
    let unique: std::collections::BTreeSet<u64> = all.iter().copied().collect();
    assert_eq!(unique.len(), all.len(), "no id handed out twice");
    let counter = aspen_coord::Counter::new(&client, "cas");
    assert!(counter.compare_and_swap(0, 5).await.unwrap());
    assert!(!counter.compare_and_swap(0, 6).await.unwrap());
    assert_eq!(counter.get().await.unwrap(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rwlock_writers_exclude_everyone_readers_share_and_writers_are_not_starved() {
    let mut c = TestCluster::start(3).await;
    let addrs: Vec<_> = (0..3).map(|i| c.node_addr(i)).collect();
    // (is_write, who, start, end)
    let holds = Arc::new(Mutex::new(Vec::<(bool, usize, Instant, Instant)>::new()));
    let stop_at = Instant::now() + Duration::from_secs(8);
    let mut tasks = Vec::new();
    for who in 0..5usize {
        let write = who < 2;
        let client = c.over(addrs.clone(), ClientConfig::default()).await;
        let holds = holds.clone();
        tasks.push(tokio::spawn(async move {
            let session = Session::new(client, Duration::from_secs(15)).await.unwrap();
            let lock = aspen_coord::RwLock::new(&session, "table");
            while Instant::now() < stop_at {
                let got = if write {
                    lock.write(Duration::from_secs(60)).await
                } else {
                    lock.read(Duration::from_secs(60)).await
                };
                let Ok(mut guard) = got else { continue };
                let start = Instant::now();
                tokio::time::sleep(Duration::from_millis(if write { 5 } else { 20 })).await;
                if who == 0 {
                    // Writer 0 downgrades: its write ends, and it goes on as a reader.
                    let mid = Instant::now();
                    if guard.downgrade().await.is_ok() {
                        let downgraded = Instant::now();
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        let end = Instant::now();
                        let _ = guard.release().await;
                        let mut h = holds.lock().unwrap();
                        h.push((true, who, start, mid));
                        h.push((false, who, downgraded, end));
                        continue;
                    }
                }
                let end = Instant::now();
                let _ = guard.release().await;
                holds.lock().unwrap().push((write, who, start, end));
            }
            let _ = session.close().await;
        }));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    c.kill_and_restart_leader().await;
    for t in tasks {
        t.await.unwrap();
    }
    let holds = holds.lock().unwrap().clone();
    let writes: Vec<_> = holds.iter().filter(|h| h.0).collect();
    let reads: Vec<_> = holds.iter().filter(|h| !h.0).collect();
    assert!(writes.iter().any(|h| h.1 == 0) && writes.iter().any(|h| h.1 == 1), "both writers got in: {writes:?}");
    assert!(!reads.is_empty());
    for w in &writes {
        for other in &holds {
            if std::ptr::eq(*w, other) {
                continue;
            }
            let overlap = other.2 < w.3 && w.2 < other.3;
            assert!(!overlap, "a write hold overlapped another hold: {w:?} and {other:?}");
        }
    }
    let read_intervals: Vec<_> = reads.iter().map(|h| (h.2, h.3)).collect();
    assert!(max_overlap(&read_intervals) >= 2, "readers share the lock");
}
