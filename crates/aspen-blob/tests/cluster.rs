//! Blobs across real nodes: add on one, read from another, survive the first's death; a
//! replaced node is repaired; damaged copies are never served as whole; garbage collection
//! spares pins and fresh adds; rights (scoped by pin name) are enforced; only members speak
//! the member protocols.

use std::time::Duration;

use aspen_blob::BlobClient;
use aspen_client::{Client, ClientConfig, ClientError};
use aspen_core::ErrorCode;
use aspen_core::capability::Capability;
use aspen_testkit::NodeSpec;
use aspen_testkit::harness::{TestCluster, args, eventually, fast_raft_args};
use rand::RngCore;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn random_bytes(len: usize) -> Vec<u8> {
    let mut data = vec![0u8; len];
    rand::rng().fill_bytes(&mut data);
    data
}

fn blobs(client: &Client) -> BlobClient {
    BlobClient::new(client)
}

/// The node ids that hold `hash` complete, as the cluster reports them.
async fn holders(client: &Client, hash: [u8; 32]) -> Vec<u64> {
    let status = blobs(client).status(hash).await.unwrap();
    status.iter().filter(|h| h.size.is_some()).map(|h| h.node_id).collect()
}

/// Whether node `node_id` holds `hash` complete, as it says itself.
async fn holds(client: &Client, hash: [u8; 32], node_id: u64) -> bool {
    let status = blobs(client).status(hash).await.unwrap();
    status.iter().any(|h| h.node_id == node_id && h.size.is_some())
}

/// The path of `hash`'s data file in node `i`'s blob store.
fn data_file(c: &TestCluster, i: usize, hash: [u8; 32]) -> std::path::PathBuf {
    c.nodes.data_dir(i).join("blobs/data").join(format!("{}.data", aspen_blob::blob_hash_hex(&hash)))
}

fn app(right: &str, scope: &str) -> Capability {
    Capability::App { app: "blob".into(), right: right.into(), scope: scope.as_bytes().to_vec() }
}

/// An iroh endpoint that belongs to no cluster. Bound to all addresses: the nodes may live
/// in their own network namespaces.
async fn stranger_endpoint() -> iroh::Endpoint {
    iroh::Endpoint::builder(iroh::endpoint::presets::Minimal)
        .relay_mode(iroh::RelayMode::Disabled)
        .bind_addr("0.0.0.0:0".parse::<std::net::SocketAddr>().unwrap())
        .unwrap()
        .bind()
        .await
        .unwrap()
}

