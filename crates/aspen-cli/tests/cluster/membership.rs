//! Membership changes while clients write: add a learner, promote it, remove a voter,
//! and a node joining on its first start from a ticket file.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use aspen_core::api::ReadConsistency;
use aspen_testkit::NodeSpec;
use tokio::sync::Mutex;

use aspen_testkit::harness::{TestCluster, eventually, fast_raft_args};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_changes_under_load_lose_no_acknowledged_write() {
    let mut c = TestCluster::start(3).await;
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let mut writers = Vec::new();
    for w in 0..2 {
        let client = c.client().await;
        let (stop, acked) = (stop.clone(), acked.clone());
        writers.push(tokio::spawn(async move {
            let mut i = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("mem/{w}/{i}");
                if client.put(&key, "v").await.is_ok() {
                    acked.lock().await.push(key);
                }
                i += 1;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut spec = NodeSpec::new(4);
    spec.extra_args = fast_raft_args();
    let new = c.nodes.add_node_with(spec).unwrap();
    c.nodes.start(new).await.unwrap();
    let admin = c.client().await;
    admin.add_learner(4, c.node_addr(new)).await.unwrap();
    admin.promote(4).await.unwrap();
    admin.remove(c.nodes.node_id(0)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }

    let status = admin.status().await.unwrap();
    let mut voters: Vec<u64> = status.members.iter().filter(|m| m.voter).map(|m| m.node_id).collect();
    voters.sort_unstable();
    assert_eq!(voters, vec![2, 3, 4]);
    assert!(status.members.iter().all(|m| m.node_id != 1), "node 1 was removed: {status:?}");
    let acked = acked.lock().await.clone();
    assert!(!acked.is_empty());
    let newcomer = c.node_client(new).await;
    for key in &acked {
        eventually(&format!("{key} reaches the new member"), || async {
            newcomer.get(key, ReadConsistency::Stale).await.ok()?.map(|_| ())
        })
        .await;
    }
    let linear = c.node_client(1).await;
    for key in acked.iter().step_by(7) {
        assert!(linear.get(key, ReadConsistency::Linearizable).await.unwrap().is_some(), "{key} lost");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_node_joins_on_first_start_from_a_ticket_file() {
    let mut c = TestCluster::start(3).await;
    let client = c.client().await;
    client.put("join/before", "1").await.unwrap();
    let mut ticket = aspen_net::ClusterTicket::decode(&client.ticket().await.unwrap()).unwrap();
    ticket.token = Some(c.token.to_bytes());
    let ticket = ticket.encode();
    let ticket_file = c.nodes.data_dir(0).parent().unwrap().join("cluster.ticket");
    std::fs::write(&ticket_file, ticket).unwrap();
    let mut spec = NodeSpec::new(5);
    spec.extra_args = fast_raft_args();
    spec.extra_args.extend(["--join-ticket-file".to_string(), ticket_file.display().to_string()]);
    let new = c.nodes.add_node_with(spec).unwrap();
    c.nodes.start(new).await.unwrap();
    let status = eventually("node 5 is a voter", || async {
        let s = client.status().await.ok()?;
        s.members.iter().any(|m| m.node_id == 5 && m.voter).then_some(s)
    })
    .await;
    assert_eq!(status.members.len(), 4);
    c.wait_for_value_on(new, "join/before", Some(b"1")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leadership_transfers_to_the_named_voter() {
    let c = TestCluster::start(3).await;
    let client = c.client().await;
    let old = c.wait_for_leader().await;
    let target = (old + 1) % 3;
    client.transfer_leader(c.nodes.node_id(target)).await.unwrap();
    eventually("the named voter leads", || async {
        let s = client.status().await.ok()?;
        (s.leader == Some(c.nodes.node_id(target))).then_some(())
    })
    .await;
    client.put("after/transfer", "ok").await.unwrap();
    let err = client.transfer_leader(99).await.unwrap_err();
    assert!(err.to_string().contains("not a voter"), "{err}");
}
