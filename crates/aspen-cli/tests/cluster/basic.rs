//! What a healthy three-node cluster must do: replicate, read consistently from any node,
//! paginate, compare-and-swap, expire leases and stream watches.

use std::time::Duration;

use aspen_core::api::ReadConsistency;
use aspen_core::command::{Compare, CompareOp, CompareTarget, Txn, TxnOp, TxnOpResult};
use aspen_core::{AspenError, EventKind};

use aspen_testkit::harness::{TestCluster, eventually};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_through_one_node_are_read_linearizably_through_every_node() {
    let c = TestCluster::start(3).await;
    let writer = c.node_client(1).await;
    let first = writer.put("app/config", "hello").await.unwrap();
    let second = writer.put("app/config", b"\x00binary\xff".to_vec()).await.unwrap();
    assert!(second.revision > first.revision);
    assert_eq!(second.prev.unwrap().value, b"hello");
    for i in 0..3 {
        let kv = c.node_client(i).await.get("app/config", ReadConsistency::Linearizable).await.unwrap().unwrap();
        assert_eq!(kv.value, b"\x00binary\xff", "node {i}");
        assert_eq!((kv.version, kv.mod_revision, kv.create_revision), (2, second.revision, first.revision));
    }
    c.wait_for_value_on(2, "app/config", Some(b"\x00binary\xff")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scan_paginates_in_key_order_and_delete_prefix_removes_exactly_the_prefix() {
    let c = TestCluster::start(3).await;
    let client = c.client().await;
    for i in 0..25 {
        client.put(format!("scan/{i:03}"), format!("v{i}")).await.unwrap();
    }
    client.put("scan0", "outside").await.unwrap();
    let mut seen = Vec::new();
    let mut start = b"scan/".to_vec();
    loop {
        let page = client.scan(&start, b"scan0", 10, ReadConsistency::Linearizable).await.unwrap();
        seen.extend(page.kvs.iter().map(|kv| String::from_utf8(kv.key.clone()).unwrap()));
        if !page.more {
            break;
        }
        start = aspen_client::keys::key_successor(&page.kvs.last().unwrap().key);
    }
    let expected: Vec<String> = (0..25).map(|i| format!("scan/{i:03}")).collect();
    assert_eq!(seen, expected);
    let deleted = client.delete_prefix("scan/").await.unwrap();
    assert_eq!(deleted.deleted, 25);
    assert!(client.scan_prefix("scan/", 100, ReadConsistency::Linearizable).await.unwrap().kvs.is_empty());
    assert_eq!(client.get("scan0", ReadConsistency::Linearizable).await.unwrap().unwrap().value, b"outside");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cas_and_transactions_decide_on_the_committed_state() {
    let c = TestCluster::start(3).await;
    let client = c.client().await;
    let missing = client.cas("cas/k", Some(b"x".to_vec()), "y").await.unwrap();
    assert!(!missing.succeeded, "a CAS on a missing key must fail");
    assert!(client.get("cas/k", ReadConsistency::Linearizable).await.unwrap().is_none());
    assert!(client.cas("cas/k", None, "one").await.unwrap().succeeded);
    assert!(!client.cas("cas/k", None, "again").await.unwrap().succeeded);
    let swapped = client.cas("cas/k", Some(b"one".to_vec()), "two").await.unwrap();
    assert!(swapped.succeeded);
    let stale = client.cas("cas/k", Some(b"one".to_vec()), "three").await.unwrap();
    assert!(!stale.succeeded);
    assert_eq!(stale.current.unwrap().value, b"two");

    let kv = client.get("cas/k", ReadConsistency::Linearizable).await.unwrap().unwrap();
    // Applies only while cas/k is unchanged and cas/a does not exist yet.
    let txn = Txn {
        compare: vec![
            Compare {
                key: b"cas/k".to_vec(),
                op: CompareOp::Equal,
                target: CompareTarget::ModRevision(kv.mod_revision),
            },
            Compare { key: b"cas/a".to_vec(), op: CompareOp::Equal, target: CompareTarget::Version(0) },
        ],
        success: vec![
            TxnOp::Put { key: b"cas/a".to_vec(), value: b"1".to_vec(), lease: None },
            TxnOp::Put { key: b"cas/b".to_vec(), value: b"1".to_vec(), lease: None },
        ],
        failure: vec![TxnOp::Get { key: b"cas/k".to_vec() }],
    };
    let applied = client.txn(txn.clone()).await.unwrap();
    assert!(applied.succeeded);
    let a = client.get("cas/a", ReadConsistency::Linearizable).await.unwrap().unwrap();
    let b = client.get("cas/b", ReadConsistency::Linearizable).await.unwrap().unwrap();
    assert_eq!(a.mod_revision, b.mod_revision, "one transaction, one revision");
    let again = client.txn(txn).await.unwrap();
    assert!(!again.succeeded);
    assert!(matches!(&again.results[0], TxnOpResult::Get { kv: Some(kv) } if kv.value == b"two"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_expiry_deletes_attached_keys_and_keepalive_holds_them() {
    let c = TestCluster::start(3).await;
    let client = c.client().await;
    let doomed = client.lease_grant(Duration::from_secs(1)).await.unwrap();
    let kept = client.lease_grant(Duration::from_secs(2)).await.unwrap();
    client.put_with_lease("lease/doomed", "x", doomed.id).await.unwrap();
    client.put_with_lease("lease/kept", "x", kept.id).await.unwrap();
    client.put("lease/free", "x").await.unwrap();
    // Keep one lease alive for well past both TTLs while the other expires.
    let keepalive = {
        let client = c.client().await;
        let id = kept.id;
        tokio::spawn(async move {
            for _ in 0..12 {
                let _ = client.lease_keepalive(id).await;
                tokio::time::sleep(Duration::from_millis(400)).await;
            }
        })
    };
    eventually("the expired lease's key is deleted", || async {
        client.get("lease/doomed", ReadConsistency::Linearizable).await.ok()?.is_none().then_some(())
    })
    .await;
    assert!(client.get("lease/kept", ReadConsistency::Linearizable).await.unwrap().is_some());
    assert!(client.get("lease/free", ReadConsistency::Linearizable).await.unwrap().is_some());
    keepalive.await.unwrap();
    let err = client.lease_keepalive(doomed.id).await.unwrap_err();
    assert!(matches!(err.aspen(), Some(AspenError::LeaseNotFound { .. })), "{err}");
    let revoked = client.lease_revoke(kept.id).await.unwrap();
    assert_eq!(revoked.deleted_keys, 1);
    assert!(client.get("lease/kept", ReadConsistency::Linearizable).await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_replays_from_a_revision_then_follows_and_reports_compaction() {
    // A short history, so compaction is reached by a handful of writes.
    let mut c = TestCluster::start_with(3, vec!["--watch-history".into(), "8".into()]).await;
    let client = c.client().await;
    let first = client.put("w/a", "1").await.unwrap();
    client.put("other/x", "1").await.unwrap();
    client.delete("w/a").await.unwrap();
    let mut watch = client.watch("w/", first.revision);
    let e1 = watch.next().await.unwrap().unwrap();
    assert_eq!((e1.kind, e1.kv.key.as_slice(), e1.kv.value.as_slice()), (EventKind::Put, &b"w/a"[..], &b"1"[..]));
    let e2 = watch.next().await.unwrap().unwrap();
    assert_eq!(e2.kind, EventKind::Delete);
    let live = client.put("w/b", "2").await.unwrap();
    let e3 = watch.next().await.unwrap().unwrap();
    assert_eq!((e3.kv.key.as_slice(), e3.kv.mod_revision), (&b"w/b"[..], live.revision));
    drop(watch);

    // A restarted node rebuilds its history from what it applies; once more than the
    // history holds has been written, the oldest revisions are compacted, with an error
    // that says so, and a recent revision still replays.
    c.nodes.restart(2).await.unwrap();
    let mut last = live;
    for i in 0..12 {
        last = client.put(format!("w/n{i:02}"), "x").await.unwrap();
    }
    c.wait_for_value_on(2, "w/n11", Some(b"x")).await;
    let restarted = c.node_client(2).await;
    let mut old = restarted.watch("w/", first.revision);
    let err = old.next().await.unwrap().unwrap_err();
    assert!(err.is_compacted(), "{err}");
    let mut recent = restarted.watch("w/", last.revision);
    let e = recent.next().await.unwrap().unwrap();
    assert_eq!((e.kv.key.as_slice(), e.kv.mod_revision), (&b"w/n11"[..], last.revision));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_whose_endpoint_stopped_binds_a_new_one_and_carries_on() {
    let c = TestCluster::start(1).await;
    let client = c.client().await;
    client.put("ep/k", "v").await.unwrap();
    let before = client.endpoint_id();
    client.break_endpoint_for_tests().await;
    let kv = client.get("ep/k", ReadConsistency::Linearizable).await.unwrap().unwrap();
    assert_eq!(kv.value, b"v");
    assert_ne!(client.endpoint_id(), before, "a new endpoint was bound");
    client.put("ep/k", "w").await.unwrap();
}
