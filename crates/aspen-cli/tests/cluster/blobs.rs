//! Blobs across real nodes: add on one, read from another, survive the first's death; a
//! replaced node is repaired; damaged copies are never served as whole; garbage collection
//! spares pins and fresh adds; rights are enforced; only members speak the blob protocol.

use std::time::Duration;

use aspen_client::{Client, ClientConfig, ClientError};
use aspen_core::ErrorCode;
use aspen_core::capability::Capability;
use aspen_net::token::{Audience, LinkSpec};
use aspen_testkit::NodeSpec;
use iroh::SecretKey;
use rand::RngCore;
use tokio::io::AsyncWriteExt;

use crate::common::{TestCluster, eventually, fast_raft_args};

fn random_bytes(len: usize) -> Vec<u8> {
    let mut data = vec![0u8; len];
    rand::rng().fill_bytes(&mut data);
    data
}

fn args(extra: &[&str]) -> Vec<String> {
    extra.iter().map(|s| s.to_string()).collect()
}

/// The node ids that hold `hash` complete, as the cluster reports them.
async fn holders(client: &Client, hash: [u8; 32]) -> Vec<u64> {
    let status = client.blob_status(hash).await.unwrap();
    status.iter().filter(|h| h.size.is_some()).map(|h| h.node_id).collect()
}

