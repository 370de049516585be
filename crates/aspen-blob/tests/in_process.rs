//! Another app on the same node uses the blob store in-process: `LocalBlobs` from the
//! node's services adds from a reader and reads a range, and the app pins what it stored in
//! its own KV transaction (with the pin rights it declares). A client then sees the pin and
//! reads the bytes over the network, as any client would.

use std::sync::Arc;
use std::time::Duration;

use aspen_app::{App, AppHandler, AppInfo, BoxFuture, Caller, NodeContext};
use aspen_blob::{BlobApp, BlobClient, BlobSettings, LocalBlobs, records};
use aspen_client::{Client, ClientConfig, Kv, ReadConsistency, Txn};
use aspen_core::AspenError;
use aspen_core::capability::Capability;
use clap::Parser;
use futures::StreamExt;
use iroh::endpoint::{RecvStream, SendStream};

/// A stand-in for an app that stores in blobs (the forge, the cache): it declares the rights
/// to pin under `packs/`, and does its work from the test through its context.
struct PackApp {
    context: Arc<std::sync::Mutex<Option<NodeContext>>>,
}

struct NoStreams;

impl AppHandler for NoStreams {
    fn serve(self: Arc<Self>, _caller: Caller, _send: SendStream, _recv: RecvStream) -> BoxFuture<'static, ()> {
        Box::pin(async {})
    }
}

impl App for PackApp {
    fn info(&self) -> AppInfo {
        AppInfo { name: "packs".into(), alpn: b"aspen/packs/1".to_vec(), rights: Vec::new() }
    }

    fn kv_rights(&self) -> Vec<Capability> {
        records::pin_rights("packs/")
    }

    fn start(&self, node: NodeContext) -> BoxFuture<'static, Result<Arc<dyn AppHandler>, AspenError>> {
        if let Ok(mut slot) = self.context.lock() {
            *slot = Some(node);
        }
        Box::pin(async { Ok(Arc::new(NoStreams) as Arc<dyn AppHandler>) })
    }
}

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    node: aspen_node::NodeArgs,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_stores_reads_and_pins_through_the_node_local_blob_store() {
    let dir = tempfile::tempdir().unwrap();
    let args = Args::parse_from([
        "test",
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--bind",
        "127.0.0.1:0",
        "--node-id",
        "1",
        "--init",
    ])
    .node;
    let context = Arc::new(std::sync::Mutex::new(None));
    let settings = BlobSettings {
        replicas: 0,
        gc_grace: Duration::from_secs(3600),
        gc_interval: Duration::from_secs(300),
        repair_interval: Duration::from_secs(30),
    };
    let apps: Vec<Arc<dyn App>> =
        vec![Arc::new(BlobApp::new(settings)), Arc::new(PackApp { context: context.clone() })];
    let node = aspen_node::start(args, apps).await.unwrap();
    let ctx = context.lock().unwrap().clone().expect("the app started");
    let blobs = ctx.services.get::<LocalBlobs>(LocalBlobs::SERVICE).expect("the blob app published its handle");

    // Added from a reader, in-process.
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
    let added = blobs.add(std::io::Cursor::new(data.clone()), None).await.unwrap();
    assert_eq!(added.hash, *blake3::hash(&data).as_bytes());
    assert_eq!(added.replicas, 1, "one node: the replica target is one");
    let wrong = blobs.add(std::io::Cursor::new(b"other".to_vec()), Some(added.hash)).await.unwrap_err();
    assert!(wrong.to_string().contains("not to the expected"), "{wrong}");

    // A range, streamed.
    let mut range = blobs.read_range(added.hash, 2_500_000, 100_000).await.unwrap();
    assert_eq!(range.blob_size(), data.len() as u64);
    let mut got = Vec::new();
    while let Some(chunk) = range.next().await {
        got.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(got, &data[2_500_000..2_600_000]);
    assert_eq!(blobs.has(added.hash).await.unwrap(), Some(data.len() as u64));

    // Pinned in the app's own transaction, with the rights it declared.
    let mut success = records::pin_ops("packs/repo-a/1", &added.hash, None);
    success.push(aspen_core::command::TxnOp::Put {
        key: b"_aspen/packs/ref".to_vec(),
        value: b"1".to_vec(),
        lease: None,
    });
    let done = ctx.kv.txn(Txn { compare: vec![], success, failure: vec![] }).await.unwrap();
    assert!(done.succeeded);
    let outside = records::pin_ops("cache/x", &added.hash, None);
    let err = ctx.kv.txn(Txn { compare: vec![], success: outside, failure: vec![] }).await.unwrap_err();
    assert!(err.to_string().contains("permission denied"), "pins outside its scope are refused: {err}");

    // A client sees the pin and reads the bytes.
    let root =
        aspen_net::token::Token::decode(&std::fs::read_to_string(dir.path().join("root.token")).unwrap()).unwrap();
    let client = Client::for_node_with_token(node.addr(), ClientConfig::default(), Some(root)).await.unwrap();
    let remote = BlobClient::new(&client);
    let (pins, _) = remote.pins("packs/", None, 10).await.unwrap();
    assert_eq!(pins.iter().map(|p| (p.name.as_str(), p.hash)).collect::<Vec<_>>(), [("packs/repo-a/1", added.hash)]);
    assert_eq!(remote.get(added.hash).await.unwrap(), data);
    assert!(client.get("_aspen/packs/ref", ReadConsistency::Linearizable).await.unwrap().is_some());
    client.close().await;
    node.shutdown().await;
}
