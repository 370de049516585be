//! The cache against the real `nix` (2.8 here) and a real cluster: `nix copy --to` a node's
//! gateway, `nix copy --from` another node's gateway into a separate store with the cache's
//! key trusted, `nix-store --realise` through `--option substituters`, `aspen cache pull`;
//! refused uploads and tampered records; garbage collection that keeps closures whole; and
//! a node killed in the middle of an upload.
//!
//! Paths are built with `nix-build` from derivations that need no nixpkgs (the builder is
//! the host's `/bin/sh`), with a fresh nonce per test, into the host's store; every other
//! store is a chroot store under the test's temp dir.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use aspen_cache::CacheClient;
use aspen_cache::protocol::{CacheSettings, PathUpload};
use aspen_cache::push::{NixCommand, push};
use aspen_cache::records::{self, Compression, PathRecord};
use aspen_core::capability::Capability;
use aspen_testkit::harness::{TestCluster, aspen_bin};
use std::future::Future;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What a fresh machine needs for root to use the store directly (see
/// ../shared/anchors/nix-cache), and no narinfo remembered between commands: `nix copy --to`
/// remembers the narinfo it uploaded (unsigned by the cache) and lookups remember misses,
/// while here one machine plays both the pusher and the substituters.
const NIX_CONFIG: &str = "experimental-features = nix-command
sandbox = false
build-users-group =
substituters =
warn-dirty = false
narinfo-cache-positive-ttl = 0
narinfo-cache-negative-ttl = 0";

const PATHS_NIX: &str = r#"{ nonce }:
let
  mk = name: script: builtins.derivation {
    inherit name nonce;
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" script ];
    PATH = "/usr/bin:/bin";
  };
  data = mk "aspen-test-data" ''
    mkdir -p $out/share
    seq 1 20000 > $out/share/table
    echo small > $out/small
  '';
  lib = mk "aspen-test-lib" ''
    mkdir -p $out/lib
    echo ${data} > $out/lib/data-path
    head -c 300000 /dev/urandom > $out/lib/blob
  '';
  app = mk "aspen-test-app" ''
    mkdir -p $out/bin
    printf '#!/bin/sh\ncat ${lib}/lib/data-path\n' > $out/bin/app
    chmod +x $out/bin/app
    ln -s ${lib}/lib/blob $out/blob-link
  '';
  other = mk "aspen-test-other" ''
    echo ${data} > $out
  '';
in { inherit data lib app other; }
"#;

fn nix_available() -> bool {
    Command::new("nix-build").arg("--version").output().is_ok_and(|o| o.status.success())
}

fn nix(program: &str) -> Command {
    let mut c = Command::new(program);
    c.env("NIX_CONFIG", NIX_CONFIG);
    c
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run nix");
    assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8")
}

fn fails(cmd: &mut Command) -> String {
    let out: Output = cmd.output().expect("run nix");
    assert!(!out.status.success(), "{cmd:?} should have failed");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Builds the test derivations with a fresh nonce: the store paths of data, lib, app, other.
struct Built {
    data: String,
    lib: String,
    app: String,
    other: String,
}

fn build(dir: &Path) -> Built {
    let file = dir.join("paths.nix");
    std::fs::write(&file, PATHS_NIX).unwrap();
    let nonce = format!("{}-{}", std::process::id(), aspen_net::now_ms());
    let attr = |a: &str| {
        run(nix("nix-build").arg(&file).args(["--argstr", "nonce", &nonce, "-A", a, "--no-out-link"]))
            .trim()
            .to_string()
    };
    Built { data: attr("data"), lib: attr("lib"), app: attr("app"), other: attr("other") }
}

fn base(path: &str) -> String {
    path.strip_prefix("/nix/store/").unwrap().to_string()
}

fn hash_part(path: &str) -> String {
    base(path)[..32].to_string()
}

/// Where node `i` serves its gateway: its own address, on a free port.
fn gateway_addr(node: SocketAddr) -> SocketAddr {
    if node.ip().is_loopback() {
        let probe = std::net::TcpListener::bind((node.ip(), 0)).unwrap();
        probe.local_addr().unwrap()
    } else {
        // A node in its own network namespace has every port to itself.
        SocketAddr::new(node.ip(), 8380)
    }
}

async fn cluster_with_gateways(n: usize, gateways: usize) -> (TestCluster, Vec<SocketAddr>) {
    let chosen = std::sync::Mutex::new(vec![None; n]);
    let c = TestCluster::start_each(n, |i, addr| {
        if i >= gateways {
            return Vec::new();
        }
        let gw = gateway_addr(addr);
        chosen.lock().unwrap()[i] = Some(gw);
        vec!["--cache-http-listen".into(), gw.to_string()]
    })
    .await;
    let gws = chosen.into_inner().unwrap().into_iter().flatten().collect();
    (c, gws)
}

/// A minimal HTTP/1.1 exchange: the status and the body.
async fn http(addr: SocketAddr, method: &str, path: &str, token: Option<&str>, body: &[u8]) -> (u16, Vec<u8>) {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect to the gateway");
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).await.unwrap();
    let end = answer.windows(4).position(|w| w == b"\r\n\r\n").expect("a header") + 4;
    let status: u16 = std::str::from_utf8(&answer[9..12]).unwrap().parse().unwrap();
    let head = String::from_utf8_lossy(&answer[..end]).to_lowercase();
    let mut body = answer[end..].to_vec();
    if head.contains("transfer-encoding: chunked") {
        body = dechunk(&body);
    }
    (status, body)
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n").unwrap();
        let size = usize::from_str_radix(std::str::from_utf8(&data[..line_end]).unwrap().trim(), 16).unwrap();
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&data[line_end + 2..line_end + 2 + size]);
        data = &data[line_end + 2 + size + 2..];
    }
}

