//! A node of this version starts on a data directory the previous version wrote, and serves
//! the same keys, leases, queues, counters, pins, blobs and revocations; and `aspen cluster
//! upgrade` rolls a running `aspen cluster up` onto a new binary one node at a time, with a
//! client writing throughout, or rolls a broken binary back.
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

// ---- Rolling upgrades of `aspen cluster up` -------------------------------------------------

use aspen_testkit::cluster_up::ClusterUp;
use aspen_testkit::writer::AckedWriter;

/// Longest a whole `cluster upgrade` run may take.
const UPGRADE_LIMIT: Duration = Duration::from_secs(600);

fn blake3_of(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap();
    blake3::hash(&bytes).to_hex().to_string()
}

/// Stands in for a binary built from a later commit: the same program with bytes appended
/// (which the loader ignores), so it is another artifact with another hash.
fn next_binary(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("aspen-next");
    let mut bytes = std::fs::read(aspen_bin()).unwrap();
    bytes.extend_from_slice(b"\naspen rolling-upgrade test build\n");
    std::fs::write(&path, bytes).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    path
}

/// Runs the `aspen` CLI against the cluster in `up`, bounded by [`UPGRADE_LIMIT`].
async fn aspen(up: &ClusterUp, args: &[&str]) -> std::process::Output {
    let run = tokio::process::Command::new(aspen_bin())
        .args(args)
        .env("ASPEN_TICKET_FILE", up.ticket_file())
        .env_remove("ASPEN_TICKET")
        .env_remove("ASPEN_TOKEN")
        .env_remove("ASPEN_TOKEN_FILE")
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(UPGRADE_LIMIT, run).await.expect("the command ends").expect("aspen runs")
}

async fn upgrade(up: &ClusterUp, artifact: &Path) -> std::process::Output {
    let dir = up.dir().display().to_string();
    let artifact = artifact.display().to_string();
    aspen(up, &["--json", "cluster", "upgrade", "--data-dir", &dir, "--artifact", &artifact]).await
}

/// Each member's executable hash, in node order.
async fn builds_of(up: &ClusterUp) -> Vec<String> {
    builds(up).await.into_iter().map(|(_, h)| h).collect()
}

/// Each member's executable hash, from `cluster builds`.
async fn builds(up: &ClusterUp) -> Vec<(u64, String)> {
    let out = aspen(up, &["--json", "cluster", "builds"]).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["node"].as_u64().unwrap(), n["exe_blake3"].as_str().unwrap_or("?").to_string()))
        .collect()
}

/// Every acknowledged write reads back, through a fresh client.
async fn assert_all_present(up: &ClusterUp, acked: &[u64]) {
    let client = Client::from_ticket_str(&std::fs::read_to_string(up.ticket_file()).unwrap()).await.unwrap();
    aspen_testkit::writer::assert_all_present(&client, acked).await;
    client.close().await;
}

