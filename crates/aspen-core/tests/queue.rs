//! Work queues and token buckets in the state machine, by example and by property.

use std::collections::{BTreeMap, BTreeSet};

use aspen_core::apply::apply_batch;
use aspen_core::command::{WriteBatch, WriteCommand, WriteResult};
use aspen_core::mem_store::MemStore;
use aspen_core::queue::*;
use aspen_core::ratelimit::{RateLimitResult, RateLimitTake};
use aspen_core::store::KvStore;
use aspen_core::{AspenError, ErrorCode};
use proptest::prelude::*;

fn run(s: &mut MemStore, now: u64, command: QueueCommand) -> Result<QueueResult, AspenError> {
    let batch = WriteBatch { leader_time_ms: now, commands: vec![WriteCommand::Queue(command)] };
    match apply_batch(s, &batch).expect("mem store never fails").0.results.remove(0)? {
        WriteResult::Queue(r) => Ok(r),
        other => panic!("not a queue result: {other:?}"),
    }
}

fn enqueue(s: &mut MemStore, now: u64, q: &str, payloads: &[&str]) -> Vec<Enqueued> {
    let items = payloads.iter().map(|p| NewItem { payload: p.as_bytes().to_vec(), dedup_id: None }).collect();
    match run(s, now, QueueCommand::Enqueue { queue: q.into(), items }).unwrap() {
        QueueResult::Enqueued { items } => items,
        other => panic!("{other:?}"),
    }
}

/// Delivered items as (payload, receipt), and the `next_visible_in_ms` hint.
fn dequeue(s: &mut MemStore, now: u64, q: &str, max: u32, vis: u64) -> (Vec<(String, Receipt)>, Option<u64>) {
    match run(s, now, QueueCommand::Dequeue { queue: q.into(), max, visibility_ms: Some(vis) }).unwrap() {
        QueueResult::Delivered { items, next_visible_in_ms, .. } => (
            items.into_iter().map(|d| (String::from_utf8(d.payload).unwrap(), d.receipt)).collect(),
            next_visible_in_ms,
        ),
        other => panic!("{other:?}"),
    }
}

fn ack(s: &mut MemStore, now: u64, q: &str, receipts: &[Receipt]) -> Vec<bool> {
    match run(s, now, QueueCommand::Ack { queue: q.into(), receipts: receipts.to_vec() }).unwrap() {
        QueueResult::Acked { acked } => acked,
        other => panic!("{other:?}"),
    }
}

fn meta(s: &MemStore, q: &str) -> QueueMeta {
    let key = [queue_prefix(q), b"meta".to_vec()].concat();
    postcard::from_bytes(&s.get(&key).unwrap().expect("queue exists").value).unwrap()
}

fn keys_under(s: &MemStore, q: &str, part: &str) -> usize {
    let prefix = [queue_prefix(q), part.as_bytes().to_vec()].concat();
    s.kv.keys().filter(|k| k.starts_with(&prefix)).count()
}

#[test]
fn items_come_out_in_order_and_an_ack_removes_them() {
    let mut s = MemStore::new();
    let ids = enqueue(&mut s, 0, "jobs", &["a", "b", "c"]);
    assert_eq!(ids.iter().map(|i| i.seq).collect::<Vec<_>>(), vec![1, 2, 3]);
    let (got, _) = dequeue(&mut s, 0, "jobs", 2, 1000);
    assert_eq!(got.iter().map(|g| g.0.as_str()).collect::<Vec<_>>(), vec!["a", "b"]);
    assert_eq!((meta(&s, "jobs").ready, meta(&s, "jobs").in_flight), (1, 2));
    assert_eq!(ack(&mut s, 1, "jobs", &[got[0].1, got[1].1]), vec![true, true]);
    let m = meta(&s, "jobs");
    assert_eq!((m.ready, m.in_flight, m.acked), (1, 0, 2));
    assert_eq!(keys_under(&s, "jobs", "item/"), 1);
}

#[test]
fn an_unacked_item_comes_back_after_its_visibility_timeout_and_the_old_receipt_is_dead() {
    let mut s = MemStore::new();
    enqueue(&mut s, 0, "jobs", &["a"]);
    let (first, _) = dequeue(&mut s, 0, "jobs", 1, 1000);
    assert_eq!(first[0].1.delivery, 1);
    let (none, hint) = dequeue(&mut s, 400, "jobs", 1, 1000);
    assert!(none.is_empty());
    assert_eq!(hint, Some(600), "the leader says when the in-flight item is visible again");
    let (second, _) = dequeue(&mut s, 1000, "jobs", 1, 1000);
    assert_eq!((second[0].0.as_str(), second[0].1.delivery), ("a", 2));
    assert_eq!(ack(&mut s, 1001, "jobs", &[first[0].1]), vec![false], "superseded receipt");
    assert_eq!(ack(&mut s, 1001, "jobs", &[second[0].1]), vec![true]);
    assert_eq!(ack(&mut s, 1002, "jobs", &[second[0].1]), vec![false], "acked at most once");
    assert_eq!(meta(&s, "jobs").acked, 1);
}

