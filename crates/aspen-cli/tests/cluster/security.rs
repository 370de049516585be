//! Who may talk to the cluster: every refusal the security issue names, against a real
//! cluster, each with a clear error and nothing written.

use std::time::Duration;

use aspen_client::{Client, ClientConfig, ClientError};
use aspen_core::api::ReadConsistency;
use aspen_core::capability::Capability;
use aspen_core::error::ErrorCode;
use aspen_net::token::{Audience, LinkSpec, Token};
use iroh::SecretKey;

use aspen_testkit::harness::{TestCluster, eventually};

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

fn code(err: &ClientError) -> Option<ErrorCode> {
    err.aspen().map(|e| e.code())
}

fn spec(caps: Vec<Capability>, ttl: Duration) -> LinkSpec {
    LinkSpec {
        caps,
        audience: Audience::Bearer,
        not_before_ms: now_ms() - 60_000,
        expires_ms: Some(now_ms() + ttl.as_millis() as u64),
        may_delegate: true,
    }
}

/// A token made from the cluster's root token.
fn delegate(c: &TestCluster, caps: Vec<Capability>, ttl: Duration) -> Token {
    let holder = SecretKey::from_bytes(&c.token.holder_secret.expect("the root token may delegate"));
    c.token.delegate(&holder, spec(caps, ttl)).expect("narrowing delegation")
}

async fn client_with(c: &TestCluster, token: Token) -> Result<Client, ClientError> {
    let nodes = (0..c.nodes.len()).map(|i| c.node_addr(i)).collect();
    Client::over_nodes_with_token(nodes, ClientConfig::with_request_timeout(Duration::from_secs(5)), Some(token)).await
}

