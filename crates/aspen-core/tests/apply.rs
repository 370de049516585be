//! The apply step, specified by example and by property over random command sequences.

use std::collections::BTreeMap;

use aspen_core::apply::{apply_batch, compare_holds, expired_leases};
use aspen_core::command::*;
use aspen_core::mem_store::MemStore;
use aspen_core::store::KvStore;
use aspen_core::{AspenError, EventKind, LeaseId};
use proptest::prelude::*;

fn run(store: &mut MemStore, now: u64, commands: Vec<WriteCommand>) -> Vec<Result<WriteResult, AspenError>> {
    apply_batch(store, &WriteBatch { leader_time_ms: now, commands }).expect("mem store never fails").0.results
}

fn put(k: &str, v: &str) -> WriteCommand {
    WriteCommand::Put { key: k.into(), value: v.into(), lease: None }
}

#[test]
fn put_sets_revisions_and_versions() {
    let mut s = MemStore::new();
    run(&mut s, 0, vec![put("a", "1"), put("b", "1"), put("a", "2")]);
    let a = s.get(b"a").unwrap().unwrap();
    assert_eq!((a.create_revision, a.mod_revision, a.version, a.value.as_slice()), (1, 3, 2, &b"2"[..]));
    assert_eq!(s.revision(), 3);
}

#[test]
fn delete_of_missing_key_does_not_bump_revision() {
    let mut s = MemStore::new();
    run(&mut s, 0, vec![put("a", "1")]);
    let r = run(&mut s, 0, vec![WriteCommand::Delete { key: b"zz".to_vec() }]);
    assert_eq!(r[0], Ok(WriteResult::Delete { revision: 1, deleted: 0 }));
    assert_eq!(s.revision(), 1);
}

#[test]
fn recreated_key_starts_a_new_life() {
    let mut s = MemStore::new();
    run(&mut s, 0, vec![put("a", "1"), WriteCommand::Delete { key: b"a".to_vec() }, put("a", "2")]);
    let a = s.get(b"a").unwrap().unwrap();
    assert_eq!((a.create_revision, a.version), (3, 1));
}

#[test]
fn cas_on_missing_key_fails_and_changes_nothing() {
    let mut s = MemStore::new();
    let txn = Txn {
        compare: vec![Compare {
            key: b"k".to_vec(),
            op: CompareOp::Equal,
            target: CompareTarget::Value(b"x".to_vec()),
        }],
        success: vec![TxnOp::Put { key: b"k".to_vec(), value: b"y".to_vec(), lease: None }],
        failure: vec![TxnOp::Get { key: b"k".to_vec() }],
    };
    let r = run(&mut s, 0, vec![WriteCommand::Txn(txn)]);
    assert_eq!(
        r[0],
        Ok(WriteResult::Txn { revision: 0, succeeded: false, results: vec![TxnOpResult::Get { kv: None }] })
    );
    assert!(s.kv.is_empty());
}

#[test]
fn txn_compares_versions_and_revisions() {
    let mut s = MemStore::new();
    run(&mut s, 0, vec![put("x", "1"), put("x", "2")]);
    let cmp = |op, target| Compare { key: b"x".to_vec(), op, target };
    let e = s.get(b"x").unwrap();
    assert!(compare_holds(e.as_ref(), &cmp(CompareOp::Equal, CompareTarget::ModRevision(2))));
    assert!(compare_holds(e.as_ref(), &cmp(CompareOp::Greater, CompareTarget::Version(1))));
    assert!(compare_holds(e.as_ref(), &cmp(CompareOp::Less, CompareTarget::CreateRevision(2))));
    assert!(compare_holds(e.as_ref(), &cmp(CompareOp::NotEqual, CompareTarget::Value(b"1".to_vec()))));
    assert!(compare_holds(None, &cmp(CompareOp::Equal, CompareTarget::Version(0))));
    assert!(!compare_holds(None, &cmp(CompareOp::NotEqual, CompareTarget::Value(b"1".to_vec()))));
}

