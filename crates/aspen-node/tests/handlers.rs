//! The node's handlers, exercised in-process: one node started with `aspen_node::start` on
//! a temp dir, with a small test app on the seam, and reached both through the node's own KV
//! (no network hop) and through the real client over QUIC.
//!
//! The test app ("echo", ALPN `aspen/echo/1`) answers each stream with what it read, once
//! the caller's token grants `echo:use` over the scope named in the request; it records
//! every call under its own KV prefix through the KV the node gave it, queues it on a
//! coordination queue in-process (a right it declares), and tries to write outside both,
//! which must fail.

use std::sync::Arc;
use std::time::Duration;

use aspen_app::{App, AppHandler, AppInfo, BoxFuture, Caller, NodeContext};
use aspen_client::{Client, ClientConfig, Kv, KvExt, ReadConsistency, ScanRequest};
use aspen_core::api::{ClientRequest, ClientResponse};
use aspen_core::capability::Capability;
use aspen_core::command::{Txn, TxnOp};
use aspen_core::limits::{MAX_FRAME_BYTES, MAX_VALUE_BYTES};
use aspen_core::{AspenError, ErrorCode};
use aspen_net::token::{Audience, LinkSpec, Token};
use clap::Parser;
use iroh::endpoint::{RecvStream, SendStream};

const ECHO_ALPN: &[u8] = b"aspen/echo/1";

struct EchoApp;

struct EchoHandler {
    ctx: NodeContext,
}

impl App for EchoApp {
    fn info(&self) -> AppInfo {
        AppInfo { name: "echo".into(), alpn: ECHO_ALPN.to_vec(), rights: vec!["use".into()] }
    }

    fn kv_rights(&self) -> Vec<Capability> {
        vec![Capability::Write(aspen_core::queue::queue_prefix("echo-jobs"))]
    }

    fn start(&self, node: NodeContext) -> BoxFuture<'static, Result<Arc<dyn AppHandler>, AspenError>> {
        Box::pin(async move { Ok(Arc::new(EchoHandler { ctx: node }) as Arc<dyn AppHandler>) })
    }
}

impl AppHandler for EchoHandler {
    fn serve(self: Arc<Self>, caller: Caller, mut send: SendStream, mut recv: RecvStream) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            let Ok(Some((scope, body))) = aspen_net::read_frame::<(String, Vec<u8>)>(&mut recv).await else { return };
            let answer: Result<Vec<u8>, AspenError> = async {
                caller.require("echo", "use", scope.as_bytes())?;
                let key = format!("_aspen/echo/calls/{scope}");
                self.ctx.kv.put(key, body.clone()).await.map_err(AspenError::internal)?;
                // What a scheduler inside a node does: the coordination primitives, in-process.
                let queue = aspen_coord::Queue::new(&self.ctx.kv, "echo-jobs").map_err(AspenError::internal)?;
                queue.enqueue(body.clone()).await.map_err(AspenError::internal)?;
                // The app's own KV may not leave its prefix.
                match self.ctx.kv.put("elsewhere", "x").await {
                    Err(e) if e.aspen().is_some_and(|e| e.code() == ErrorCode::PermissionDenied) => {}
                    other => return Err(AspenError::internal(format!("wrote outside its prefix: {other:?}"))),
                }
                Ok(body)
            }
            .await;
            let _ = aspen_net::write_frame(&mut send, &answer).await;
            let _ = send.finish();
        })
    }
}

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    node: aspen_node::NodeArgs,
}

struct Fixture {
    node: Option<aspen_node::RunningNode>,
    root: Token,
    _dir: tempfile::TempDir,
}