/// The root client's view of `key`: nothing the refused clients tried may show up.
async fn assert_absent(root: &Client, key: &str) {
    assert!(root.get(key, ReadConsistency::Linearizable).await.unwrap().is_none(), "{key} was written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_refused_unless_valid_for_this_cluster_and_request() {
    let c = TestCluster::start(3).await;
    let root = c.client().await;

    // No token: only node info is answered.
    let anon = Client::over_nodes(vec![c.node_addr(0)], ClientConfig::default()).await.unwrap();
    let err = anon.put("sec/none", "x").await.unwrap_err();
    assert_eq!(code(&err), Some(ErrorCode::Unauthenticated), "{err}");
    assert!(anon.node_info().await.is_ok());

    // A token of another cluster.
    let other = Token::root(&SecretKey::generate(), now_ms());
    let err = client_with(&c, other).await.unwrap_err();
    assert_eq!(code(&err), Some(ErrorCode::Unauthenticated), "{err}");
    assert!(err.to_string().contains("not to this cluster"), "{err}");

    // A tampered signature.
    let mut tampered = delegate(&c, vec![Capability::Write(b"sec/".to_vec())], Duration::from_secs(3600));
    tampered.links[1].signature[0] ^= 0x40;
    let err = client_with(&c, tampered).await.unwrap_err();
    assert!(err.to_string().contains("does not verify"), "{err}");

    // A delegation that widens, forged by hand with the holder's key.
    let narrow = delegate(&c, vec![Capability::Write(b"sec/".to_vec())], Duration::from_secs(3600));
    let holder = SecretKey::from_bytes(&narrow.holder_secret.unwrap());
    let mut wide =
        narrow.delegate(&holder, spec(vec![Capability::Write(b"sec/x".to_vec())], Duration::from_secs(60))).unwrap();
    wide.links[2].link.caps = vec![Capability::All];
    let mut msg = b"aspen token link v1\0".to_vec();
    msg.extend(postcard::to_allocvec(&wide.links[2].link).unwrap());
    wide.links[2].signature = holder.sign(&msg).to_bytes().to_vec();
    let err = client_with(&c, wide).await.unwrap_err();
    assert!(err.to_string().contains("grants more than its parent"), "{err}");

    // An expired token.
    let mut gone = spec(vec![Capability::Read(Vec::new())], Duration::from_secs(1));
    gone.not_before_ms = now_ms() - 120_000;
    gone.expires_ms = Some(now_ms() - 1_000);
    let holder = SecretKey::from_bytes(&c.token.holder_secret.unwrap());
    let expired = c.token.delegate(&holder, gone).unwrap();
    let err = client_with(&c, expired).await.unwrap_err();
    assert!(err.to_string().contains("expired"), "{err}");

    // Prefix escape: `sec/` does not cover `sec2/`; a txn with one key outside is refused whole.
    let scoped = client_with(
        &c,
        delegate(
            &c,
            vec![Capability::Write(b"sec/".to_vec()), Capability::Read(b"sec/".to_vec())],
            Duration::from_secs(3600),
        ),
    )
    .await
    .unwrap();
    scoped.put("sec/in", "ok").await.unwrap();
    let err = scoped.put("sec2/out", "x").await.unwrap_err();
    assert_eq!(code(&err), Some(ErrorCode::PermissionDenied), "{err}");
    assert!(err.to_string().contains("write \"sec2/out\""), "{err}");
    let err = scoped.get("other", ReadConsistency::Linearizable).await.unwrap_err();
    assert_eq!(code(&err), Some(ErrorCode::PermissionDenied), "{err}");
    let txn = aspen_client::Txn {
        compare: vec![],
        success: vec![
            aspen_client::TxnOp::Put { key: b"sec/a".to_vec(), value: b"1".to_vec(), lease: None },
            aspen_client::TxnOp::Put { key: b"secret".to_vec(), value: b"1".to_vec(), lease: None },
        ],
        failure: vec![],
    };
    let err = scoped.txn(txn).await.unwrap_err();
    assert_eq!(code(&err), Some(ErrorCode::PermissionDenied), "{err}");
    let err = scoped.status().await;
    assert!(err.is_ok(), "any valid token may ask for status");
    let err = scoped.trigger_snapshot().await.unwrap_err();
    assert_eq!(code(&err), Some(ErrorCode::PermissionDenied), "{err}");

    for key in ["sec/none", "sec2/out", "sec/a", "secret"] {
        assert_absent(&root, key).await;
    }
    assert_eq!(root.get("sec/in", ReadConsistency::Linearizable).await.unwrap().unwrap().value, b"ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_stops_working_on_every_node_even_on_open_connections() {
    let c = TestCluster::start(3).await;
    let root = c.client().await;
    let token = delegate(&c, vec![Capability::Write(b"rev/".to_vec())], Duration::from_secs(3600));
    let child = {
        let holder = SecretKey::from_bytes(&token.holder_secret.unwrap());
        token
            .delegate(&holder, spec(vec![Capability::Write(b"rev/child/".to_vec())], Duration::from_secs(600)))
            .unwrap()
    };
    // One open connection per node, each already authenticated.
    let mut per_node = Vec::new();
    for i in 0..3 {
        let client =
            Client::for_node_with_token(c.node_addr(i), ClientConfig::default(), Some(token.clone())).await.unwrap();
        client.put(format!("rev/{i}"), "before").await.unwrap();
        per_node.push(client);
    }
    let child_client = client_with(&c, child).await.unwrap();
    child_client.put("rev/child/x", "before").await.unwrap();

    root.revoke_token(token.id()).await.unwrap();
    for (i, client) in per_node.iter().enumerate() {
        let err = eventually(&format!("node {i} refuses the revoked token"), || async {
            client.put(format!("rev/after{i}"), "x").await.err()
        })
        .await;
        assert_eq!(code(&err), Some(ErrorCode::Unauthenticated), "{err}");
        assert!(err.to_string().contains("revoked"), "{err}");
    }
    // A token made from the revoked one is revoked with it.
    let err = child_client.put("rev/child/y", "x").await.unwrap_err();
    assert!(err.to_string().contains("revoked"), "{err}");
    let err = client_with(&c, token).await.unwrap_err();
    assert!(err.to_string().contains("revoked"), "{err}");
    for i in 0..3 {
        assert_absent(&root, &format!("rev/after{i}")).await;
    }
    assert_absent(&root, "rev/child/y").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_audience_bound_token_works_only_for_its_client_key() {
    let c = TestCluster::start(1).await;
    let root = c.client().await;
    let alice = SecretKey::generate();
    let mut s = spec(vec![Capability::Write(b"aud/".to_vec())], Duration::from_secs(3600));
    s.audience = Audience::Key(*alice.public().as_bytes());
    let holder = SecretKey::from_bytes(&c.token.holder_secret.unwrap());
    let bound = c.token.delegate(&holder, s).unwrap();
    assert!(bound.holder_secret.is_none());

    let nodes = vec![c.node_addr(0)];
    let as_alice =
        Client::over_nodes_as(nodes.clone(), ClientConfig::default(), Some(bound.clone()), Some(alice)).await.unwrap();
    as_alice.put("aud/alice", "mine").await.unwrap();

    // Mallory copied the token but not Alice's key.
    let err = Client::over_nodes_as(nodes, ClientConfig::default(), Some(bound), Some(SecretKey::generate()))
        .await
        .unwrap_err();
    assert_eq!(code(&err), Some(ErrorCode::Unauthenticated), "{err}");
    assert!(err.to_string().contains("bound to another client's key"), "{err}");
    assert_absent(&root, "aud/mallory").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_node_is_refused_by_the_raft_protocol() {
    let mut c = TestCluster::start(3).await;
    let root = c.client().await;
    root.put("rm/before", "x").await.unwrap();
    let leader = c.wait_for_leader().await;
    let gone = (leader + 1) % 3;
    let gone_id = c.nodes.node_id(gone);
    root.remove(gone_id).await.unwrap();
    let rest: Vec<usize> = (0..3).filter(|i| *i != gone).collect();
    let refused_before: u64 = {
        let mut sum = 0;
        for i in &rest {
            sum += c.node_client(*i).await.status().await.unwrap().raft_refused;
        }
        sum
    };
    // Restarted, the removed node still believes it is a voter and campaigns: the
    // members refuse its Raft connections.
    c.nodes.restart(gone).await.unwrap();
    eventually("the members refuse the removed node's raft traffic", || async {
        let mut sum = 0;
        for i in &rest {
            sum += c.node_client(*i).await.status().await.ok()?.raft_refused;
        }
        (sum > refused_before).then_some(())
    })
    .await;
    // The cluster carries on without it, and it never rejoins the membership.
    let client = c.over(rest.iter().map(|i| c.node_addr(*i)).collect(), ClientConfig::default()).await;
    client.put("rm/after", "y").await.unwrap();
    let status = client.status().await.unwrap();
    assert!(status.members.iter().all(|m| m.node_id != gone_id), "{status:?}");
}