#[test]
fn txn_with_unknown_lease_applies_nothing() {
    let mut s = MemStore::new();
    let txn = Txn {
        compare: vec![],
        success: vec![
            TxnOp::Put { key: b"a".to_vec(), value: b"1".to_vec(), lease: None },
            TxnOp::Put { key: b"b".to_vec(), value: b"1".to_vec(), lease: Some(LeaseId(99)) },
        ],
        failure: vec![],
    };
    let r = run(&mut s, 0, vec![WriteCommand::Txn(txn)]);
    assert_eq!(r[0], Err(AspenError::LeaseNotFound { id: 99 }));
    assert!(s.kv.is_empty());
    assert_eq!(s.revision(), 0);
}

#[test]
fn oversize_key_in_an_entry_is_refused_and_the_rest_apply() {
    let mut s = MemStore::new();
    let big = vec![b'k'; aspen_core::limits::MAX_KEY_BYTES + 1];
    let r = run(&mut s, 0, vec![WriteCommand::Put { key: big, value: vec![], lease: None }, put("ok", "1")]);
    assert!(matches!(r[0], Err(AspenError::KeyTooLarge { .. })));
    assert!(r[1].is_ok());
    assert_eq!(s.kv.len(), 1);
}

#[test]
fn too_many_txn_ops_is_refused() {
    let mut s = MemStore::new();
    let ops = (0..=aspen_core::limits::MAX_TXN_OPS).map(|i| TxnOp::Get { key: format!("k{i}").into_bytes() }).collect();
    let r = run(&mut s, 0, vec![WriteCommand::Txn(Txn { compare: vec![], success: ops, failure: vec![] })]);
    assert!(matches!(r[0], Err(AspenError::TooManyTxnOps { .. })));
}

#[test]
fn lease_expiry_deletes_attached_keys_by_leader_time() {
    let mut s = MemStore::new();
    let r = run(&mut s, 1_000, vec![WriteCommand::LeaseGrant { ttl_ms: 5_000 }]);
    let Ok(WriteResult::Lease { id, expires_at_ms, .. }) = r[0] else { panic!("{r:?}") };
    assert_eq!(expires_at_ms, 6_000);
    run(
        &mut s,
        1_000,
        vec![WriteCommand::Put { key: b"held".to_vec(), value: b"v".to_vec(), lease: Some(id) }, put("free", "v")],
    );
    // Not yet due: an expire proposed early is ignored.
    run(&mut s, 5_999, vec![WriteCommand::LeaseExpire { ids: vec![id] }]);
    assert!(s.get(b"held").unwrap().is_some());
    assert_eq!(expired_leases(&s.leases().unwrap(), 6_000, 10), vec![id]);
    let (res, events) = apply_batch(
        &mut s,
        &WriteBatch { leader_time_ms: 6_000, commands: vec![WriteCommand::LeaseExpire { ids: vec![id] }] },
    )
    .unwrap();
    assert_eq!(res.results[0], Ok(WriteResult::LeasesExpired { revision: 3, expired: 1 }));
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].kind, EventKind::Delete);
    assert!(s.get(b"held").unwrap().is_none());
    assert!(s.get(b"free").unwrap().is_some());
    assert!(s.leases.is_empty() && s.attached.is_empty());
}

#[test]
fn keepalive_extends_and_refresh_never_shortens() {
    let mut s = MemStore::new();
    run(&mut s, 0, vec![WriteCommand::LeaseGrant { ttl_ms: 2_000 }]);
    run(&mut s, 1_500, vec![WriteCommand::LeaseKeepAlive { id: LeaseId(1) }]);
    assert_eq!(s.leases[&LeaseId(1)].expires_at_ms, 3_500);
    run(&mut s, 100, vec![WriteCommand::LeaseRefreshAll]);
    assert_eq!(s.leases[&LeaseId(1)].expires_at_ms, 3_500);
    run(&mut s, 3_000, vec![WriteCommand::LeaseRefreshAll]);
    assert_eq!(s.leases[&LeaseId(1)].expires_at_ms, 5_000);
}