impl Fixture {
    /// One node with the echo app, initialized as a cluster of one.
    async fn start() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let args = Args::parse_from([
            "test",
            "--data-dir",
            dir.path().to_str().unwrap(),
            "--bind",
            "127.0.0.1:0",
            "--node-id",
            "1",
            "--heartbeat-ms",
            "50",
            "--election-timeout-ms",
            "300",
        ])
        .node;
        let node = aspen_node::start(args, vec![Arc::new(EchoApp)]).await.unwrap();
        let admin = Client::for_node(node.addr(), ClientConfig::default()).await.unwrap();
        let done = admin.init(Vec::new()).await.unwrap();
        admin.close().await;
        let root = Token::decode(&std::fs::read_to_string(done.root_token_file).unwrap()).unwrap();
        let fixture = Fixture { node: Some(node), root, _dir: dir };
        let kv = fixture.node().kv();
        for _ in 0..200 {
            if kv.put("ready", "yes").await.is_ok() {
                return fixture;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the node never took a write");
    }

    fn node(&self) -> &aspen_node::RunningNode {
        self.node.as_ref().unwrap()
    }

    fn token(&self, caps: Vec<Capability>) -> Token {
        let holder = iroh::SecretKey::from_bytes(&self.root.holder_secret.unwrap());
        let now = aspen_net::now_ms();
        let spec = LinkSpec {
            caps,
            audience: Audience::Bearer,
            not_before_ms: now - 60_000,
            expires_ms: Some(now + 3_600_000),
            may_delegate: false,
        };
        self.root.delegate(&holder, spec).unwrap()
    }

    async fn client(&self, token: Option<Token>) -> Client {
        Client::for_node_with_token(self.node().addr(), ClientConfig::default(), token).await.unwrap()
    }

    async fn stop(mut self) {
        if let Some(node) = self.node.take() {
            node.shutdown().await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_local_kv_reads_writes_and_watches_without_a_hop() {
    let f = Fixture::start().await;
    let kv = f.node().kv();
    let mut watch = kv.watch(b"app/", 0);
    let put = kv.put("app/a", "1").await.unwrap();
    assert_eq!(kv.get("app/a", ReadConsistency::Linearizable).await.unwrap().unwrap().value, b"1");
    let swapped = kv.cas("app/a", Some(b"1".to_vec()), "2").await.unwrap();
    assert!(swapped.succeeded);
    let lease = kv.lease_grant(Duration::from_secs(30)).await.unwrap();
    kv.put_with_lease("app/leased", "x", lease.id).await.unwrap();
    assert!(kv.lease_list().await.unwrap().iter().any(|l| l.id == lease.id));
    let revoked = kv.lease_revoke(lease.id).await.unwrap();
    assert_eq!(revoked.deleted_keys, 1);
    let first = watch.next().await.unwrap().unwrap();
    assert_eq!((first.kv.key.as_slice(), first.kv.mod_revision), (&b"app/a"[..], put.revision));
    let second = watch.next().await.unwrap().unwrap();
    assert_eq!(second.kv.value, b"2");
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_local_kv_meets_the_same_rights_and_limits_as_a_client() {
    let f = Fixture::start().await;
    let narrow = f.node().cluster().kv_with_rights(vec![Capability::Read(b"app/".to_vec())]);
    f.node().kv().put("app/x", "1").await.unwrap();
    assert!(narrow.get("app/x", ReadConsistency::Linearizable).await.unwrap().is_some());
    let err = narrow.put("app/x", "2").await.unwrap_err();
    assert_eq!(err.aspen().map(|e| e.code()), Some(ErrorCode::PermissionDenied), "{err}");
    let err = narrow.get("other", ReadConsistency::Linearizable).await.unwrap_err();
    assert_eq!(err.aspen().map(|e| e.code()), Some(ErrorCode::PermissionDenied), "{err}");
    let mut watch = narrow.watch(b"", 0);
    let err = watch.next().await.unwrap().unwrap_err();
    assert_eq!(err.aspen().map(|e| e.code()), Some(ErrorCode::PermissionDenied), "{err}");
    let big = vec![0u8; MAX_VALUE_BYTES + 1];
    let err = f.node().kv().put("app/big", big).await.unwrap_err();
    assert_eq!(err.aspen().map(|e| e.code()), Some(ErrorCode::ValueTooLarge), "{err}");
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_values_page_by_bytes_and_an_answer_too_large_is_a_typed_error() {
    let f = Fixture::start().await;
    let client = f.client(Some(f.root.clone())).await;
    let value = vec![7u8; MAX_VALUE_BYTES];
    let mut watch = client.watch("big/", 0);
    for i in 0..9 {
        client.put(format!("big/{i}"), value.clone()).await.unwrap();
    }
    // A scan of nine 1 MiB values cannot fit one 8 MiB frame: it comes in pages.
    let page = client.scan_prefix("big/", 100, ReadConsistency::Linearizable).await.unwrap();
    assert!(page.more && page.kvs.len() < 9, "{} entries in the first page", page.kvs.len());
    let (all, _) = client.kv().scan_all("big/", ReadConsistency::Linearizable).await.unwrap();
    assert_eq!(all.len(), 9);
    assert!(all.iter().all(|kv| kv.value == value));
    // The watch's batches are cut to fit too: every event arrives.
    for i in 0..9 {
        let event = tokio::time::timeout(Duration::from_secs(30), watch.next()).await.unwrap().unwrap().unwrap();
        assert_eq!(event.kv.key, format!("big/{i}").into_bytes());
    }
    // A transaction reading all nine at once is applied, and says its answer cannot fit.
    let gets = (0..9).map(|i| TxnOp::Get { key: format!("big/{i}").into_bytes() }).collect();
    let mut ops = vec![TxnOp::Put { key: b"big/marker".to_vec(), value: b"m".to_vec(), lease: None }];
    ops.extend::<Vec<_>>(gets);
    let err = client.txn(Txn { compare: vec![], success: ops, failure: vec![] }).await.unwrap_err();
    match err.aspen() {
        Some(AspenError::ResponseTooLarge { what, len, max }) => {
            assert!(what.contains("applied"), "{what}");
            assert!(*len > *max && *max == MAX_FRAME_BYTES);
        }
        other => panic!("expected response_too_large, got {other:?} ({err})"),
    }
    assert!(client.get("big/marker", ReadConsistency::Linearizable).await.unwrap().is_some(), "it was applied");
    client.close().await;
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scans_can_be_keys_only_and_read_every_page_at_one_revision() {
    let f = Fixture::start().await;
    let kv = f.node().kv();
    for i in 0..10 {
        kv.put(format!("snap/{i:02}"), format!("v{i}")).await.unwrap();
    }
    let first = kv.scan_range(ScanRequest::prefix("snap/").limit(4).snapshot()).await.unwrap();
    assert_eq!(first.kvs.len(), 4);
    // Writes after the first page must not show in the later ones.
    kv.put("snap/05", "changed").await.unwrap();
    kv.delete("snap/09").await.unwrap();
    kv.put("snap/10", "new").await.unwrap();
    let mut request = ScanRequest::prefix("snap/").limit(4).keys_only();
    request.at_revision = Some(first.revision);
    let mut seen: Vec<_> = first.kvs.clone();
    while let Some(start) = seen.last().map(|kv| aspen_client::key_successor(&kv.key)) {
        request.start = start;
        let page = kv.scan_range(request.clone()).await.unwrap();
        assert_eq!(page.revision, first.revision, "every page at the first page's revision");
        assert!(page.kvs.iter().all(|kv| kv.value.is_empty()), "keys only");
        let done = !page.more;
        seen.extend(page.kvs);
        if done {
            break;
        }
    }
    let keys: Vec<_> = seen.iter().map(|kv| String::from_utf8(kv.key.clone()).unwrap()).collect();
    assert_eq!(keys, (0..10).map(|i| format!("snap/{i:02}")).collect::<Vec<_>>(), "the view of the first page");
    let err = kv.scan_range({
        let mut r = ScanRequest::prefix("snap/");
        r.at_revision = Some(first.revision - 1);
        r
    });
    let err = err.await.unwrap_err();
    assert_eq!(err.aspen().map(|e| e.code()), Some(ErrorCode::RevisionUnavailable), "{err}");
    f.stop().await;
}

/// Opens a stream on the echo app's ALPN (after the app hello) and asks it once.
async fn echo(client: &Client, scope: &str, body: &[u8]) -> Result<Vec<u8>, aspen_client::ClientError> {
    let mut stream = client.app(ECHO_ALPN).open_stream().await?;
    aspen_net::write_frame(&mut stream.send, &(scope.to_string(), body.to_vec())).await.unwrap();
    stream.send.finish().unwrap();
    let answer: Result<Vec<u8>, AspenError> = aspen_net::read_frame(&mut stream.recv).await.unwrap().unwrap();
    answer.map_err(aspen_client::ClientError::Aspen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_on_the_seam_gets_its_streams_its_rights_checked_and_its_own_prefix() {
    let f = Fixture::start().await;
    let root = f.client(Some(f.root.clone())).await;
    match root.request(ClientRequest::Apps).await.unwrap() {
        ClientResponse::Apps { apps } => assert_eq!(apps.iter().map(|a| a.name.as_str()).collect::<Vec<_>>(), ["echo"]),
        other => panic!("{other:?}"),
    }
    assert_eq!(echo(&root, "anything", b"hello").await.unwrap(), b"hello");
    let recorded = root.get("_aspen/echo/calls/anything", ReadConsistency::Linearizable).await.unwrap();
    assert_eq!(recorded.unwrap().value, b"hello", "the app wrote under its own prefix");
    let queue = aspen_coord::Queue::new(&root, "echo-jobs").unwrap();
    let popped = queue.try_dequeue(1, None).await.unwrap();
    assert_eq!(popped.iter().map(|m| m.payload.as_slice()).collect::<Vec<_>>(), [&b"hello"[..]], "queued in-process");

    let scoped = Capability::App { app: "echo".into(), right: "use".into(), scope: b"team-a/".to_vec() };
    let team_a = f.client(Some(f.token(vec![scoped]))).await;
    assert_eq!(echo(&team_a, "team-a/x", b"ok").await.unwrap(), b"ok");
    let err = echo(&team_a, "team-b/x", b"no").await.unwrap_err();
    assert_eq!(err.aspen().map(|e| e.code()), Some(ErrorCode::PermissionDenied), "{err}");
    let err = team_a.get("_aspen/echo/calls/team-a/x", ReadConsistency::Linearizable).await.unwrap_err();
    assert_eq!(err.aspen().map(|e| e.code()), Some(ErrorCode::PermissionDenied), "an app right is no KV right");

    // No token: the app connection is refused before the app sees a stream.
    let anonymous = f.client(None).await;
    let err = echo(&anonymous, "anything", b"x").await.unwrap_err();
    assert_eq!(err.aspen().map(|e| e.code()), Some(ErrorCode::Unauthenticated), "{err}");
    for c in [root, team_a, anonymous] {
        c.close().await;
    }
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_node_releases_its_files_and_restarts_in_process() {
    let f = Fixture::start().await;
    f.node().kv().put("kept", "across restarts").await.unwrap();
    let dir = f._dir.path().to_path_buf();
    let Fixture { node, root: _, _dir } = f;
    node.unwrap().shutdown().await;
    let args =
        Args::parse_from(["test", "--data-dir", dir.to_str().unwrap(), "--bind", "127.0.0.1:0", "--node-id", "1"]).node;
    let node = aspen_node::start(args, vec![Arc::new(EchoApp)]).await.expect("the files were released");
    let kv = node.kv();
    let mut value = None;
    for _ in 0..200 {
        if let Ok(Some(kv)) = kv.get("kept", ReadConsistency::Linearizable).await {
            value = Some(kv.value);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(value.as_deref(), Some(&b"across restarts"[..]));
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provisioned_secret_key_file_is_the_node_identity_and_a_missing_one_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let key = iroh::SecretKey::generate();
    let key_file = dir.path().join("credential.key");
    std::fs::write(&key_file, key.to_bytes()).unwrap();
    let data = dir.path().join("data");
    let args = |key: &std::path::Path| {
        Args::parse_from([
            "test",
            "--data-dir",
            data.to_str().unwrap(),
            "--bind",
            "127.0.0.1:0",
            "--node-id",
            "1",
            "--secret-key-file",
            key.to_str().unwrap(),
        ])
        .node
    };
    let node = aspen_node::start(args(&key_file), Vec::new()).await.unwrap();
    assert_eq!(node.addr().endpoint_id, *key.public().as_bytes(), "the provisioned key is the identity");
    node.shutdown().await;
    assert!(!data.join("node.key").exists(), "no key of its own was made");
    let missing = dir.path().join("absent.key");
    let err = aspen_node::start(args(&missing), Vec::new()).await.err().expect("a missing key file fails the start");
    assert!(format!("{err:#}").contains("absent.key"), "{err:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_bound_to_every_address_advertises_its_interfaces_and_is_reachable_there() {
    let dir = tempfile::tempdir().unwrap();
    let args =
        Args::parse_from(["test", "--data-dir", dir.path().to_str().unwrap(), "--bind", "0.0.0.0:0", "--node-id", "1"])
            .node;
    let node = aspen_node::start(args, Vec::new()).await.unwrap();
    let addr = node.addr();
    assert!(!addr.addrs.is_empty(), "an unspecified bind advertises interface addresses");
    assert!(addr.addrs.iter().all(|a| !a.ip().is_unspecified() && a.port() != 0), "{:?}", addr.addrs);
    let client = Client::for_node(addr, ClientConfig::default()).await.expect("reachable at what it advertises");
    assert_eq!(client.node_info().await.unwrap().node_id, 1);
    client.close().await;
    node.shutdown().await;
}