/// The path of `hash`'s data file in node `i`'s blob store.
fn data_file(c: &TestCluster, i: usize, hash: [u8; 32]) -> std::path::PathBuf {
    c.nodes.data_dir(i).join("blobs/data").join(format!("{}.data", aspen_client::blob_hash_hex(&hash)))
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

async fn client_with_caps(c: &TestCluster, caps: Vec<Capability>) -> Client {
    let holder = SecretKey::from_bytes(&c.token.holder_secret.expect("the root token may delegate"));
    let spec = LinkSpec {
        caps,
        audience: Audience::Bearer,
        not_before_ms: now_ms() - 60_000,
        expires_ms: Some(now_ms() + 3_600_000),
        may_delegate: false,
    };
    let token = c.token.delegate(&holder, spec).unwrap();
    Client::for_node_with_token(c.node_addr(0), ClientConfig::default(), Some(token)).await.unwrap()
}

fn code(err: &ClientError) -> Option<ErrorCode> {
    err.aspen().map(|e| e.code())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_added_on_one_node_is_on_a_majority_read_from_another_and_outlives_its_first_holder() {
    let mut c = TestCluster::start(3).await;
    let data = random_bytes(5 * 1024 * 1024 + 17);
    let first = c.node_client(0).await;
    let info = first.blob_add_bytes(&data).await.unwrap();
    assert_eq!(info.hash, *blake3::hash(&data).as_bytes(), "a blob is named by its BLAKE3 hash");
    assert_eq!(info.size, data.len() as u64);
    assert_eq!(info.replicas, 2, "acknowledged once a majority of the 3 voters holds it");
    assert_eq!(holders(&first, info.hash).await, vec![1, 2], "the adder and the first other member in id order");
    assert_eq!(first.blob_add_bytes(&data).await.unwrap(), info, "adding the same bytes again is the same blob");

    let third = c.node_client(2).await;
    assert_eq!(third.blob_has(info.hash).await.unwrap(), None, "node 3 has not fetched it yet");
    assert_eq!(third.blob_get(info.hash).await.unwrap(), data, "node 3 fetches it from node 1");
    assert_eq!(third.blob_has(info.hash).await.unwrap(), Some(data.len() as u64));
    let listed = third.blob_list(None, 100).await.unwrap().0;
    assert!(listed.iter().any(|b| b.hash == info.hash && b.size == info.size), "{listed:?}");

    c.nodes.kill(0).unwrap();
    let second = c.node_client(1).await;
    assert_eq!(second.blob_get(info.hash).await.unwrap(), data, "node 2 still holds it");
    let status = second.blob_status(info.hash).await.unwrap();
    let dead = status.iter().find(|h| h.node_id == 1).unwrap();
    assert!(dead.size.is_none() && dead.error.is_some(), "the dead node is reported as unreachable: {status:?}");

    // With node 1 dead, adds on node 2 still reach a majority, through node 3.
    for _ in 0..2 {
        let more = random_bytes(300_000);
        let added = second.blob_add_bytes(&more).await.unwrap();
        assert_eq!(added.replicas, 2);
        assert_eq!(holders(&second, added.hash).await, vec![2, 3]);
    }

    let missing = *blake3::hash(b"never added").as_bytes();
    let err = second.blob_get(missing).await.unwrap_err();
    assert_eq!(code(&err), Some(ErrorCode::Unavailable), "{err}");
    assert!(err.to_string().contains("no member provided it"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_rights_are_checked_and_non_members_cannot_fetch() {
    let c = TestCluster::start(1).await;
    let root = c.node_client(0).await;
    let info = root.blob_add_bytes(b"guarded bytes").await.unwrap();

    let kv_only = client_with_caps(&c, vec![Capability::Read(Vec::new()), Capability::Write(Vec::new())]).await;
    let err = kv_only.blob_add_bytes(b"x").await.unwrap_err();
    assert_eq!(code(&err), Some(ErrorCode::PermissionDenied), "{err}");
    assert!(err.to_string().contains("blob write"), "{err}");
    let err = kv_only.blob_get(info.hash).await.unwrap_err();
    assert_eq!(code(&err), Some(ErrorCode::PermissionDenied), "{err}");

    let reader = client_with_caps(&c, vec![Capability::BlobRead]).await;
    assert_eq!(reader.blob_get(info.hash).await.unwrap(), b"guarded bytes");
    let err = reader.blob_add_bytes(b"x").await.unwrap_err();
    assert_eq!(code(&err), Some(ErrorCode::PermissionDenied), "{err}");

    // An endpoint that is not a member speaks the iroh-blobs protocol directly: refused.
    // (Bound to all addresses: the nodes may live in their own network namespaces.)
    let stranger = iroh::Endpoint::builder(iroh::endpoint::presets::Minimal)
        .relay_mode(iroh::RelayMode::Disabled)
        .bind_addr("0.0.0.0:0".parse::<std::net::SocketAddr>().unwrap())
        .unwrap()
        .bind()
        .await
        .unwrap();
    let addr = aspen_net::endpoint::endpoint_addr(&c.node_addr(0)).unwrap();
    let store = iroh_blobs::store::mem::MemStore::new();
    let fetched = async {
        let conn = stranger.connect(addr, iroh_blobs::ALPN).await?;
        store.remote().fetch(conn, iroh_blobs::Hash::from_bytes(info.hash)).await?;
        anyhow::Ok(())
    };
    let fetched = tokio::time::timeout(Duration::from_secs(30), fetched).await.expect("the refusal is prompt");
    assert!(fetched.is_err(), "a non-member fetched a blob");
    assert!(!store.has(iroh_blobs::Hash::from_bytes(info.hash)).await.unwrap());
    stranger.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_node_is_repaired_and_an_add_short_of_replicas_is_refused() {
    let blob_args = ["--blob-replicas", "3", "--blob-repair-interval-secs", "1"];
    let mut c = TestCluster::start_with(3, args(&blob_args)).await;
    let client = c.client().await;
    let pinned = random_bytes(700_000);
    let info = client.blob_add_bytes(&pinned).await.unwrap();
    assert_eq!(info.replicas, 3);
    client.blob_pin("keep/pinned", info.hash).await.unwrap();

    // Node 3 dies for good: three replicas can no longer be had.
    c.nodes.kill(2).unwrap();
    let first = c.node_client(0).await;
    let orphan = random_bytes(300_000);
    let err = first.blob_add_bytes(&orphan).await.unwrap_err();
    assert_eq!(code(&err), Some(ErrorCode::Unavailable), "{err}");
    assert!(err.to_string().contains("of the 3 nodes it must be on"), "{err}");
    let orphan_hash = *blake3::hash(&orphan).as_bytes();

    // Node 4 replaces it; the leader's repair rounds copy both blobs over (the refused add
    // is still fresh, so it is kept and repaired too).
    let mut spec = NodeSpec::new(4);
    spec.extra_args = fast_raft_args().into_iter().chain(args(&blob_args)).collect();
    let new = c.nodes.add_node_with(spec).unwrap();
    c.nodes.start(new).await.unwrap();
    first.add_learner(4, c.node_addr(new)).await.unwrap();
    first.promote(4).await.unwrap();
    first.remove(3).await.unwrap();
    let fourth = c.node_client(new).await;
    for (what, hash) in [("pinned", info.hash), ("orphan", orphan_hash)] {
        eventually(&format!("the {what} blob is repaired onto node 4"), || async {
            fourth.blob_has(hash).await.ok()?.map(drop)
        })
        .await;
    }
    assert_eq!(holders(&first, info.hash).await, vec![1, 2, 4]);
    assert_eq!(fourth.blob_get(info.hash).await.unwrap(), pinned);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_or_truncated_copy_is_detected_and_another_member_serves_the_blob() {
    let mut c = TestCluster::start_with(3, args(&["--blob-replicas", "2"])).await;
    let first = c.node_client(0).await;
    let corrupt = random_bytes(1024 * 1024 + 5);
    let truncated = random_bytes(900_000);
    let a = first.blob_add_bytes(&corrupt).await.unwrap().hash;
    let b = first.blob_add_bytes(&truncated).await.unwrap().hash;
    assert_eq!(holders(&first, a).await, vec![1, 2]);
    assert_eq!(holders(&first, b).await, vec![1, 2]);
    first.close().await;

    // Damage node 1's copies on disk while it is down: one byte flipped, one file cut short.
    c.nodes.kill(0).unwrap();
    let path = data_file(&c, 0, a);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[400_000] ^= 0x5a;
    std::fs::write(&path, bytes).unwrap();
    std::fs::OpenOptions::new().write(true).open(data_file(&c, 0, b)).unwrap().set_len(450_000).unwrap();
    c.nodes.restart(0).await.unwrap();
    c.wait_for_leader().await;

    // Read straight from the damaged node, the client's own check refuses the bytes.
    let first = c.node_client(0).await;
    for hash in [a, b] {
        match first.blob_get(hash).await {
            Ok(got) => panic!("node 1 served {} bytes of a damaged blob as whole", got.len()),
            Err(e) => assert!(matches!(e, ClientError::BlobCorrupt { .. }), "{e}"),
        }
    }
    // Node 3 asks node 1 first (id order): the transfer fails verification, node 2 is asked.
    let third = c.node_client(2).await;
    assert_eq!(third.blob_get(a).await.unwrap(), corrupt, "a corrupted transfer is never returned");
    assert_eq!(third.blob_get(b).await.unwrap(), truncated, "a truncated transfer is never returned");

    // A client that knows more nodes sets the damaged one aside and asks the next.
    let over_all = c.over(vec![c.node_addr(0), c.node_addr(1), c.node_addr(2)], ClientConfig::default()).await;
    assert_eq!(over_all.blob_get(a).await.unwrap(), corrupt, "retried on another node");
    let over_all = c.over(vec![c.node_addr(0), c.node_addr(1), c.node_addr(2)], ClientConfig::default()).await;
    assert_eq!(over_all.blob_get(b).await.unwrap(), truncated, "retried on another node");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_keeps_pinned_and_uploading_blobs_and_removes_the_rest_after_the_grace_period() {
    let c = TestCluster::start_with(3, args(&["--blob-gc-grace-secs", "2", "--blob-gc-interval-secs", "1"])).await;
    let client = c.node_client(0).await;
    let kept = random_bytes(200_000);
    let dropped = random_bytes(200_000);
    let kept_hash = client.blob_add_bytes(&kept).await.unwrap().hash;
    client.blob_pin("keep/this", kept_hash).await.unwrap();
    let dropped_hash = client.blob_add_bytes(&dropped).await.unwrap().hash;

    // An upload that takes three times the grace period, over several collection rounds.
    let slow = random_bytes(24 * 16 * 1024);
    let (mut writer, mut reader) = tokio::io::duplex(64 * 1024);
    let feed = {
        let slow = slow.clone();
        tokio::spawn(async move {
            for chunk in slow.chunks(16 * 1024) {
                writer.write_all(chunk).await.unwrap();
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };
    let slow_info = client.blob_add(&mut reader).await.unwrap();
    feed.await.unwrap();
    assert_eq!(slow_info.hash, *blake3::hash(&slow).as_bytes());
    client.blob_pin("keep/slow", slow_info.hash).await.unwrap();

    eventually("the unpinned blob is collected on every node", || async {
        holders(&client, dropped_hash).await.is_empty().then_some(())
    })
    .await;
    assert_eq!(holders(&client, kept_hash).await.len(), 2, "the pinned blob is untouched");
    assert_eq!(holders(&client, slow_info.hash).await.len(), 2, "the slow upload survived");
    assert_eq!(client.blob_get(slow_info.hash).await.unwrap(), slow);

    assert!(client.blob_unpin("keep/this").await.unwrap());
    eventually("an unpinned blob is collected once its grace period is over", || async {
        holders(&client, kept_hash).await.is_empty().then_some(())
    })
    .await;
    assert_eq!(client.blob_get(slow_info.hash).await.unwrap(), slow, "the other pin still holds");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_deletes_nothing_while_the_live_set_cannot_be_read() {
    let mut c = TestCluster::start_with(3, args(&["--blob-gc-grace-secs", "1", "--blob-gc-interval-secs", "1"])).await;
    let first = c.node_client(0).await;
    let data = random_bytes(100_000);
    let hash = first.blob_add_bytes(&data).await.unwrap().hash;
    first.blob_pin("keep/through-outage", hash).await.unwrap();

    // Without a quorum no node can read the pins: a collector that went ahead anyway would
    // see an empty live set and delete the blob within a round or two.
    c.nodes.kill(1).unwrap();
    c.nodes.kill(2).unwrap();
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(first.blob_has(hash).await.unwrap(), Some(data.len() as u64), "kept through six rounds");
    assert_eq!(first.blob_get(hash).await.unwrap(), data);
}
