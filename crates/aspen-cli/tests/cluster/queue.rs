//! Work queues and token buckets against real clusters, under kill -9.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aspen_client::ClientConfig;
use aspen_coord::{CoordError, Queue, QueueConfig, RateLimiter, Receipt};

use aspen_testkit::harness::{TestCluster, eventually};

/// What the workers saw, for the checks at the end.
#[derive(Default)]
struct History {
    /// Every delivery handed to a worker: (payload, receipt, worker).
    deliveries: Vec<(String, Receipt, usize)>,
    /// Acks the cluster confirmed, per payload.
    acks: BTreeMap<String, u32>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_under_kill_and_restart_loses_no_item_and_acks_each_at_most_once() {
    let mut c = TestCluster::start(3).await;
    let addrs: Vec<_> = (0..3).map(|i| c.node_addr(i)).collect();
    let admin = c.client().await;
    let config = QueueConfig { visibility_ms: 3_000, ..QueueConfig::default() };
    Queue::new(&admin, "jobs").unwrap().configure(config).await.unwrap();

    // The producer: each item has a dedup id, so a retry after a lost answer adds nothing.
    // It runs, paced, until every fault below is over, and says how many it enqueued.
    let producing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let producer_client = c.over(addrs.clone(), ClientConfig::default()).await;
    let producer = tokio::spawn({
        let producing = producing.clone();
        async move {
            let queue = Queue::new(&producer_client, "jobs").unwrap();
            let mut n = 0;
            while producing.load(std::sync::atomic::Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(10)).await;
                loop {
                    match queue.enqueue_unique(format!("item-{n}"), &format!("item-{n}")).await {
                        Ok(_) => break,
                        Err(e) => tracing::info!("enqueue {n} failed, retrying: {e}"),
                    }
                }
                n += 1;
            }
            n
        }
    });

    let history = Arc::new(Mutex::new(History::default()));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    for worker in 0..4 {
        let client = c.over(addrs.clone(), ClientConfig::default()).await;
        let (history, done) = (history.clone(), done.clone());
        workers.push(tokio::spawn(async move {
            let queue = Queue::new(&client, "jobs").unwrap();
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                let messages = match queue.dequeue(4, None, Duration::from_secs(1)).await {
                    Ok(m) => m,
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                for m in messages {
                    let payload = String::from_utf8(m.payload).unwrap();
                    history.lock().unwrap().deliveries.push((payload.clone(), m.receipt, worker));
                    // Some work, so items are in flight when the nodes die.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    // An error is a stale receipt (redelivered) or an unknown outcome: the
                    // item is either gone or will be delivered again; the checks tell which.
                    if queue.ack(m.receipt).await.is_ok() {
                        *history.lock().unwrap().acks.entry(payload).or_default() += 1;
                    }
                }
            }
        }));
    }