#[test]
fn rebinding_a_key_to_another_lease_detaches_it() {
    let mut s = MemStore::new();
    run(&mut s, 0, vec![WriteCommand::LeaseGrant { ttl_ms: 2_000 }, WriteCommand::LeaseGrant { ttl_ms: 2_000 }]);
    run(&mut s, 0, vec![WriteCommand::Put { key: b"k".to_vec(), value: vec![], lease: Some(LeaseId(1)) }]);
    run(&mut s, 0, vec![WriteCommand::Put { key: b"k".to_vec(), value: vec![], lease: Some(LeaseId(2)) }]);
    run(&mut s, 0, vec![WriteCommand::LeaseRevoke { id: LeaseId(1) }]);
    assert!(s.get(b"k").unwrap().is_some(), "revoking the old lease must not delete the key");
    run(&mut s, 0, vec![WriteCommand::LeaseRevoke { id: LeaseId(2) }]);
    assert!(s.get(b"k").unwrap().is_none());
}

#[test]
fn delete_range_removes_exactly_the_range() {
    let mut s = MemStore::new();
    run(&mut s, 0, vec![put("a", ""), put("b1", ""), put("b2", ""), put("c", "")]);
    let r = run(&mut s, 0, vec![WriteCommand::DeleteRange { start: b"b".to_vec(), end: b"c".to_vec() }]);
    assert_eq!(r[0], Ok(WriteResult::Delete { revision: 5, deleted: 2 }));
    assert_eq!(s.kv.keys().cloned().collect::<Vec<_>>(), vec![b"a".to_vec(), b"c".to_vec()]);
}

// ---- properties ----

#[derive(Debug, Clone)]
enum Op {
    Put(u8, u8),
    Delete(u8),
    DeleteRange(u8, u8),
    CasVersion(u8, u64, u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u8..8, any::<u8>()).prop_map(|(k, v)| Op::Put(k, v)),
        (0u8..8).prop_map(Op::Delete),
        (0u8..8, 0u8..8).prop_map(|(a, b)| Op::DeleteRange(a, b)),
        (0u8..8, 0u64..4, any::<u8>()).prop_map(|(k, ver, v)| Op::CasVersion(k, ver, v)),
    ]
}

fn key(k: u8) -> Vec<u8> {
    vec![b'k', k]
}

proptest! {
    /// The store matches a plain map model, revisions never go back, and every
    /// change bumps the revision exactly once.
    #[test]
    fn state_machine_matches_a_map_model(ops in proptest::collection::vec(op(), 1..60)) {
        let mut s = MemStore::new();
        let mut model: BTreeMap<Vec<u8>, (Vec<u8>, u64)> = BTreeMap::new();
        for op in ops {
            let before = s.revision();
            let (cmd, changed) = match op {
                Op::Put(k, v) => {
                    let e = model.entry(key(k)).or_insert((vec![], 0));
                    *e = (vec![v], e.1 + 1);
                    (WriteCommand::Put { key: key(k), value: vec![v], lease: None }, true)
                }
                Op::Delete(k) => (WriteCommand::Delete { key: key(k) }, model.remove(&key(k)).is_some()),
                Op::DeleteRange(a, b) => {
                    let doomed: Vec<_> = model.keys().filter(|x| **x >= key(a) && **x < key(b)).cloned().collect();
                    for d in &doomed { model.remove(d); }
                    (WriteCommand::DeleteRange { start: key(a), end: key(b) }, !doomed.is_empty())
                }
                Op::CasVersion(k, ver, v) => {
                    let cur = model.get(&key(k)).map_or(0, |e| e.1);
                    let ok = cur == ver;
                    if ok {
                        let e = model.entry(key(k)).or_insert((vec![], 0));
                        *e = (vec![v], e.1 + 1);
                    }
                    (WriteCommand::Txn(Txn {
                        compare: vec![Compare { key: key(k), op: CompareOp::Equal, target: CompareTarget::Version(ver) }],
                        success: vec![TxnOp::Put { key: key(k), value: vec![v], lease: None }],
                        failure: vec![],
                    }), ok)
                }
            };
            let r = run(&mut s, 0, vec![cmd]);
            prop_assert!(r[0].is_ok());
            prop_assert_eq!(s.revision(), before + u64::from(changed));
            for (k, e) in &s.kv {
                prop_assert!(e.mod_revision <= s.revision() && e.create_revision <= e.mod_revision);
                prop_assert_eq!(Some(&(e.value.clone(), e.version)), model.get(k));
            }
            prop_assert_eq!(s.kv.len(), model.len());
        }
    }
}