fn settings(public: bool, compression: Compression, retention_secs: u64) -> CacheSettings {
    CacheSettings { public_reads: public, compression, retention_secs, priority: 30, key_name: None }
}

fn cache_cap(right: &str, scope: &str) -> Capability {
    Capability::App { app: "cache".into(), right: right.into(), scope: scope.as_bytes().to_vec() }
}

/// A netrc file giving `token` to every host nix talks to.
fn netrc(dir: &Path, token: &str) -> PathBuf {
    let path = dir.join("netrc");
    std::fs::write(&path, format!("default login aspen password {token}\n")).unwrap();
    path
}

fn copy_from(url: &str, store: &Path, key: Option<&str>, netrc: Option<&Path>, paths: &[&str]) -> Command {
    let mut cmd = nix("nix");
    cmd.arg("copy").arg("--from").arg(url).arg("--to").arg(store);
    if let Some(key) = key {
        cmd.args(["--option", "trusted-public-keys", key]);
    }
    if let Some(netrc) = netrc {
        cmd.arg("--option").arg("netrc-file").arg(netrc);
    }
    cmd.args(paths);
    cmd
}

fn store_has(store: &Path, path: &str) -> bool {
    store.join(path.trim_start_matches('/')).exists()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nix_copies_to_the_gateway_and_substitutes_what_is_signed() {
    if !nix_available() {
        eprintln!("SKIPPED: no nix-build on PATH (scripts/test.sh installs nix-bin)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let built = build(dir.path());
    let (c, gw) = cluster_with_gateways(3, 2).await;
    let admin = CacheClient::new(&c.client().await);
    let main = admin.create_cache("main", settings(false, Compression::None, 0)).await.unwrap();
    let public = admin.create_cache("pub", settings(true, Compression::Xz, 0)).await.unwrap();
    let err = admin.create_cache("main", settings(false, Compression::None, 0)).await.unwrap_err();
    assert!(err.to_string().contains("exists already"), "{err}");
    let writer = c.token_with(vec![cache_cap("write", "")]).encode();
    let writer_netrc = netrc(dir.path(), &writer);

    // nix copy --to each gateway: uncompressed to "main" (on node 0), xz (nix's default) to
    // "pub" (on node 1). The gateway decompresses, checks and stores each NAR once.
    for url in [format!("http://{}/main?compression=none", gw[0]), format!("http://{}/pub", gw[1])] {
        run(nix("nix").args(["copy", "--to", &url, "--option", "netrc-file"]).arg(&writer_netrc).arg(&built.app));
    }
    // nix-cache-info, narinfo: public to anyone, private with a token only.
    let (status, info) = http(gw[0], "GET", "/pub/nix-cache-info", None, b"").await;
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&info).contains("StoreDir: /nix/store"));
    let narinfo_path = format!("/main/{}.narinfo", hash_part(&built.app));
    assert_eq!(http(gw[0], "GET", &narinfo_path, None, b"").await.0, 401, "a private cache needs a token");
    let reader = c.token_with(vec![cache_cap("read", "main")]).encode();
    let (status, text) = http(gw[0], "GET", &narinfo_path, Some(&reader), b"").await;
    assert_eq!(status, 200);
    let text = String::from_utf8(text).unwrap();
    assert!(text.contains(&format!("StorePath: {}", built.app)) && text.contains("Sig: main-1:"), "{text}");
    let other_reader = c.token_with(vec![cache_cap("read", "pub")]).encode();
    assert_eq!(http(gw[0], "GET", &narinfo_path, Some(&other_reader), b"").await.0, 403);
    assert_eq!(http(gw[0], "GET", &format!("/main/{}.narinfo", "0".repeat(32)), Some(&reader), b"").await.0, 404);

    // The whole closure comes back from the other node's gateway, verified with the key.
    let key = public.record.public_key.clone();
    let dst = dir.path().join("dst");
    run(&mut copy_from(&format!("http://{}/pub", gw[1]), &dst, Some(&key), None, &[&built.app]));
    for p in [&built.app, &built.lib, &built.data] {
        assert!(store_has(&dst, p), "{p} copied with its closure");
    }
    run(nix("nix").args(["store", "verify", "--store"]).arg(&dst).args([
        "--option",
        "trusted-public-keys",
        &key,
        "-r",
        &built.app,
    ]));
    // From node 0's gateway too (the NAR fetched between nodes), and through Range.
    let (status, narinfo) = http(gw[0], "GET", &format!("/pub/{}.narinfo", hash_part(&built.lib)), None, b"").await;
    assert_eq!(status, 200);
    let narinfo = String::from_utf8(narinfo).unwrap();
    assert!(narinfo.contains("Compression: xz"), "{narinfo}");
    let url = narinfo.lines().find_map(|l| l.strip_prefix("URL: ")).unwrap();
    let plain = url.strip_suffix(".xz").unwrap();
    let (status, whole) = http(gw[0], "GET", &format!("/pub/{plain}"), None, b"").await;
    assert_eq!(status, 200);
    let mut s = tokio::net::TcpStream::connect(gw[0]).await.unwrap();
    s.write_all(
        format!("GET /pub/{plain} HTTP/1.1\r\nHost: x\r\nRange: bytes=100-199\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).await.unwrap();
    assert!(answer.starts_with(b"HTTP/1.1 206"), "{}", String::from_utf8_lossy(&answer[..40]));
    assert!(answer.ends_with(&whole[100..200]));

    // Without the key, or with another cache's key, nix refuses.
    let err =
        fails(&mut copy_from(&format!("http://{}/pub", gw[1]), &dir.path().join("nokey"), None, None, &[&built.app]));
    assert!(err.contains("lacks a valid signature"), "{err}");
    let err = fails(&mut copy_from(
        &format!("http://{}/pub", gw[1]),
        &dir.path().join("wrongkey"),
        Some(&main.record.public_key),
        None,
        &[&built.app],
    ));
    assert!(err.contains("lacks a valid signature"), "{err}");

    // nix-store --realise through --option substituters, with a token for the private cache.
    let realised = dir.path().join("realised");
    run(nix("nix-store")
        .arg("--store")
        .arg(&realised)
        .args(["--realise", &built.app, "--option", "substituters", &format!("http://{}/main", gw[0])])
        .args(["--option", "trusted-public-keys", &main.record.public_key, "--option", "netrc-file"])
        .arg(dir.path().join("netrc")));
    assert!(store_has(&realised, &built.app) && store_has(&realised, &built.data));

    // `aspen cache pull` into a store of its own.
    let ticket =
        aspen_net::ticket::ClusterTicket { cluster_id: String::new(), nodes: vec![c.node_addr(2)], token: None };
    let pulled = dir.path().join("pulled");
    let out = Command::new(aspen_bin())
        .env("NIX_CONFIG", NIX_CONFIG)
        .args(["--ticket", &ticket.encode(), "--token", &reader, "cache", "pull", "--cache", "main", "--store"])
        .arg(&pulled)
        .arg(&built.app)
        .output()
        .unwrap();
    assert!(out.status.success(), "aspen cache pull: {}", String::from_utf8_lossy(&out.stderr));
    assert!(store_has(&pulled, &built.app) && store_has(&pulled, &built.lib));

    // Refused uploads store nothing: a narinfo whose NarHash is not its NAR's, a corrupt
    // NAR, a path whose references the cache lacks, and an upload without a write right.
    let dump = Command::new("nix-store").args(["--dump", &built.other]).output().unwrap().stdout;
    let file_name = format!("{}.nar", "1".repeat(52));
    let (status, body) = http(gw[0], "PUT", &format!("/main/nar/{file_name}"), Some(&writer), &dump).await;
    assert_eq!(status, 400, "the NAR's name is a hash it does not have: {}", String::from_utf8_lossy(&body));
    let (status, body) = http(gw[0], "PUT", "/main/nar/other.nar", Some(&writer), &dump).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let info = nix_path_info(&built.other);
    let lying = format!(
        "StorePath: {}\nURL: nar/other.nar\nCompression: none\nNarHash: sha256:{}\nNarSize: {}\nReferences: {}\n",
        built.other,
        "0".repeat(52),
        info.1,
        base(&built.data)
    );
    let (status, body) =
        http(gw[0], "PUT", &format!("/main/{}.narinfo", hash_part(&built.other)), Some(&writer), lying.as_bytes())
            .await;
    assert_eq!(status, 400);
    assert!(String::from_utf8_lossy(&body).contains("nothing was stored"), "{}", String::from_utf8_lossy(&body));
    let mut corrupt = dump.clone();
    let at = corrupt.len() / 2;
    corrupt.truncate(at);
    let (status, body) = http(gw[0], "PUT", "/main/nar/corrupt.nar", Some(&writer), &corrupt).await;
    assert_eq!(status, 400);
    assert!(String::from_utf8_lossy(&body).contains("malformed NAR"), "{}", String::from_utf8_lossy(&body));
    let (status, _) = http(gw[0], "PUT", "/main/nar/other2.nar", Some(&reader), &dump).await;
    assert_eq!(status, 403, "reading is not writing");
    assert_eq!(
        http(gw[0], "GET", &format!("/main/{}.narinfo", hash_part(&built.other)), Some(&reader), b"").await.0,
        404
    );
    let missing_ref = PathUpload {
        store_path: base(&built.other),
        nar_hash: info.0,
        nar_size: info.1,
        references: vec![format!("{}-not-there", "a".repeat(32))],
        deriver: None,
        ca: None,
        sigs: Vec::new(),
    };
    let err = admin.add_path("main", missing_ref, std::io::Cursor::new(dump.clone())).await.unwrap_err();
    assert!(err.to_string().contains("push the whole closure"), "{err}");
    assert!(admin.narinfo("main", &hash_part(&built.other)).await.unwrap().is_none());

    // Tampered records: a NAR swapped under a signed narinfo, a narinfo whose fields no
    // longer match its signature, a signature removed. nix refuses each.
    let kv = c.client().await;
    let lib_key = records::path_key("pub", &hash_part(&built.lib));
    let original = kv.get(&lib_key, Default::default()).await.unwrap().unwrap().value;
    let record: PathRecord = records::decode("path", &original).unwrap();
    let data_record: PathRecord = records::decode(
        "path",
        &kv.get(records::path_key("pub", &hash_part(&built.data)), Default::default()).await.unwrap().unwrap().value,
    )
    .unwrap();
    let tamper = |f: &dyn Fn(&mut PathRecord)| {
        let mut r = record.clone();
        f(&mut r);
        records::encode(&r)
    };
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("swapped NAR", tamper(&|r| r.nar_blob = data_record.nar_blob), "hash mismatch"),
        ("altered size", tamper(&|r| r.references.clear()), "lacks a valid signature"),
        ("no signature", tamper(&|r| r.sigs.clear()), "lacks a valid signature"),
    ];
    for (i, (what, value, expect)) in cases.into_iter().enumerate() {
        kv.put(&lib_key, value).await.unwrap();
        let err = fails(&mut copy_from(
            &format!("http://{}/pub", gw[1]),
            &dir.path().join(format!("t{i}")),
            Some(&key),
            None,
            &[&built.lib],
        ));
        assert!(err.contains(expect), "{what}: {err}");
    }
    kv.put(&lib_key, original).await.unwrap();
    run(&mut copy_from(
        &format!("http://{}/pub", gw[1]),
        &dir.path().join("restored"),
        Some(&key),
        None,
        &[&built.lib],
    ));
}

/// The NAR hash and size nix records for `path`.
fn nix_path_info(path: &str) -> ([u8; 32], u64) {
    let json: serde_json::Value = serde_json::from_str(&run(nix("nix").args(["path-info", "--json", path]))).unwrap();
    let hash = aspen_cache::Sha256::parse(json[0]["narHash"].as_str().unwrap()).unwrap();
    (hash.0, json[0]["narSize"].as_u64().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_collection_keeps_closures_whole() {
    if !nix_available() {
        eprintln!("SKIPPED: no nix-build on PATH (scripts/test.sh installs nix-bin)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let built = build(dir.path());
    let (c, gw) = cluster_with_gateways(1, 1).await;
    let cache = CacheClient::new(&c.client().await);
    let created = cache.create_cache("ci", settings(true, Compression::Zstd, 2)).await.unwrap();
    let nix_cmd = NixCommand::default();

    let first = push(&cache, &nix_cmd, "ci", std::slice::from_ref(&built.app), |_| {}).await.unwrap();
    assert_eq!((first.closure, first.pushed, first.skipped), (3, 3, 0));
    let again = push(&cache, &nix_cmd, "ci", std::slice::from_ref(&built.app), |_| {}).await.unwrap();
    assert_eq!((again.pushed, again.skipped), (0, 3), "what the cache has is skipped");
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    push(&cache, &nix_cmd, "ci", std::slice::from_ref(&built.other), |_| {}).await.unwrap();
    cache.pin("ci", "keep-lib", &built.lib).await.unwrap();
    let err = cache.pin("ci", "nothing", &format!("/nix/store/{}-x", "a".repeat(32))).await.unwrap_err();
    assert!(err.to_string().contains("does not hold"), "{err}");

    // app is old and unpinned; lib is pinned; other is recent; data is in both closures.
    let dry = cache.collect_garbage("ci", true).await.unwrap();
    assert_eq!((dry.deleted, dry.kept), (1, 3));
    let report = cache.collect_garbage("ci", false).await.unwrap();
    assert_eq!((report.deleted, report.kept), (1, 3));
    assert!(cache.narinfo("ci", &hash_part(&built.app)).await.unwrap().is_none());
    for kept in [&built.lib, &built.data, &built.other] {
        assert!(cache.narinfo("ci", &hash_part(kept)).await.unwrap().is_some(), "{kept} kept");
    }
    // What is kept is whole: nix fetches lib's closure (zstd on the fly).
    let key = created.record.public_key;
    run(&mut copy_from(&format!("http://{}/ci", gw[0]), &dir.path().join("after-gc"), Some(&key), None, &[&built.lib]));

    cache.unpin("ci", "keep-lib").await.unwrap();
    let report = cache.collect_garbage("ci", false).await.unwrap();
    assert_eq!((report.deleted, report.kept), (1, 2), "lib goes; data stays with other");
    run(&mut copy_from(
        &format!("http://{}/ci", gw[0]),
        &dir.path().join("after-unpin"),
        Some(&key),
        None,
        &[&built.other],
    ));
    // A path pushed again after collection comes back.
    let back = push(&cache, &nix_cmd, "ci", std::slice::from_ref(&built.app), |_| {}).await.unwrap();
    assert_eq!((back.pushed, back.skipped), (2, 1));
}

/// Yields `head`, says so, waits until told to go on, then yields `tail`: an upload that
/// pauses halfway while its node is killed.
struct Paused {
    head: std::io::Cursor<Vec<u8>>,
    tail: std::io::Cursor<Vec<u8>>,
    sent: Option<tokio::sync::oneshot::Sender<()>>,
    resume: Option<tokio::sync::oneshot::Receiver<()>>,
}

impl tokio::io::AsyncRead for Paused {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::task::Poll;
        if (self.head.position() as usize) < self.head.get_ref().len() {
            return std::pin::Pin::new(&mut self.head).poll_read(cx, buf);
        }
        if let Some(sent) = self.sent.take() {
            let _ = sent.send(());
        }
        if let Some(resume) = self.resume.as_mut() {
            match std::pin::Pin::new(resume).poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(_) => self.resume = None,
            }
        }
        std::pin::Pin::new(&mut self.tail).poll_read(cx, buf)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_during_an_upload_leaves_no_half_path() {
    if !nix_available() {
        eprintln!("SKIPPED: no nix-build on PATH (scripts/test.sh installs nix-bin)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let built = build(dir.path());
    let mut c = TestCluster::start(3).await;
    let cache = CacheClient::new(&c.client().await);
    cache.create_cache("main", settings(false, Compression::None, 0)).await.unwrap();
    push(&cache, &NixCommand::default(), "main", std::slice::from_ref(&built.data), |_| {}).await.unwrap();
    let victim = 2;
    let to_victim = CacheClient::new(&c.node_client(victim).await);
    let dump = Command::new("nix-store").args(["--dump", &built.lib]).output().unwrap().stdout;
    let info = nix_path_info(&built.lib);
    let upload = PathUpload {
        store_path: base(&built.lib),
        nar_hash: info.0,
        nar_size: info.1,
        references: vec![base(&built.data)],
        deriver: None,
        ca: None,
        sigs: Vec::new(),
    };
    let (sent, half_sent) = tokio::sync::oneshot::channel();
    let (resume, resumed) = tokio::sync::oneshot::channel();
    let half = dump.len() / 2;
    let paused = Paused {
        head: std::io::Cursor::new(dump[..half].to_vec()),
        tail: std::io::Cursor::new(dump[half..].to_vec()),
        sent: Some(sent),
        resume: Some(resumed),
    };
    let uploading = tokio::spawn(async move { to_victim.add_path("main", upload, paused).await });
    half_sent.await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.nodes.kill(victim).unwrap();
    let _ = resume.send(());
    let outcome = tokio::time::timeout(Duration::from_secs(60), uploading).await.expect("the upload ends").unwrap();
    assert!(outcome.is_err(), "an upload to a killed node fails");

    let survivors = CacheClient::new(&c.node_client(0).await);
    assert!(survivors.narinfo("main", &hash_part(&built.lib)).await.unwrap().is_none(), "no half path");
    assert_eq!(survivors.query_missing("main", vec![base(&built.lib)]).await.unwrap(), vec![base(&built.lib)]);
    c.nodes.restart(victim).await.unwrap();
    let again =
        push(&survivors, &NixCommand::default(), "main", std::slice::from_ref(&built.lib), |_| {}).await.unwrap();
    assert_eq!((again.pushed, again.skipped), (1, 1));
    assert!(survivors.narinfo("main", &hash_part(&built.lib)).await.unwrap().is_some());
}
