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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_form_a_cluster_from_an_init_flag_and_a_ticket_file_placed_later() {
    use aspen_client::{Client, ClientConfig};
    use aspen_net::token::Token;
    use aspen_testkit::{ClusterOptions, ProcessCluster};

    let scratch = tempfile::tempdir().unwrap();
    let placed = scratch.path().join("join.ticket");
    let specs = (1..=3)
        .map(|id| {
            let mut spec = NodeSpec::new(id);
            spec.extra_args = fast_raft_args();
            if id == 1 {
                spec.extra_args.push("--init".into());
            } else {
                spec.extra_args.extend(["--join-ticket-file".to_string(), placed.display().to_string()]);
            }
            spec
        })
        .collect();
    let mut nodes =
        ProcessCluster::with_specs(aspen_testkit::harness::aspen_bin(), specs, ClusterOptions::default()).unwrap();
    // The joiners boot first, with no ticket yet: they serve, and wait.
    nodes.start(1).await.unwrap();
    nodes.start(2).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(nodes.is_running(1) && nodes.is_running(2), "a node waiting for its ticket keeps running");
    nodes.start(0).await.unwrap();
    let written = nodes.data_dir(0).join("join.ticket");
    let mode = std::fs::metadata(&written).expect("--init wrote the join ticket").permissions();
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777, 0o600);
    std::fs::copy(&written, &placed).unwrap();

    let root = Token::decode(&std::fs::read_to_string(nodes.data_dir(0).join("root.token")).unwrap()).unwrap();
    let ticket = aspen_net::ClusterTicket::decode(&nodes.node_ticket(0).unwrap()).unwrap();
    let client =
        Client::for_node_with_token(ticket.nodes[0].clone(), ClientConfig::default(), Some(root)).await.unwrap();
    eventually("three voters", || async {
        let s = client.status().await.ok()?;
        (s.members.iter().filter(|m| m.voter).count() == 3).then_some(())
    })
    .await;
    client.put("formed/by", "tickets").await.unwrap();
    // The join ticket's token changes the membership and nothing else.
    let join_token = aspen_net::ClusterTicket::decode(&std::fs::read_to_string(&placed).unwrap()).unwrap().token;
    let join_token = Token::from_bytes(&join_token.unwrap()).unwrap();
    let joiner =
        Client::for_node_with_token(ticket.nodes[0].clone(), ClientConfig::default(), Some(join_token)).await.unwrap();
    let err = joiner.get("formed/by", ReadConsistency::Linearizable).await.unwrap_err();
    assert!(err.to_string().contains("permission denied"), "{err}");
    // A restarted joiner stays a voter; it does not join again.
    nodes.restart(2).await.unwrap();
    eventually("node 3 serves its copy after a restart", || async {
        let node3 = aspen_net::ClusterTicket::decode(&nodes.node_ticket(2).ok()?).ok()?.nodes.remove(0);
        let c = Client::for_node_with_token(node3, ClientConfig::default(), Some(c_token(&nodes))).await.ok()?;
        let kv = c.get("formed/by", ReadConsistency::Stale).await.ok()?;
        c.close().await;
        kv.map(drop)
    })
    .await;
    let status = client.status().await.unwrap();
    assert_eq!(status.members.iter().filter(|m| m.voter).count(), 3, "{status:?}");
}

fn c_token(nodes: &aspen_testkit::ProcessCluster) -> aspen_net::token::Token {
    aspen_net::token::Token::decode(&std::fs::read_to_string(nodes.data_dir(0).join("root.token")).unwrap()).unwrap()
}
