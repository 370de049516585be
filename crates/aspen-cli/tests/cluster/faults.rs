//! Faults on purpose: leader and follower kill -9, pause, partitions with minority and
//! majority sides, whole-cluster crash and restart, and snapshot catch-up.

use std::time::Duration;

use aspen_client::{Client, ClientConfig};
use aspen_core::api::ReadConsistency;

use aspen_testkit::harness::{TestCluster, eventually};
use aspen_testkit::require_partitions;

/// Puts `prefix/i` for i in `range`, retrying each key until it is acknowledged
/// (a real client's behaviour; a retried put of the same value is harmless here).
async fn put_all(client: &Client, prefix: &str, range: std::ops::Range<u32>) {
    for i in range {
        let key = format!("{prefix}/{i}");
        eventually(&format!("{key} is acknowledged"), || async { client.put(&key, i.to_string()).await.ok() }).await;
    }
}

async fn assert_all_on(c: &TestCluster, node: usize, prefix: &str, n: u32) {
    let client = c.node_client(node).await;
    eventually(&format!("node {node} holds all {n} keys under {prefix}/"), || async {
        let page = client.scan_prefix(format!("{prefix}/"), 10_000, ReadConsistency::Stale).await.ok()?;
        (page.kvs.len() == n as usize).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_elects_another_and_loses_no_acknowledged_write() {
    let mut c = TestCluster::start(3).await;
    let client = c.client().await;
    put_all(&client, "lk", 0..30).await;
    let old = c.wait_for_leader().await;
    let before = c.node_client(old).await.status().await.unwrap();
    c.nodes.kill(old).unwrap();
    put_all(&client, "lk", 30..60).await;
    let new = c.wait_for_leader().await;
    let after = c.node_client(new).await.status().await.unwrap();
    assert!(after.term > before.term, "a new election: term {} after {}", after.term, before.term);
    assert_ne!(after.leader, before.leader, "another node leads: {after:?}");
    c.nodes.restart(old).await.unwrap();
    for node in 0..3 {
        assert_all_on(&c, node, "lk", 60).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_follower_catches_up_after_restart() {
    let mut c = TestCluster::start(3).await;
    let client = c.client().await;
    let leader = c.wait_for_leader().await;
    let follower = (leader + 1) % 3;
    c.nodes.kill(follower).unwrap();
    put_all(&client, "fk", 0..40).await;
    c.nodes.restart(follower).await.unwrap();
    assert_all_on(&c, follower, "fk", 40).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_leader_is_replaced_and_rejoins_as_follower() {
    let mut c = TestCluster::start(3).await;
    let client = c.client().await;
    put_all(&client, "pz", 0..10).await;
    let old = c.wait_for_leader().await;
    c.nodes.pause(old).unwrap();
    // The survivors elect a leader among themselves and keep accepting writes.
    let survivor = (old + 1) % 3;
    let via_survivor = c.for_node(c.node_addr(survivor), ClientConfig::default()).await;
    put_all(&via_survivor, "pz", 10..30).await;
    c.nodes.resume(old).unwrap();
    assert_all_on(&c, old, "pz", 30).await;
    let status = c.node_client(old).await.status().await.unwrap();
    assert_ne!(status.leader, Some(c.nodes.node_id(old)), "the resumed node must have stepped down");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_leader_commits_nothing_and_the_majority_side_moves_on() {
    let c = TestCluster::start(3).await;
    require_partitions!(c);
    let client = c.client().await;
    put_all(&client, "pt", 0..10).await;
    let old = c.wait_for_leader().await;
    let majority: Vec<usize> = (0..3).filter(|i| *i != old).collect();
    c.nodes.partition(&[&[old], &majority]).unwrap();

    // The minority side (the old leader alone) can neither commit a write nor confirm a
    // linearizable read.
    let minority = c.for_node(c.node_addr(old), ClientConfig::with_request_timeout(Duration::from_secs(3))).await;
    let lost = minority.put("pt/minority", "never").await;
    assert!(lost.is_err(), "a write on the minority side must not be acknowledged");
    assert!(minority.get("pt/0", ReadConsistency::Linearizable).await.is_err());

    // The majority side elects a leader and keeps serving.
    let majority_client = c.over(majority.iter().map(|i| c.node_addr(*i)).collect(), ClientConfig::default()).await;
    put_all(&majority_client, "pt", 10..30).await;

    c.nodes.heal().unwrap();
    for node in 0..3 {
        assert_all_on(&c, node, "pt", 30).await;
    }
    // The old leader's uncommitted entry was truncated and never became visible.
    for node in 0..3 {
        let kv = c.node_client(node).await.get("pt/minority", ReadConsistency::Stale).await.unwrap();
        assert!(kv.is_none(), "node {node} shows an uncommitted write");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_cut_off_from_its_peers_catches_up_when_the_partition_heals() {
    let c = TestCluster::start(3).await;
    require_partitions!(c);
    let client = c.client().await;
    let leader = c.wait_for_leader().await;
    let follower = (leader + 1) % 3;
    let rest: Vec<usize> = (0..3).filter(|i| *i != follower).collect();
    c.nodes.partition(&[&[follower], &rest]).unwrap();
    let majority = c.over(rest.iter().map(|i| c.node_addr(*i)).collect(), ClientConfig::default()).await;
    put_all(&majority, "pf", 0..25).await;
    c.nodes.heal().unwrap();
    assert_all_on(&c, follower, "pf", 25).await;
    assert!(client.get("pf/24", ReadConsistency::Linearizable).await.unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_every_node_at_once_loses_no_acknowledged_write() {
    let mut c = TestCluster::start(3).await;
    let client = c.client().await;
    put_all(&client, "crash", 0..50).await;
    for i in 0..3 {
        c.nodes.kill(i).unwrap();
    }
    for i in 0..3 {
        c.nodes.restart(i).await.unwrap();
    }
    let client = c.client().await;
    let page = eventually("the restarted cluster serves reads", || async {
        client.scan_prefix("crash/", 1000, ReadConsistency::Linearizable).await.ok()
    })
    .await;
    let have: std::collections::BTreeSet<String> =
        page.kvs.iter().map(|kv| String::from_utf8_lossy(&kv.key).into_owned()).collect();
    let missing: Vec<String> = (0..50).map(|i| format!("crash/{i}")).filter(|k| !have.contains(k)).collect();
    assert!(missing.is_empty(), "acknowledged writes lost after a whole-cluster crash: {missing:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_far_behind_follower_catches_up_from_a_streamed_snapshot() {
    let snapshot_args = ["--snapshot-every", "40", "--log-keep", "5"].iter().map(|s| s.to_string()).collect();
    let mut c = TestCluster::start_with(3, snapshot_args).await;
    let client = c.client().await;
    let leader = c.wait_for_leader().await;
    let follower = (leader + 1) % 3;
    c.nodes.kill(follower).unwrap();
    put_all(&client, "snap", 0..200).await;
    let status = eventually("the leader snapshots and purges its log", || async {
        let s = c.node_client(leader).await.status().await.ok()?;
        (s.purged_index.unwrap_or(0) > 100).then_some(s)
    })
    .await;
    assert!(status.snapshot_index.is_some());
    c.nodes.restart(follower).await.unwrap();
    assert_all_on(&c, follower, "snap", 200).await;
    let s = c.node_client(follower).await.status().await.unwrap();
    assert!(s.snapshot_index.is_some(), "the follower must have installed a snapshot: {s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_of_large_entries_is_snapshotted_by_size_before_the_entry_count() {
    // Entry count far away; 40 values of 16 KiB are well over the 256 KiB byte threshold.
    let args = ["--snapshot-every", "1000000", "--snapshot-every-bytes", "262144", "--log-keep", "2"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let c = TestCluster::start_with(3, args).await;
    let client = c.client().await;
    for i in 0..40 {
        client.put(format!("big/{i:02}"), vec![i as u8; 16 * 1024]).await.unwrap();
    }
    let leader = c.wait_for_leader().await;
    let status = eventually("the leader snapshots by log size and purges", || async {
        let s = c.node_client(leader).await.status().await.ok()?;
        (s.snapshot_index.is_some() && s.purged_index.is_some()).then_some(s)
    })
    .await;
    // Far fewer entries than --snapshot-every: only the byte threshold can have caused it.
    assert!(status.last_log_index.unwrap_or(0) < 100, "{status:?}");
    assert!(status.purged_index.is_some_and(|p| p > 0), "the log was purged: {status:?}");
    let kv = client.get("big/39", ReadConsistency::Linearizable).await.unwrap().unwrap();
    assert_eq!(kv.value, vec![39u8; 16 * 1024]);
}