    // Nemesis: kill -9 the leader twice, then the whole cluster at once.
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_secs(2)).await;
        c.kill_and_restart_leader().await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    for i in 0..3 {
        c.nodes.kill(i).unwrap();
    }
    for i in 0..3 {
        c.nodes.restart(i).await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    producing.store(false, std::sync::atomic::Ordering::SeqCst);
    let items = producer.await.unwrap();

    let queue = Queue::new(&admin, "jobs").unwrap();
    let stats = eventually("every item is acked", || async {
        let stats = queue.stats().await.ok()??;
        (stats.ready == 0 && stats.in_flight == 0).then_some(stats)
    })
    .await;
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    for w in workers {
        w.await.unwrap();
    }

    let history = history.lock().unwrap();
    let delivered: BTreeSet<&str> = history.deliveries.iter().map(|d| d.0.as_str()).collect();
    println!(
        "queue history: {items} items, {} deliveries, {} confirmed acks",
        history.deliveries.len(),
        history.acks.values().sum::<u32>()
    );
    for i in 0..items {
        assert!(delivered.contains(format!("item-{i}").as_str()), "item-{i} was enqueued and never delivered");
    }
    assert_eq!(delivered.len(), items, "only enqueued items come out");
    let mut seqs: BTreeMap<&str, BTreeSet<u64>> = BTreeMap::new();
    for (payload, receipt, _) in &history.deliveries {
        seqs.entry(payload.as_str()).or_default().insert(receipt.seq);
    }
    for (payload, s) in &seqs {
        assert_eq!(s.len(), 1, "{payload} was enqueued more than once despite its dedup id: {s:?}");
    }
    for (payload, n) in &history.acks {
        assert_eq!(*n, 1, "{payload} acked {n} times");
    }
    assert_eq!(stats.acked, items as u64, "the queue applied exactly one ack per item");
    let mut receipts = BTreeSet::new();
    for (payload, receipt, worker) in &history.deliveries {
        assert!(receipts.insert((payload, *receipt)), "{payload} delivery {receipt} handed out twice (to {worker})");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_dequeue_wakes_on_enqueue_and_dead_letters_go_round_trip() {
    let c = TestCluster::start(3).await;
    let client = c.client().await;
    let queue = Queue::new(&client, "mail").unwrap();
    queue.configure(QueueConfig { max_deliveries: 1, ..QueueConfig::default() }).await.unwrap();

    let waiter = {
        let queue = queue.clone();
        tokio::spawn(async move { queue.dequeue(1, None, Duration::from_secs(60)).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    queue.enqueue("hello").await.unwrap();
    let got = waiter.await.unwrap().unwrap();
    assert_eq!(got.len(), 1, "the waiting dequeue got the item enqueued after it started");
    assert_eq!(got[0].payload, b"hello");

    // One delivery allowed: a nack, and the next dequeue moves it to mail.dlq.
    queue.nack(got[0].receipt, Duration::ZERO).await.unwrap();
    let err = queue.ack(got[0].receipt).await.unwrap_err();
    assert!(matches!(err, CoordError::StaleReceipt { .. }), "{err}");
    assert!(queue.try_dequeue(1, None).await.unwrap().is_empty());
    let stats = queue.stats().await.unwrap().unwrap();
    assert_eq!((stats.ready, stats.in_flight, stats.dead_lettered), (0, 0, 1));
    let dlq = Queue::new(&client, "mail.dlq").unwrap();
    assert_eq!(dlq.list(10).await.unwrap().len(), 1);
    assert_eq!(queue.redrive_from("mail.dlq", 10).await.unwrap(), 1);
    let again = queue.try_dequeue(1, None).await.unwrap();
    assert_eq!((again[0].payload.as_slice(), again[0].receipt.delivery), (&b"hello"[..], 1));
    queue.ack(again[0].receipt).await.unwrap();
    assert!(Queue::new(&client, "bad/name").is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_bucket_holds_its_rate_across_clients() {
    let c = TestCluster::start(3).await;
    let addrs: Vec<_> = (0..3).map(|i| c.node_addr(i)).collect();
    let started = Instant::now();
    let mut takers = Vec::new();
    for _ in 0..3 {
        let client = c.over(addrs.clone(), ClientConfig::default()).await;
        takers.push(tokio::spawn(async move {
            let bucket = RateLimiter::new(&client, "api", 5, 10, Duration::from_secs(1)).unwrap();
            let mut granted = 0u64;
            let until = Instant::now() + Duration::from_secs(2);
            while Instant::now() < until {
                if bucket.try_acquire(1).await.unwrap().granted {
                    granted += 1;
                }
            }
            granted
        }));
    }
    let mut granted = 0;
    for t in takers {
        granted += t.await.unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    // A full bucket (5) plus 10 per second of leader time, which cannot exceed ours by
    // more than the time the first take took to reach the leader.
    let ceiling = 5.0 + 10.0 * (elapsed + 1.0);
    println!("token bucket: {granted} granted in {elapsed:.1} s (ceiling {ceiling:.0})");
    assert!(granted as f64 <= ceiling, "{granted} tokens granted in {elapsed:.1} s");
    assert!(granted >= 5, "the full bucket was granted: {granted}");
    let client = c.client().await;
    let err = RateLimiter::new(&client, "api", 0, 1, Duration::from_secs(1)).unwrap_err();
    assert!(err.to_string().contains("capacity"), "{err}");
}