#[test]
fn a_late_ack_still_counts_if_nobody_took_the_item_since() {
    let mut s = MemStore::new();
    enqueue(&mut s, 0, "jobs", &["a"]);
    let (got, _) = dequeue(&mut s, 0, "jobs", 1, 100);
    assert_eq!(ack(&mut s, 5000, "jobs", &[got[0].1]), vec![true]);
    assert!(dequeue(&mut s, 6000, "jobs", 1, 100).0.is_empty());
}

#[test]
fn nack_puts_the_item_back_at_the_head_and_extend_keeps_it_hidden() {
    let mut s = MemStore::new();
    enqueue(&mut s, 0, "jobs", &["a", "b"]);
    let (a, _) = dequeue(&mut s, 0, "jobs", 1, 1000);
    let nack = QueueCommand::Nack { queue: "jobs".into(), receipt: a[0].1, delay_ms: 0 };
    assert_eq!(run(&mut s, 10, nack.clone()), Ok(QueueResult::Rescheduled { visible_in_ms: 0 }));
    let err = run(&mut s, 11, nack).unwrap_err();
    assert_eq!(err.code(), ErrorCode::StaleReceipt, "{err}");
    let (again, _) = dequeue(&mut s, 20, "jobs", 1, 1000);
    assert_eq!((again[0].0.as_str(), again[0].1.delivery), ("a", 2), "ahead of b, delivery count kept");
    let extend = QueueCommand::Extend { queue: "jobs".into(), receipt: again[0].1, visibility_ms: 5000 };
    assert_eq!(run(&mut s, 900, extend), Ok(QueueResult::Rescheduled { visible_in_ms: 5000 }));
    let (b, _) = dequeue(&mut s, 2000, "jobs", 5, 1000);
    assert_eq!(b.iter().map(|g| g.0.as_str()).collect::<Vec<_>>(), vec!["b"], "a is still extended");
    let (late, _) = dequeue(&mut s, 5900, "jobs", 5, 1000);
    let order: Vec<_> = late.iter().map(|g| g.0.as_str()).collect();
    assert_eq!(order, vec!["b", "a"], "expired items come back earliest deadline first");
}

#[test]
fn after_max_deliveries_an_item_is_dead_lettered_and_redrive_brings_it_back() {
    let mut s = MemStore::new();
    let config = QueueConfig { max_deliveries: 2, ..QueueConfig::default() };
    run(&mut s, 0, QueueCommand::Configure { queue: "jobs".into(), config }).unwrap();
    enqueue(&mut s, 0, "jobs", &["poison", "ok"]);
    dequeue(&mut s, 0, "jobs", 1, 100);
    let (second, _) = dequeue(&mut s, 100, "jobs", 1, 100);
    assert_eq!(second[0].1.delivery, 2);
    let result = run(&mut s, 200, QueueCommand::Dequeue { queue: "jobs".into(), max: 1, visibility_ms: Some(100) });
    let QueueResult::Delivered { items, dead_lettered, .. } = result.unwrap() else { panic!() };
    assert_eq!((items[0].payload.as_slice(), dead_lettered), (&b"ok"[..], 1));
    ack(&mut s, 200, "jobs", &[items[0].receipt]);
    assert_eq!((meta(&s, "jobs").dead_lettered, meta(&s, "jobs.dlq").ready), (1, 1));
    let (dead, _) = dequeue(&mut s, 300, "jobs.dlq", 1, 100);
    assert_eq!(dead[0].0, "poison");
    ack(&mut s, 300, "jobs.dlq", &[dead[0].1]);

    enqueue(&mut s, 400, "jobs.dlq", &["x", "y"]);
    let moved = run(&mut s, 500, QueueCommand::Redrive { from: "jobs.dlq".into(), to: "jobs".into(), max: 10 });
    assert_eq!(moved, Ok(QueueResult::Redriven { moved: 2 }));
    let (back, _) = dequeue(&mut s, 600, "jobs", 5, 100);
    assert_eq!(back.iter().map(|g| (g.0.as_str(), g.1.delivery)).collect::<Vec<_>>(), vec![("x", 1), ("y", 1)]);
    assert_eq!(meta(&s, "jobs.dlq").ready, 0);
}

