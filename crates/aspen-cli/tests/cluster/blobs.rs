//! Blobs across real nodes: add on one, read from another, survive the first's death;
//! rights are enforced; only members may speak the blob protocol.

use std::time::Duration;

use aspen_client::{Client, ClientConfig, ClientError};
use aspen_core::ErrorCode;
use aspen_core::capability::Capability;
use aspen_net::token::{Audience, LinkSpec};
use iroh::SecretKey;
use rand::RngCore;

use crate::common::TestCluster;

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
async fn a_blob_added_on_one_node_is_read_from_another_and_outlives_its_first_holder() {
    let mut c = TestCluster::start(3).await;
    let mut data = vec![0u8; 5 * 1024 * 1024 + 17];
    rand::rng().fill_bytes(&mut data);
    let first = c.node_client(0).await;
    let info = first.blob_add_bytes(&data).await.unwrap();
    assert_eq!(info.hash, *blake3::hash(&data).as_bytes(), "a blob is named by its BLAKE3 hash");
    assert_eq!(info.size, data.len() as u64);
    assert_eq!(first.blob_add_bytes(&data).await.unwrap(), info, "adding the same bytes again is the same blob");

    let third = c.node_client(2).await;
    assert_eq!(third.blob_has(info.hash).await.unwrap(), None, "node 3 has not fetched it yet");
    assert_eq!(third.blob_get(info.hash).await.unwrap(), data, "node 3 fetches it from node 1");
    assert_eq!(third.blob_has(info.hash).await.unwrap(), Some(data.len() as u64));
    let listed = third.blob_list(None, 100).await.unwrap().0;
    assert!(listed.iter().any(|b| b.hash == info.hash && b.size == info.size), "{listed:?}");

    c.nodes.kill(0).unwrap();
    let second = c.node_client(1).await;
    assert_eq!(second.blob_get(info.hash).await.unwrap(), data, "node 2 fetches it from node 3");

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
