//! Client histories recorded under kill, pause and partition faults must be
//! linearizable (a register per key, checked with the testkit's checker).
//!
//! CI runs it for a bounded time; set `ASPEN_LINEARIZABILITY_SECS` for a longer run.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use aspen_core::api::ReadConsistency;
use aspen_testkit::linearizability::{History, OpKind, Operation, Verdict, check};

use aspen_testkit::harness::TestCluster;

const KEYS: u64 = 4;
const CLIENTS: u64 = 5;

/// A tiny deterministic generator; each client has its own.
struct XorShift(u64);

impl XorShift {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

async fn client_loop(client: aspen_client::Client, id: u64, history: Arc<History>, stop: Arc<AtomicBool>) -> u64 {
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15 ^ (id + 1));
    let mut completed = 0;
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let key = format!("lin/{}", rng.below(KEYS)).into_bytes();
        let call = history.now();
        let roll = rng.below(10);
        seq += 1;
        let value = format!("c{id}-{seq}").into_bytes();
        let (kind, ok) = if roll < 4 {
            match client.get(&key, ReadConsistency::Linearizable).await {
                Ok(kv) => (Some(OpKind::Read { observed: kv.map(|kv| kv.value) }), true),
                // A failed read constrains nothing.
                Err(_) => (None, false),
            }
        } else if roll < 8 {
            let ok = client.put(&key, value.clone()).await.is_ok();
            (Some(OpKind::Write { value: Some(value) }), ok)
        } else {
            let expected = match client.get(&key, ReadConsistency::Linearizable).await {
                Ok(kv) => kv.map(|kv| kv.value),
                Err(_) => continue,
            };
            let call = history.now();
            let result = client.cas(&key, expected.clone(), value.clone()).await;
            let ok = result.is_ok();
            let kind = OpKind::Cas { expected, new: value, succeeded: result.ok().map(|o| o.succeeded) };
            record(&history, id, key, call, ok, kind);
            completed += u64::from(ok);
            continue;
        };
        if let Some(kind) = kind {
            record(&history, id, key, call, ok, kind);
        }
        completed += u64::from(ok);
    }
    completed
}

/// A failed write is recorded with an unknown outcome: it may or may not have applied.
fn record(history: &History, client: u64, key: Vec<u8>, call: u64, ok: bool, kind: OpKind) {
    let ret = ok.then(|| history.now());
    history.record(Operation { client, key, call, ret, kind });
}

async fn nemesis(c: &mut TestCluster, stop: Arc<AtomicBool>, until: tokio::time::Instant) -> Vec<String> {
    let mut done = Vec::new();
    let mut round = 0u32;
    while tokio::time::Instant::now() < until {
        let leader = c.wait_for_leader().await;
        match round % 4 {
            0 => {
                c.nodes.kill(leader).unwrap();
                tokio::time::sleep(Duration::from_millis(1500)).await;
                c.nodes.restart(leader).await.unwrap();
                done.push(format!("kill -9 leader {leader}, restart"));
            }
            1 => {
                let victim = (leader + 1 + (round as usize / 4) % 2) % 3;
                c.nodes.pause(victim).unwrap();
                tokio::time::sleep(Duration::from_millis(1500)).await;
                c.nodes.resume(victim).unwrap();
                done.push(format!("pause node {victim}, resume"));
            }
            2 => {
                for i in 0..3 {
                    c.nodes.kill(i).unwrap();
                }
                for i in 0..3 {
                    c.nodes.restart(i).await.unwrap();
                }
                done.push("kill -9 every node, restart all".to_string());
            }
            _ => {
                if c.nodes.supports_partitions() {
                    let rest: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
                    c.nodes.partition(&[&[leader], &rest]).unwrap();
                    tokio::time::sleep(Duration::from_millis(2000)).await;
                    c.nodes.heal().unwrap();
                    done.push(format!("partition leader {leader} from the majority, heal"));
                } else {
                    c.nodes.pause(leader).unwrap();
                    tokio::time::sleep(Duration::from_millis(1500)).await;
                    c.nodes.resume(leader).unwrap();
                    done.push(format!("pause leader {leader}, resume"));
                }
            }
        }
        round += 1;
        tokio::time::sleep(Duration::from_millis(1000)).await;
    }
    stop.store(true, Ordering::Relaxed);
    done
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn histories_under_kill_pause_and_partition_are_linearizable() {
    let secs: u64 = std::env::var("ASPEN_LINEARIZABILITY_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(20);
    let mut c = TestCluster::start(3).await;
    let history = History::new();
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for id in 0..CLIENTS {
        let client = c.client().await;
        clients.push(tokio::spawn(client_loop(client, id, history.clone(), stop.clone())));
    }
    let until = tokio::time::Instant::now() + Duration::from_secs(secs);
    let faults = nemesis(&mut c, stop.clone(), until).await;
    let mut completed = 0;
    for task in clients {
        completed += task.await.unwrap();
    }
    let ops = history.operations();
    eprintln!("linearizability: {} ops recorded, {completed} completed, faults: {faults:?}", ops.len());
    assert!(completed >= 100, "too few operations completed ({completed}) for the check to mean anything");
    assert!(!faults.is_empty());
    match check(&ops, Duration::from_secs(120)) {
        Verdict::Linearizable => {}
        other => panic!("history of {} ops is not shown linearizable: {other}", ops.len()),
    }
}