#[test]
fn a_dedup_id_adds_one_item_within_the_window_and_is_forgotten_after() {
    let mut s = MemStore::new();
    let config = QueueConfig { dedup_window_ms: 1000, ..QueueConfig::default() };
    run(&mut s, 0, QueueCommand::Configure { queue: "jobs".into(), config }).unwrap();
    let item = |id: &str| NewItem { payload: b"p".to_vec(), dedup_id: Some(id.into()) };
    let enq = |s: &mut MemStore, now, items| match run(s, now, QueueCommand::Enqueue { queue: "jobs".into(), items }) {
        Ok(QueueResult::Enqueued { items }) => items,
        other => panic!("{other:?}"),
    };
    let first = enq(&mut s, 0, vec![item("x"), item("x")]);
    assert_eq!(first, vec![Enqueued { seq: 1, duplicate: false }, Enqueued { seq: 1, duplicate: true }]);
    assert_eq!(enq(&mut s, 999, vec![item("x")]), vec![Enqueued { seq: 1, duplicate: true }]);
    assert_eq!(enq(&mut s, 1000, vec![item("x")]), vec![Enqueued { seq: 2, duplicate: false }]);
    assert_eq!(meta(&s, "jobs").ready, 2);
    assert_eq!((keys_under(&s, "jobs", "dedup/"), keys_under(&s, "jobs", "dedup-expiry/")), (1, 1));
    enq(&mut s, 5000, vec![item("y")]);
    assert_eq!(keys_under(&s, "jobs", "dedup/"), 1, "x's record was swept, y's is new");
}

#[test]
fn bad_commands_are_refused_with_a_reason_and_change_nothing() {
    let mut s = MemStore::new();
    enqueue(&mut s, 0, "jobs", &["a"]);
    let before = s.clone();
    let big = NewItem { payload: vec![0; MAX_PAYLOAD_BYTES + 1], dedup_id: None };
    let cases = [
        QueueCommand::Enqueue { queue: "no/slash".into(), items: vec![NewItem { payload: vec![], dedup_id: None }] },
        QueueCommand::Enqueue { queue: "jobs".into(), items: vec![] },
        QueueCommand::Enqueue { queue: "jobs".into(), items: vec![big] },
        QueueCommand::Dequeue { queue: "jobs".into(), max: 0, visibility_ms: None },
        QueueCommand::Dequeue { queue: "jobs".into(), max: 1, visibility_ms: Some(0) },
        QueueCommand::Redrive { from: "jobs".into(), to: "jobs".into(), max: 1 },
        QueueCommand::Configure {
            queue: "jobs".into(),
            config: QueueConfig { dead_letter: Some("jobs".into()), ..QueueConfig::default() },
        },
        QueueCommand::Extend { queue: "jobs".into(), receipt: Receipt { seq: 1, delivery: 1 }, visibility_ms: 10 },
    ];
    for case in cases {
        let err = run(&mut s, 1, case.clone()).expect_err(&format!("{case:?} must fail"));
        assert!(!err.to_string().is_empty());
    }
    assert_eq!(s, before);
}

#[test]
fn a_bucket_grants_its_capacity_then_refills_by_the_leader_clock() {
    let mut s = MemStore::new();
    let take = |s: &mut MemStore, now: u64, tokens: u64| {
        let take = RateLimitTake { name: "api".into(), capacity: 5, refill: 1, per_ms: 1000, tokens };
        let batch = WriteBatch { leader_time_ms: now, commands: vec![WriteCommand::RateLimit(take)] };
        match apply_batch(s, &batch).unwrap().0.results.remove(0) {
            Ok(WriteResult::RateLimit(r)) => r,
            other => panic!("{other:?}"),
        }
    };
    for i in 0..5 {
        assert!(take(&mut s, 10_000, 1).granted, "take {i} of a full bucket");
    }
    let refused = take(&mut s, 10_000, 1);
    assert_eq!(refused, RateLimitResult { granted: false, available: 0, retry_after_ms: 1000 });
    assert!(!take(&mut s, 10_999, 1).granted);
    assert!(take(&mut s, 11_000, 1).granted);
    assert!(!take(&mut s, 5_000, 1).granted, "a leader with a slower clock adds no tokens");
    assert_eq!(take(&mut s, 60_000, 5).available, 0, "refill stops at capacity");
    let err = apply_batch(
        &mut s,
        &WriteBatch {
            leader_time_ms: 0,
            commands: vec![WriteCommand::RateLimit(RateLimitTake {
                name: "api".into(),
                capacity: 5,
                refill: 1,
                per_ms: 1000,
                tokens: 6,
            })],
        },
    )
    .unwrap()
    .0
    .results
    .remove(0)
    .unwrap_err();
    assert!(err.to_string().contains("capacity"), "{err}");
}