fn code(err: &ClientError) -> Option<ErrorCode> {
    err.aspen().map(|e| e.code())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_added_on_one_node_is_on_a_majority_read_from_another_and_outlives_its_first_holder() {
    let mut c = TestCluster::start(3).await;
    let data = random_bytes(5 * 1024 * 1024 + 17);
    let first = c.node_client(0).await;
    let info = blobs(&first).add_bytes(&data).await.unwrap();
    assert_eq!(info.hash, *blake3::hash(&data).as_bytes(), "a blob is named by its BLAKE3 hash");
    assert_eq!(info.size, data.len() as u64);
    assert_eq!(info.replicas, 2, "acknowledged once a majority of the 3 voters holds it");
    assert_eq!(holders(&first, info.hash).await, vec![1, 2], "the adder and the first other member in id order");
    assert_eq!(blobs(&first).add_bytes(&data).await.unwrap(), info, "adding the same bytes again is the same blob");

    let third = c.node_client(2).await;
    assert!(!holds(&third, info.hash, 3).await, "node 3 has not fetched it yet");
    assert_eq!(blobs(&third).has(info.hash).await.unwrap(), Some(data.len() as u64), "has asks the cluster");
    assert_eq!(blobs(&third).get(info.hash).await.unwrap(), data, "node 3 fetches it from node 1");
    assert!(holds(&third, info.hash, 3).await);
    let listed = blobs(&third).list(None, 100).await.unwrap().0;
    assert!(listed.iter().any(|b| b.hash == info.hash && b.size == info.size), "{listed:?}");

    c.nodes.kill(0).unwrap();
    let second = c.node_client(1).await;
    assert_eq!(blobs(&second).get(info.hash).await.unwrap(), data, "node 2 still holds it");
    let status = blobs(&second).status(info.hash).await.unwrap();
    let dead = status.iter().find(|h| h.node_id == 1).unwrap();
    assert!(dead.size.is_none() && dead.error.is_some(), "the dead node is reported as unreachable: {status:?}");

    // With node 1 dead, adds on node 2 still reach a majority, through node 3.
    for _ in 0..2 {
        let more = random_bytes(300_000);
        let added = blobs(&second).add_bytes(&more).await.unwrap();
        assert_eq!(added.replicas, 2);
        assert_eq!(holders(&second, added.hash).await, vec![2, 3]);
    }

    let missing = *blake3::hash(b"never added").as_bytes();
    let err = blobs(&second).get(missing).await.unwrap_err();
    assert_eq!(code(&err), Some(ErrorCode::Unavailable), "{err}");
    assert!(err.to_string().contains("no member provided it"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_rights_are_checked_and_non_members_cannot_fetch() {
    let c = TestCluster::start(1).await;
    let root = c.node_client(0).await;
    let info = blobs(&root).add_bytes(b"guarded bytes").await.unwrap();

    let kv_only = c.client_with_caps(0, vec![Capability::Read(Vec::new()), Capability::Write(Vec::new())]).await;
    let err = blobs(&kv_only).add_bytes(b"x").await.unwrap_err();
    assert_eq!(code(&err), Some(ErrorCode::PermissionDenied), "{err}");
    assert!(err.to_string().contains("blob:write"), "{err}");
    let err = blobs(&kv_only).get(info.hash).await.unwrap_err();
    assert_eq!(code(&err), Some(ErrorCode::PermissionDenied), "{err}");

    let reader = c.client_with_caps(0, vec![Capability::BlobRead]).await;
    assert_eq!(blobs(&reader).get(info.hash).await.unwrap(), b"guarded bytes");
    let err = blobs(&reader).add_bytes(b"x").await.unwrap_err();
    assert_eq!(code(&err), Some(ErrorCode::PermissionDenied), "{err}");

    // An endpoint that is not a member speaks the iroh-blobs protocol directly: refused.
    let stranger = stranger_endpoint().await;
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
    let info = blobs(&client).add_bytes(&pinned).await.unwrap();
    assert_eq!(info.replicas, 3);
    blobs(&client).pin("keep/pinned", info.hash).await.unwrap();

    // Node 3 dies for good: three replicas can no longer be had.
    c.nodes.kill(2).unwrap();
    let first = c.node_client(0).await;
    let orphan = random_bytes(300_000);
    let err = blobs(&first).add_bytes(&orphan).await.unwrap_err();
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
            holds(&fourth, hash, 4).await.then_some(())
        })
        .await;
    }
    assert_eq!(holders(&first, info.hash).await, vec![1, 2, 4]);
    assert_eq!(blobs(&fourth).get(info.hash).await.unwrap(), pinned);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_or_truncated_copy_is_detected_and_another_member_serves_the_blob() {
    let mut c = TestCluster::start_with(3, args(&["--blob-replicas", "2"])).await;
    let first = c.node_client(0).await;
    let corrupt = random_bytes(1024 * 1024 + 5);
    let truncated = random_bytes(900_000);
    let a = blobs(&first).add_bytes(&corrupt).await.unwrap().hash;
    let b = blobs(&first).add_bytes(&truncated).await.unwrap().hash;
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
        match blobs(&first).get(hash).await {
            Ok(got) => panic!("node 1 served {} bytes of a damaged blob as whole", got.len()),
            Err(e) => assert!(matches!(e, ClientError::BlobCorrupt { .. }), "{e}"),
        }
    }
    // Node 3 asks node 1 first (id order): the transfer fails verification, node 2 is asked.
    let third = c.node_client(2).await;
    assert_eq!(blobs(&third).get(a).await.unwrap(), corrupt, "a corrupted transfer is never returned");
    assert_eq!(blobs(&third).get(b).await.unwrap(), truncated, "a truncated transfer is never returned");

    // A client that knows more nodes sets the damaged one aside and asks the next.
    let over_all = c.over(vec![c.node_addr(0), c.node_addr(1), c.node_addr(2)], ClientConfig::default()).await;
    assert_eq!(blobs(&over_all).get(a).await.unwrap(), corrupt, "retried on another node");
    let over_all = c.over(vec![c.node_addr(0), c.node_addr(1), c.node_addr(2)], ClientConfig::default()).await;
    assert_eq!(blobs(&over_all).get(b).await.unwrap(), truncated, "retried on another node");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_keeps_pinned_and_uploading_blobs_and_removes_the_rest_after_the_grace_period() {
    let c = TestCluster::start_with(3, args(&["--blob-gc-grace-secs", "2", "--blob-gc-interval-secs", "1"])).await;
    let client = c.node_client(0).await;
    let kept = random_bytes(200_000);
    let dropped = random_bytes(200_000);
    let kept_hash = blobs(&client).add_bytes(&kept).await.unwrap().hash;
    blobs(&client).pin("keep/this", kept_hash).await.unwrap();
    let dropped_hash = blobs(&client).add_bytes(&dropped).await.unwrap().hash;

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
    let slow_info = blobs(&client).add(&mut reader).await.unwrap();
    feed.await.unwrap();
    assert_eq!(slow_info.hash, *blake3::hash(&slow).as_bytes());
    blobs(&client).pin("keep/slow", slow_info.hash).await.unwrap();

    eventually("the unpinned blob is collected on every node", || async {
        holders(&client, dropped_hash).await.is_empty().then_some(())
    })
    .await;
    assert_eq!(holders(&client, kept_hash).await.len(), 2, "the pinned blob is untouched");
    assert_eq!(holders(&client, slow_info.hash).await.len(), 2, "the slow upload survived");
    assert_eq!(blobs(&client).get(slow_info.hash).await.unwrap(), slow);

    assert!(blobs(&client).unpin("keep/this").await.unwrap());
    eventually("an unpinned blob is collected once its grace period is over", || async {
        holders(&client, kept_hash).await.is_empty().then_some(())
    })
    .await;
    assert_eq!(blobs(&client).get(slow_info.hash).await.unwrap(), slow, "the other pin still holds");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_deletes_nothing_while_the_live_set_cannot_be_read() {
    let mut c = TestCluster::start_with(3, args(&["--blob-gc-grace-secs", "1", "--blob-gc-interval-secs", "1"])).await;
    let first = c.node_client(0).await;
    let data = random_bytes(100_000);
    let hash = blobs(&first).add_bytes(&data).await.unwrap().hash;
    blobs(&first).pin("keep/through-outage", hash).await.unwrap();

    // Without a quorum no node can read the pins: a collector that went ahead anyway would
    // see an empty live set and delete the blob within a round or two.
    c.nodes.kill(1).unwrap();
    c.nodes.kill(2).unwrap();
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(holds(&first, hash, 1).await, "kept through six rounds");
    assert_eq!(blobs(&first).get(hash).await.unwrap(), data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scoped_rights_touch_only_their_own_pins_and_the_blobs_those_pins_name() {
    let c = TestCluster::start(1).await;
    let root = c.node_client(0).await;
    let theirs = blobs(&root).add_bytes(b"another app's bytes").await.unwrap();
    blobs(&root).pin("cache/nar/1", theirs.hash).await.unwrap();

    let forge = c.client_with_caps(0, vec![app("write", "forge/"), app("read", "forge/")]).await;
    let ours = blobs(&forge).add_bytes(b"a pack of the forge").await.unwrap();
    blobs(&forge).pin("forge/repo/pack-1", ours.hash).await.unwrap();
    assert_eq!(blobs(&forge).get(ours.hash).await.unwrap(), b"a pack of the forge", "its own pin lets it read");

    let err = blobs(&forge).get(theirs.hash).await.unwrap_err();
    assert_eq!(code(&err), Some(ErrorCode::PermissionDenied), "{err}");
    assert!(err.to_string().contains("no pin there names blob"), "{err}");
    let err = blobs(&forge).pin("cache/nar/2", ours.hash).await.unwrap_err();
    assert_eq!(code(&err), Some(ErrorCode::PermissionDenied), "a pin outside its scope: {err}");
    let err = blobs(&forge).unpin("cache/nar/1").await.unwrap_err();
    assert_eq!(code(&err), Some(ErrorCode::PermissionDenied), "an unpin outside its scope: {err}");
    let err = blobs(&forge).pins("", None, 10).await.unwrap_err();
    assert_eq!(code(&err), Some(ErrorCode::PermissionDenied), "listing every pin: {err}");
    let (listed, _) = blobs(&forge).pins("forge/", None, 10).await.unwrap();
    assert_eq!(listed.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["forge/repo/pack-1"]);
    let err = blobs(&forge).list(None, 10).await.unwrap_err();
    assert_eq!(code(&err), Some(ErrorCode::PermissionDenied), "listing every blob: {err}");

    // Unpinned, the scoped reader loses the blob; the cache's pin still stands.
    assert!(blobs(&forge).unpin("forge/repo/pack-1").await.unwrap());
    let err = blobs(&forge).get(ours.hash).await.unwrap_err();
    assert_eq!(code(&err), Some(ErrorCode::PermissionDenied), "{err}");
    assert_eq!(blobs(&root).pins("cache/", None, 10).await.unwrap().0.len(), 1);

    // A token naming an app the cluster does not serve is refused, with the reason.
    let token =
        c.token_with(vec![Capability::App { app: "no-such-app".into(), right: "read".into(), scope: Vec::new() }]);
    let refused = Client::for_node_with_token(c.node_addr(0), ClientConfig::default(), Some(token)).await;
    let err = refused.expect_err("the token is refused at connect");
    assert!(err.to_string().contains("does not serve"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adds_with_an_expected_hash_batches_and_ranges_behave() {
    let c = TestCluster::start(3).await;
    let client = c.node_client(0).await;
    let data = random_bytes(2 * 1024 * 1024 + 3);
    let right = *blake3::hash(&data).as_bytes();
    let wrong = *blake3::hash(b"something else").as_bytes();

    let err = blobs(&client).add_expecting(&mut &data[..], wrong).await.unwrap_err();
    assert_eq!(code(&err), Some(ErrorCode::InvalidRequest), "{err}");
    assert!(err.to_string().contains("not to the expected"), "{err}");
    assert!(blobs(&client).has(right).await.unwrap().is_none() || holders(&client, right).await.len() <= 1);
    let added = blobs(&client).add_expecting(&mut &data[..], right).await.unwrap();
    assert_eq!((added.hash, added.replicas), (right, 2));

    let small: Vec<Vec<u8>> = (0..50).map(|i| format!("object {i}").into_bytes()).collect();
    let slices: Vec<&[u8]> = small.iter().map(Vec::as_slice).collect();
    let batch = blobs(&client).add_batch(&slices).await.unwrap();
    assert_eq!(batch.len(), 50);
    for (added, bytes) in batch.iter().zip(&small) {
        assert_eq!(added.hash, *blake3::hash(bytes).as_bytes());
        assert_eq!(added.replicas, 2);
    }
    assert_eq!(holders(&client, batch[49].hash).await, vec![1, 2]);
    let listed = blobs(&client).list(None, 1000).await.unwrap().0;
    assert!(batch.iter().all(|a| listed.iter().any(|b| b.hash == a.hash)), "the cluster's list names every blob");

    // A range from a node that does not hold the blob: fetched, then only the range sent.
    let third = c.node_client(2).await;
    let mut range = blobs(&third).read_range(right, 1_000_000, 70_000).await.unwrap();
    assert_eq!(range.blob_size(), data.len() as u64);
    let mut got = Vec::new();
    range.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, &data[1_000_000..1_070_000]);
    let mut tail = blobs(&third).read_range(right, data.len() as u64 - 10, 1_000).await.unwrap();
    let mut got = Vec::new();
    tail.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, &data[data.len() - 10..], "a range past the end stops at the end");
    let err = blobs(&third).read_range(right, data.len() as u64 + 1, 1).await.unwrap_err();
    assert_eq!(code(&err), Some(ErrorCode::InvalidRequest), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_member_protocol_refuses_clients_even_with_the_root_token() {
    let c = TestCluster::start(1).await;
    let endpoint = stranger_endpoint().await;
    let addr = aspen_net::endpoint::endpoint_addr(&c.node_addr(0)).unwrap();
    let conn = endpoint.connect(addr, aspen_app::MEMBER_ALPN).await.unwrap();
    let ask = async |request: &aspen_app::wire::MemberRequest| {
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        aspen_net::write_frame(&mut send, request).await.unwrap();
        send.finish().unwrap();
        aspen_net::frame::read_frame_bytes(&mut recv).await.unwrap().unwrap()
    };
    // A forwarded write: refused with the client protocol's error frame.
    let put = aspen_core::api::ClientRequest::Put { key: b"k".to_vec(), value: b"v".to_vec(), lease: None };
    let answer = ask(&aspen_app::wire::MemberRequest::Forward(put)).await;
    match aspen_net::frame::decode_body::<aspen_core::api::ClientResponse>(&answer).unwrap() {
        aspen_core::api::ClientResponse::Error(e) => assert_eq!(e.code(), ErrorCode::PermissionDenied, "{e}"),
        other => panic!("a non-member's forwarded write was answered {other:?}"),
    }
    // A blob member call (replicate, as the leader sends): refused before it reaches the app.
    let answer = ask(&aspen_app::wire::MemberRequest::App { app: "blob".into() }).await;
    match aspen_net::frame::decode_body::<aspen_app::wire::MemberReply>(&answer).unwrap() {
        aspen_app::wire::MemberReply::Refused(e) => assert_eq!(e.code(), ErrorCode::PermissionDenied, "{e}"),
        other => panic!("a non-member was routed to the blob app: {other:?}"),
    }
    let root = c.node_client(0).await;
    assert_eq!(root.get("k", aspen_core::api::ReadConsistency::Linearizable).await.unwrap(), None, "nothing written");
    endpoint.close().await;
}