async fn cluster_client(up: &ClusterUp) -> Client {
    let text = std::fs::read_to_string(up.ticket_file()).unwrap();
    let client = Client::from_ticket_str(&text).await.unwrap();
    // The ticket `cluster up` wrote names the members at bootstrap; ask for all of them now.
    let mut ticket = ClusterTicket::decode(&client.ticket().await.unwrap()).unwrap();
    ticket.token = ClusterTicket::decode(&text).unwrap().token;
    client.close().await;
    Client::from_ticket_str(&ticket.encode()).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_upgrade_moves_every_node_while_a_client_writes_and_loses_nothing() {
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path().join("cluster");
    let mut up = ClusterUp::start(&dir, 3).unwrap();
    let old = blake3_of(&aspen_bin());
    let next = next_binary(scratch.path());
    let new = blake3_of(&next);
    assert!(builds(&up).await.iter().all(|(_, h)| *h == old));

    let writer = AckedWriter::start(cluster_client(&up).await);
    writer.acked_at_least(20).await;
    let before = writer.acked();
    let out = upgrade(&up, &next).await;
    let during = writer.acked() - before;
    assert!(out.status.success(), "upgrade failed: {}\n{}", String::from_utf8_lossy(&out.stderr), up.output());
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["artifact"], new);
    let steps = report["nodes"].as_array().unwrap();
    assert_eq!(steps.len(), 3, "{report}");
    assert!(steps.iter().all(|s| s["outcome"] == "upgraded"), "{report}");
    assert!(during > 0, "the cluster took no write during the upgrade");
    writer.acked_at_least(before + during + 20).await;
    let (acked, reads) = writer.finish().await;
    assert!(reads > 0);
    assert_all_present(&up, &acked).await;
    assert_eq!(builds(&up).await.iter().map(|(_, h)| h.clone()).collect::<Vec<_>>(), vec![new.clone(); 3]);

    // Again: nothing to do.
    let out = upgrade(&up, &next).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report["nodes"].as_array().unwrap().iter().all(|s| s["outcome"] == "already"), "{report}");

    // A restarted `cluster up` starts each node on the binary it was upgraded to.
    assert!(up.stop().unwrap().success(), "{}", up.output());
    let base = up.base_port();
    drop(up);
    let up = ClusterUp::start_at(&dir, 3, base).unwrap();
    assert_eq!(builds(&up).await.iter().map(|(_, h)| h.clone()).collect::<Vec<_>>(), vec![new; 3]);
    assert_all_present(&up, &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binary_that_exits_at_once_is_rolled_back_and_the_upgrade_stops() {
    let scratch = tempfile::tempdir().unwrap();
    let up = ClusterUp::start(&scratch.path().join("cluster"), 3).unwrap();
    let old = blake3_of(&aspen_bin());
    let broken = scratch.path().join("aspen-broken");
    std::fs::write(&broken, "#!/bin/sh\necho 'this build is broken' >&2\nexit 3\n").unwrap();
    std::fs::set_permissions(&broken, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();

    let writer = AckedWriter::start(cluster_client(&up).await);
    writer.acked_at_least(10).await;
    let out = upgrade(&up, &broken).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a broken binary was accepted: {stderr}");
    assert!(stderr.contains("upgrade stopped at node"), "{stderr}");
    assert!(stderr.contains("exit status: 3") && stderr.contains("this build is broken"), "{stderr}");
    assert!(stderr.contains("rolled back") && stderr.contains("caught up"), "{stderr}");
    assert!(stderr.contains("still on their old binary: node(s) ["), "{stderr}");

    // Every node runs the old binary and the cluster still takes writes.
    assert!(builds(&up).await.iter().all(|(_, h)| *h == old));
    let acked_now = writer.acked();
    writer.acked_at_least(acked_now + 10).await;
    let (acked, _) = writer.finish().await;
    assert_all_present(&up, &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_grown_from_the_previous_versions_data_rolls_onto_a_new_binary() {
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path().join("cluster");
    // Node 1 starts on the data dir the previous version wrote; nodes 2 and 3 are new.
    unpack_into(&dir.join("n1"));
    // Its membership knows node 1 at the address it had: 127.0.0.1:7931.
    let up = ClusterUp::start_at(&dir, 3, 7931).unwrap();
    let admin = Client::from_ticket_str(&std::fs::read_to_string(up.ticket_file()).unwrap()).await.unwrap();
    for id in [2u64, 3] {
        let text = std::fs::read_to_string(dir.join(format!("n{id}/node.ticket"))).unwrap();
        let addr = ClusterTicket::decode(text.trim()).unwrap().nodes[0].clone();
        admin.add_learner(id, addr).await.unwrap();
        admin.promote(id).await.unwrap();
    }
    let status = admin.status().await.unwrap();
    assert_eq!(status.members.iter().filter(|m| m.voter).count(), 3, "{status:?}");
    admin.close().await;

    let next = next_binary(scratch.path());
    let writer = AckedWriter::start(cluster_client(&up).await);
    writer.acked_at_least(10).await;
    let out = upgrade(&up, &next).await;
    assert!(out.status.success(), "upgrade failed: {}\n{}", String::from_utf8_lossy(&out.stderr), up.output());
    let (acked, _) = writer.finish().await;
    assert_all_present(&up, &acked).await;
    assert_eq!(builds(&up).await.iter().map(|(_, h)| h.clone()).collect::<Vec<_>>(), vec![blake3_of(&next); 3]);

    // The previous version's keys are served by every upgraded node.
    let ticket = ClusterTicket::decode(&std::fs::read_to_string(up.ticket_file()).unwrap()).unwrap();
    let token = Token::from_bytes(ticket.token.as_deref().unwrap()).unwrap();
    let status = cluster_client(&up).await.status().await.unwrap();
    for member in &status.members {
        let node = Client::for_node_with_token(member.addr.clone(), ClientConfig::default(), Some(token.clone()))
            .await
            .unwrap();
        let last = eventually("the node serves the fixture's keys", || async {
            node.get("fixture/last", ReadConsistency::Linearizable).await.ok().flatten()
        })
        .await;
        assert_eq!(last.value, b"written last", "node {}", member.node_id);
        node.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_and_rollback_commands_drive_the_upgrade_of_nodes_something_else_runs() {
    // The commands stand in for what a systemd host runs (a `nixos-rebuild switch` of its
    // host); here they ask `cluster up` to restart the node, through the CLI.
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path().join("cluster");
    let up = ClusterUp::start(&dir, 3).unwrap();
    let old = aspen_bin();
    let restart = format!(
        "{} cluster restart-node {{id}} --data-dir {} --exe \"$ASPEN_UPGRADE_EXE\"",
        old.display(),
        dir.display()
    );
    let rollback =
        format!("{} cluster restart-node {{id}} --data-dir {} --exe {}", old.display(), dir.display(), old.display());
    let staging = scratch.path().join("staging").display().to_string();
    let drive = |artifact: std::path::PathBuf| {
        let (restart, rollback, staging) = (restart.clone(), rollback.clone(), staging.clone());
        let up = &up;
        async move {
            let artifact = artifact.display().to_string();
            let args = [
                "--json",
                "cluster",
                "upgrade",
                "--data-dir",
                &staging,
                "--artifact",
                &artifact,
                "--restart-command",
                &restart,
                "--rollback-command",
                &rollback,
            ];
            aspen(up, &args).await
        }
    };

    let broken = scratch.path().join("aspen-broken");
    std::fs::write(&broken, "#!/bin/sh\nexit 7\n").unwrap();
    std::fs::set_permissions(&broken, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let out = drive(broken).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("the restart command failed") && stderr.contains("exit status: 7"), "{stderr}");
    assert!(stderr.contains("rolled back") && stderr.contains("caught up"), "{stderr}");
    assert!(builds(&up).await.iter().all(|(_, h)| *h == blake3_of(&old)));

    let writer = AckedWriter::start(cluster_client(&up).await);
    writer.acked_at_least(10).await;
    let next = next_binary(scratch.path());
    let out = drive(next.clone()).await;
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stderr), up.output());
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report["nodes"].as_array().unwrap().iter().all(|s| s["outcome"] == "upgraded"), "{report}");
    assert_eq!(builds(&up).await.iter().map(|(_, h)| h.clone()).collect::<Vec<_>>(), vec![blake3_of(&next); 3]);
    let (acked, _) = writer.finish().await;
    assert_all_present(&up, &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_is_down_is_brought_back_on_the_new_binary_first() {
    let scratch = tempfile::tempdir().unwrap();
    let up = ClusterUp::start(&scratch.path().join("cluster"), 3).unwrap();
    let client = cluster_client(&up).await;
    let leader = client.status().await.unwrap().leader.unwrap();
    let out = aspen(&up, &["--json", "cluster", "builds"]).await;
    let builds: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let victim = builds["nodes"].as_array().unwrap().iter().find(|n| n["node"] != leader).unwrap().clone();
    let pid = libc::pid_t::try_from(victim["pid"].as_u64().unwrap()).unwrap();
    // SAFETY: kill(2) of a node process of this test's cluster.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
    let victim = victim["node"].as_u64().unwrap();
    client.put("written/while-down", "yes").await.unwrap();

    let next = next_binary(scratch.path());
    let out = upgrade(&up, &next).await;
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stderr), up.output());
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["nodes"][0]["node"], victim, "the node that was down goes first: {report}");
    assert!(report["nodes"].as_array().unwrap().iter().all(|s| s["outcome"] == "upgraded"), "{report}");
    assert_eq!(builds_of(&up).await, vec![blake3_of(&next); 3]);
    client.close().await;
}

/// Processes stopped with SIGSTOP, continued when dropped (also when the test fails).
struct Frozen(Vec<libc::pid_t>);

impl Frozen {
    fn stop(pids: Vec<libc::pid_t>) -> Frozen {
        for pid in &pids {
            // SAFETY: kill(2) of a node process of this test's cluster.
            unsafe {
                libc::kill(*pid, libc::SIGSTOP);
            }
        }
        Frozen(pids)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        for pid in &self.0 {
            // SAFETY: as in `stop`.
            unsafe {
                libc::kill(*pid, libc::SIGCONT);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_most_nodes_not_answering_the_upgrade_restarts_nothing_and_says_why() {
    let scratch = tempfile::tempdir().unwrap();
    let up = ClusterUp::start(&scratch.path().join("cluster"), 3).unwrap();
    let out = aspen(&up, &["--json", "cluster", "builds"]).await;
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let before = builds(&up).await;
    // Nodes 2 and 3 stop answering (frozen, so the supervisor still counts them as running):
    // taking either down for its restart could not keep a majority, so none is taken.
    let pids = listed["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["node"] != 1)
        .map(|n| libc::pid_t::try_from(n["pid"].as_u64().unwrap()).unwrap())
        .collect();
    let frozen = Frozen::stop(pids);
    let next = next_binary(scratch.path());
    let (dir, artifact) = (up.dir().display().to_string(), next.display().to_string());
    let args =
        ["--timeout", "3s", "cluster", "upgrade", "--data-dir", &dir, "--artifact", &artifact, "--catch-up", "2s"];
    let out = aspen(&up, &args).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("upgrade stopped before node ")
            && stderr.contains("not a majority")
            && stderr.contains("nothing was restarted")
            && stderr.contains("no node was upgraded"),
        "{stderr}"
    );
    drop(frozen);
    // Nothing moved, and the cluster serves again once the nodes answer.
    assert_eq!(builds(&up).await, before);
    let client = cluster_client(&up).await;
    eventually("the cluster takes writes again", || async { client.put("after/refusal", "yes").await.ok() }).await;
    client.close().await;
}
