//! Bad input gets a clear error naming the problem, and the node keeps serving with
//! nothing stored lost.

use std::process::Command;

use aspen_client::{Client, ClientConfig};
use aspen_core::api::ReadConsistency;
use aspen_core::command::{Txn, TxnOp};
use aspen_core::limits::{MAX_KEY_BYTES, MAX_TXN_OPS, MAX_VALUE_BYTES};
use aspen_core::{AspenError, ErrorCode};
use aspen_testkit::{ClusterOptions, NodeSpec, ProcessCluster};

use aspen_testkit::harness::TestCluster;

fn code(err: &aspen_client::ClientError) -> Option<ErrorCode> {
    err.aspen().map(AspenError::code)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_and_malformed_requests_are_refused_and_nothing_is_lost() {
    let c = TestCluster::start(3).await;
    let client = c.client().await;
    client.put("keep/me", "safe").await.unwrap();

    let big_key = vec![b'k'; MAX_KEY_BYTES + 1];
    let err = client.put(big_key, "v").await.unwrap_err();
    assert_eq!(code(&err), Some(ErrorCode::KeyTooLarge), "{err}");
    assert!(err.to_string().contains("MAX_KEY_BYTES"), "the error names the limit: {err}");

    let err = client.put("k", vec![0u8; MAX_VALUE_BYTES + 1]).await.unwrap_err();
    assert_eq!(code(&err), Some(ErrorCode::ValueTooLarge), "{err}");

    let ops = (0..=MAX_TXN_OPS).map(|i| TxnOp::Get { key: format!("t{i}").into_bytes() }).collect();
    let err = client.txn(Txn { compare: vec![], success: ops, failure: vec![] }).await.unwrap_err();
    assert_eq!(code(&err), Some(ErrorCode::TooManyTxnOps), "{err}");

    let err = client.put("", "v").await.unwrap_err();
    assert_eq!(code(&err), Some(ErrorCode::EmptyKey), "{err}");

    let err = client.scan(b"a", b"b", 1_000_000, ReadConsistency::Linearizable).await.unwrap_err();
    assert_eq!(code(&err), Some(ErrorCode::ScanLimitTooLarge), "{err}");

    let err = client.lease_keepalive(aspen_core::LeaseId(424242)).await.unwrap_err();
    assert_eq!(code(&err), Some(ErrorCode::LeaseNotFound), "{err}");

    assert_eq!(client.get("keep/me", ReadConsistency::Linearizable).await.unwrap().unwrap().value, b"safe");
    assert!(client.put("after/bad", "ok").await.is_ok(), "the cluster keeps serving");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_is_not_initialized_says_so() {
    let mut spec = NodeSpec::new(7);
    spec.extra_args = aspen_testkit::harness::fast_raft_args();
    let mut nodes =
        ProcessCluster::with_specs(env!("CARGO_BIN_EXE_aspen"), vec![spec], ClusterOptions::default()).unwrap();
    nodes.start_all().await.unwrap();
    let ticket = aspen_net::ClusterTicket::decode(&nodes.node_ticket(0).unwrap()).unwrap();
    let client = Client::for_node(ticket.nodes[0].clone(), ClientConfig::default()).await.unwrap();
    let err = client.put("k", "v").await.unwrap_err();
    assert_eq!(code(&err), Some(ErrorCode::NotInitialized), "{err}");
    let err = client.get("k", ReadConsistency::Linearizable).await.unwrap_err();
    assert_eq!(code(&err), Some(ErrorCode::NotInitialized), "{err}");
    assert!(!client.node_info().await.unwrap().initialized);
    // Initializing it alone makes it a working single-node cluster, for holders of its
    // root token; without a token only node info and init are answered.
    let done = client.init(vec![]).await.unwrap();
    let err = client.init(vec![]).await.unwrap_err();
    assert_eq!(code(&err), Some(ErrorCode::AlreadyInitialized), "{err}");
    let err = client.put("k", "v").await.unwrap_err();
    assert_eq!(code(&err), Some(ErrorCode::Unauthenticated), "{err}");
    assert!(err.to_string().contains("no token presented"), "{err}");
    let token = aspen_net::token::Token::decode(&std::fs::read_to_string(&done.root_token_file).unwrap()).unwrap();
    let client =
        Client::for_node_with_token(ticket.nodes[0].clone(), ClientConfig::default(), Some(token)).await.unwrap();
    aspen_testkit::harness::eventually("the single node serves writes", || async { client.put("k", "v").await.ok() })
        .await;
    assert_eq!(client.get("k", ReadConsistency::Linearizable).await.unwrap().unwrap().value, b"v");
}

#[test]
fn the_cli_rejects_malformed_tickets_and_unknown_commands_clearly() {
    let aspen = env!("CARGO_BIN_EXE_aspen");
    let out = Command::new(aspen).args(["--ticket", "aspenNOTBASE32!!", "kv", "get", "x"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("malformed ticket"), "{stderr}");

    let out = Command::new(aspen).args(["--ticket", "hello", "kv", "get", "x"]).output().unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("must start with"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = Command::new(aspen).args(["kv", "frobnicate"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("frobnicate"));
}
