//! Network namespaces and partitions with real UDP traffic: routing root <-> nodes and node <->
//! node, partition/isolate/cut/heal, client isolation, and cleanup on drop. Needs root; each test
//! skips (with a note) where network namespaces are unavailable.

mod support;

use std::net::{SocketAddr, UdpSocket};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use aspen_testkit::{NetMode, ProcessCluster, TestNet, process_state};
use support::{echo_blocked, echo_ok, root_socket, stand_in_node};

/// UDP echo on `sock` in a background thread until the returned flag is set.
fn spawn_echo(sock: UdpSocket) -> (SocketAddr, Arc<AtomicBool>) {
    let addr = sock.local_addr().expect("local addr");
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    sock.set_read_timeout(Some(Duration::from_millis(100))).expect("timeout");
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while !flag.load(Ordering::Relaxed) {
            if let Ok((n, peer)) = sock.recv_from(&mut buf) {
                let _ = sock.send_to(&buf[..n], peer);
            }
        }
    });
    (addr, stop)
}

fn netns_cluster(n: usize) -> Option<(tempfile::TempDir, ProcessCluster)> {
    let bin_dir = tempfile::tempdir().expect("tempdir");
    let bin = stand_in_node(bin_dir.path());
    let c = ProcessCluster::new(bin, n).expect("cluster");
    if !c.supports_partitions() {
        eprintln!("skipping: network namespaces unavailable (needs root)");
        return None;
    }
    Some((bin_dir, c))
}

#[test]
fn routing_between_root_and_namespaces() {
    let net = match TestNet::new(NetMode::Namespaces, 3) {
        Ok(net) => net,
        Err(e) => return eprintln!("skipping: {e:#}"),
    };
    let servers: Vec<_> = (0..3).map(|i| spawn_echo(net.udp_socket_in(i).expect("socket in ns"))).collect();
    let root = root_socket();
    for (i, (addr, _)) in servers.iter().enumerate() {
        assert_eq!(addr.ip(), net.addr(i).expect("addr").ip());
        assert!(echo_ok(&root, *addr), "root -> node {i}");
    }
    let from0 = net.udp_socket_in(0).expect("socket");
    let from2 = net.udp_socket_in(2).expect("socket");
    assert!(echo_ok(&from0, servers[1].0), "node 0 -> node 1");
    assert!(echo_ok(&from0, servers[2].0), "node 0 -> node 2");
    assert!(echo_ok(&from2, servers[0].0), "node 2 -> node 0");
    for i in 0..3 {
        let ns = net.netns_name(i).expect("netns name");
        let out = std::process::Command::new("ip").args(["-n", ns, "-6", "-o", "addr"]).output().expect("ip");
        assert!(out.status.success() && out.stdout.is_empty(), "IPv6 must be off in {ns}: {out:?}");
    }
    // No route out of the node network.
    assert!(from0.send_to(b"x", "192.0.2.99:9").is_err(), "namespaces must have no default route");
    for (_, stop) in servers {
        stop.store(true, Ordering::Relaxed);
    }
}

#[tokio::test]
async fn partitions_drop_real_packets() {
    let Some((_bin, mut c)) = netns_cluster(3) else {
        return;
    };
    c.start_all().await.expect("start");
    let ns: Vec<UdpSocket> = (0..3).map(|i| c.udp_socket_in_ns(i).expect("socket")).collect();
    let root = root_socket();
    assert!(echo_ok(&ns[0], c.addr(1)));

    c.partition(&[&[0], &[1, 2]]).expect("partition");
    assert!(echo_blocked(&ns[0], c.addr(1)), "0 -> 1 across the partition");
    assert!(echo_blocked(&ns[1], c.addr(0)), "1 -> 0 across the partition");
    assert!(echo_blocked(&ns[0], c.addr(2)), "0 -> 2 across the partition");
    assert!(echo_ok(&ns[2], c.addr(1)), "2 -> 1 inside a group");
    assert!(echo_ok(&root, c.addr(0)), "the test process still reaches the minority");

    c.heal().expect("heal");
    assert!(echo_ok(&ns[0], c.addr(1)), "0 -> 1 after heal");
    assert!(echo_ok(&ns[1], c.addr(0)), "1 -> 0 after heal");

    c.isolate(2).expect("isolate");
    assert!(echo_blocked(&ns[0], c.addr(2)));
    assert!(echo_blocked(&ns[2], c.addr(1)));
    assert!(echo_ok(&ns[0], c.addr(1)));
    c.heal().expect("heal");

    c.cut_link(0, 1).expect("cut");
    assert!(echo_blocked(&ns[0], c.addr(1)));
    assert!(echo_ok(&ns[0], c.addr(2)));
    assert!(echo_ok(&ns[2], c.addr(1)));

    c.isolate_from_clients(1).expect("isolate from clients");
    assert!(echo_blocked(&root, c.addr(1)), "test process -> 1");
    assert!(echo_ok(&ns[2], c.addr(1)), "node links unaffected");
    assert!(echo_ok(&root, c.addr(0)));
    c.heal().expect("heal");
    assert!(echo_ok(&root, c.addr(1)));
    assert!(echo_ok(&ns[0], c.addr(1)));

    // Partitions survive restarts: they belong to the network, not the process.
    c.isolate(0).expect("isolate");
    c.restart(0).await.expect("restart");
    assert!(echo_blocked(&ns[1], c.addr(0)));
    c.heal().expect("heal");
    assert!(echo_ok(&ns[1], c.addr(0)));
}

/// Identity of a namespace (nsfs inode) or interface (ifindex), to tell ours from a re-created
/// one with the same name (a parallel test may reuse the subnet right after our drop).
fn identity(path: &Path) -> Option<u64> {
    if path.starts_with("/sys") {
        std::fs::read_to_string(path.join("ifindex")).ok()?.trim().parse().ok()
    } else {
        std::fs::metadata(path).ok().map(|m| m.ino())
    }
}

#[tokio::test]
async fn drop_removes_processes_namespaces_and_bridge() {
    let Some((_bin, mut c)) = netns_cluster(2) else {
        return;
    };
    c.start_all().await.expect("start");
    c.pause(1).expect("pause");
    let pids: Vec<u32> = (0..2).map(|i| c.pid(i).expect("pid")).collect();
    let mut paths = vec![Path::new("/sys/class/net").join(c.net().bridge_name().expect("bridge"))];
    for i in 0..2 {
        paths.push(Path::new("/run/netns").join(c.net().netns_name(i).expect("netns")));
    }
    let before: Vec<_> = paths.iter().map(|p| identity(p).expect("exists")).collect();
    let data_dir = c.data_dir(0).to_path_buf();

    drop(c);
    for pid in pids {
        assert_eq!(process_state(pid), None, "node {pid} survived the drop");
    }
    for (path, id) in paths.iter().zip(before) {
        assert_ne!(identity(path), Some(id), "{} survived the drop", path.display());
    }
    assert!(!data_dir.exists(), "data dirs are deleted");
}
