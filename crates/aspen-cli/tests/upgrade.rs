//! A node of this version starts on a data directory the previous version wrote, and serves
//! the same keys, leases, queues, counters, pins, blobs and revocations.
//!
//! `fixtures/datadir-v1.tar.gz` was written once by the code of commit 63c5baf (before the
//! app seam), with `fixtures/make-datadir-v1.sh`: a one-node cluster with a snapshot and a
//! log tail after it. It is never regenerated.

use std::path::Path;
use std::time::Duration;

use aspen_blob::BlobClient;
use aspen_client::{Client, ClientConfig, ReadConsistency};
use aspen_core::ErrorCode;
use aspen_core::api::{ClientRequest, ClientResponse};
use aspen_net::ClusterTicket;
use aspen_net::token::Token;
use aspen_testkit::harness::{aspen_bin, eventually};
use aspen_testkit::{ClusterOptions, NodeSpec, ProcessCluster};

fn fixture() -> std::path::PathBuf {
    aspen_core::golden::crate_dir(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/datadir-v1.tar.gz")
}

/// Unpacks the fixture into node 0's data dir.
fn unpack_into(dir: &Path) {
    let scratch = tempfile::tempdir().unwrap();
    let status = std::process::Command::new("tar")
        .arg("-xzf")
        .arg(fixture())
        .arg("-C")
        .arg(scratch.path())
        .status()
        .expect("tar runs");
    assert!(status.success(), "unpacking {}", fixture().display());
    std::fs::create_dir_all(dir).unwrap();
    for entry in std::fs::read_dir(scratch.path().join("data")).unwrap() {
        let entry = entry.unwrap();
        std::fs::rename(entry.path(), dir.join(entry.file_name())).unwrap();
    }
}

async fn root_client(nodes: &ProcessCluster) -> (Client, Token) {
    let ticket = ClusterTicket::decode(&nodes.node_ticket(0).unwrap()).unwrap();
    let text = std::fs::read_to_string(nodes.data_dir(0).join("root.token")).unwrap();
    let token = Token::decode(&text).unwrap();
    let client = Client::for_node_with_token(ticket.nodes[0].clone(), ClientConfig::default(), Some(token.clone()))
        .await
        .unwrap();
    (client, token)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_serves_the_data_dir_the_previous_version_wrote() {
    let mut nodes = ProcessCluster::with_specs(aspen_bin(), vec![NodeSpec::new(1)], ClusterOptions::default()).unwrap();
    unpack_into(nodes.data_dir(0));
    nodes.start(0).await.unwrap();
    let (client, _) = root_client(&nodes).await;

    // The one node elects itself leader again; then every read is linearizable.
    let first = eventually("the restored node serves reads", || async {
        client.get("fixture/key01", ReadConsistency::Linearizable).await.ok()
    })
    .await;
    assert_eq!(first.unwrap().value, b"value 01");
    let page = client.scan_prefix("fixture/", 1000, ReadConsistency::Linearizable).await.unwrap();
    assert_eq!(page.kvs.len(), 63, "60 keys, after-snapshot, leased and last, and not gone");
    assert!(page.kvs.iter().all(|kv| kv.key != b"fixture/gone"), "a deleted key stays deleted");
    let last = client.get("fixture/last", ReadConsistency::Linearizable).await.unwrap().unwrap();
    assert_eq!(last.value, b"written last", "the log after the snapshot was replayed");
    let leased = client.get("fixture/leased", ReadConsistency::Linearizable).await.unwrap().unwrap();
    let lease = leased.lease.expect("the key is still attached to its lease");
    assert!(client.lease_list().await.unwrap().iter().any(|l| l.id == lease), "the lease lives on");

    let kv = client.kv();
    let stats = aspen_coord::Queue::new(&kv, "jobs").unwrap().stats().await.unwrap().expect("the queue exists");
    assert_eq!((stats.ready, stats.in_flight), (2, 0));
    assert_eq!(aspen_coord::Counter::new(&kv, "builds").get().await.unwrap(), 5);

    let hash_text = std::fs::read_to_string(nodes.data_dir(0).join("blob.hash")).unwrap();
    let hash = aspen_blob::parse_blob_hash(hash_text.trim()).unwrap();
    let blobs = BlobClient::new(&client);
    let pins = blobs.pins("", None, 10).await.unwrap().0;
    assert_eq!(pins.len(), 1);
    assert_eq!((pins[0].name.as_str(), pins[0].hash), ("fixture/v1", hash));
    assert_eq!(blobs.get(hash).await.unwrap(), b"blob bytes of the v1 fixture\n");

    let revoked = Token::decode(&std::fs::read_to_string(nodes.data_dir(0).join("revoked.token")).unwrap()).unwrap();
    let ticket = ClusterTicket::decode(&nodes.node_ticket(0).unwrap()).unwrap();
    let refused =
        Client::for_node_with_token(ticket.nodes[0].clone(), ClientConfig::default(), Some(revoked)).await.unwrap_err();
    assert!(refused.to_string().contains("revoked"), "{refused}");

    // A client of the previous version asking for a blob on the client protocol is told
    // where blobs went, not misread.
    let err = client.request(ClientRequest::BlobHas { hash }).await.unwrap_err();
    assert_eq!(err.aspen().map(|e| e.code()), Some(ErrorCode::UnknownRequest), "{err}");
    assert!(err.to_string().contains("aspen/blob/1"), "{err}");

    // It goes on taking writes, and restarts on what it wrote itself.
    client.put("fixture/after-upgrade", "yes").await.unwrap();
    client.close().await;
    nodes.stop(0).await.unwrap();
    nodes.start(0).await.unwrap();
    let (client, _) = root_client(&nodes).await;
    let after = eventually("the upgraded node serves again", || async {
        client.get("fixture/after-upgrade", ReadConsistency::Linearizable).await.ok()
    })
    .await;
    assert_eq!(after.unwrap().value, b"yes");
    match client.request(ClientRequest::Apps).await.unwrap() {
        ClientResponse::Apps { apps } => assert!(apps.iter().any(|a| a.name == "blob"), "{apps:?}"),
        other => panic!("apps answered {other:?}"),
    }
    tokio::time::timeout(Duration::from_secs(5), client.close()).await.unwrap();
}