#[derive(Debug, Clone)]
enum Op {
    Enqueue(u8),
    Dequeue(u8, u16),
    /// Ack the n-th receipt handed out so far (maybe stale).
    Ack(u8),
    Nack(u8, u16),
    Extend(u8, u16),
    Tick(u16),
    Redrive,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (1u8..4).prop_map(Op::Enqueue),
        3 => (1u8..4, 1u16..500).prop_map(|(n, v)| Op::Dequeue(n, v)),
        3 => any::<u8>().prop_map(Op::Ack),
        1 => (any::<u8>(), 0u16..300).prop_map(|(r, d)| Op::Nack(r, d)),
        1 => (any::<u8>(), 1u16..300).prop_map(|(r, d)| Op::Extend(r, d)),
        2 => (0u16..400).prop_map(Op::Tick),
        1 => Just(Op::Redrive),
    ]
}

proptest! {
    /// Whatever happens: every item is in exactly one index, the counts in `meta` match
    /// the indexes, no receipt acks twice, an acked item never comes back, and nothing
    /// enqueued disappears except by an ack.
    #[test]
    fn queue_invariants_hold(ops in proptest::collection::vec(op(), 1..80)) {
        let mut s = MemStore::new();
        let config = QueueConfig { max_deliveries: 3, ..QueueConfig::default() };
        run(&mut s, 0, QueueCommand::Configure { queue: "q".into(), config }).unwrap();
        let mut now = 0u64;
        let mut receipts: Vec<Receipt> = Vec::new();
        let mut acked: BTreeSet<String> = BTreeSet::new();
        let mut enqueued: BTreeMap<String, ()> = BTreeMap::new();
        let mut next = 0u32;
        for op in ops {
            match op {
                Op::Enqueue(n) => {
                    let names: Vec<String> = (0..n).map(|_| { next += 1; format!("i{next}") }).collect();
                    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
                    enqueue(&mut s, now, "q", &refs);
                    enqueued.extend(names.into_iter().map(|n| (n, ())));
                }
                Op::Dequeue(n, vis) => {
                    for queue in ["q", "q.dlq"] {
                        let (got, _) = dequeue(&mut s, now, queue, u32::from(n), u64::from(vis));
                        for (payload, receipt) in got {
                            prop_assert!(!acked.contains(&payload), "acked item {payload} delivered again");
                            if queue == "q" { receipts.push(receipt); }
                        }
                    }
                }
                Op::Ack(i) if !receipts.is_empty() => {
                    let r = receipts[usize::from(i) % receipts.len()];
                    let item_key = [queue_prefix("q"), format!("item/{:016x}", r.seq).into_bytes()].concat();
                    let payload = s.get(&item_key).unwrap().map(|e| postcard::from_bytes::<QueueItem>(&e.value).unwrap().payload);
                    if ack(&mut s, now, "q", &[r])[0] {
                        let payload = String::from_utf8(payload.unwrap()).unwrap();
                        prop_assert!(acked.insert(payload.clone()), "{payload} acked twice");
                    }
                }
                Op::Nack(i, d) | Op::Extend(i, d) if !receipts.is_empty() => {
                    let receipt = receipts[usize::from(i) % receipts.len()];
                    let cmd = if matches!(op, Op::Nack(..)) {
                        QueueCommand::Nack { queue: "q".into(), receipt, delay_ms: u64::from(d) }
                    } else {
                        QueueCommand::Extend { queue: "q".into(), receipt, visibility_ms: u64::from(d) }
                    };
                    if let Err(e) = run(&mut s, now, cmd) { prop_assert_eq!(e.code(), ErrorCode::StaleReceipt); }
                }
                Op::Tick(ms) => now += u64::from(ms),
                Op::Redrive => { let _ = run(&mut s, now, QueueCommand::Redrive { from: "q.dlq".into(), to: "q".into(), max: 5 }); }
                _ => {}
            }
            for queue in ["q", "q.dlq"] {
                let Some(kv) = s.get(&[queue_prefix(queue), b"meta".to_vec()].concat()).unwrap() else { continue };
                let m: QueueMeta = postcard::from_bytes(&kv.value).unwrap();
                let (items, ready, inflight) = (keys_under(&s, queue, "item/"), keys_under(&s, queue, "ready/"), keys_under(&s, queue, "inflight/"));
                prop_assert_eq!(items, ready + inflight, "every item in exactly one index");
                prop_assert_eq!((m.ready, m.in_flight), (ready as u64, inflight as u64));
            }
            // Nothing is lost: every enqueued payload is acked or still stored somewhere.
            let stored: BTreeSet<String> = s.kv.iter()
                .filter(|(k, _)| k.windows(5).any(|w| w == b"item/"))
                .map(|(_, e)| String::from_utf8(postcard::from_bytes::<QueueItem>(&e.value).unwrap().payload).unwrap())
                .collect();
            for name in enqueued.keys() {
                prop_assert!(stored.contains(name) || acked.contains(name), "{name} vanished");
            }
        }
    }
}
