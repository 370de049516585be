//! Process control of `ProcessCluster`, exercised with the stand-in node (see `support`):
//! start, readiness, kill -9, restart on the same address, pause/resume, graceful stop, and
//! failure reporting. Runs in namespace mode as root, in loopback mode otherwise.

mod support;

use aspen_testkit::{ClusterOptions, NodeSpec, ProcessCluster, TestkitError, process_state};
use support::{echo_blocked, echo_ok, root_socket, stand_in_node};

fn cluster(n: usize) -> (tempfile::TempDir, ProcessCluster) {
    let bin_dir = tempfile::tempdir().expect("tempdir");
    let bin = stand_in_node(bin_dir.path());
    let cluster = ProcessCluster::new(bin, n).expect("cluster");
    (bin_dir, cluster)
}

#[tokio::test]
async fn start_kill_and_restart() {
    let (_bin, mut c) = cluster(3);
    c.start_all().await.expect("start all");
    let probe = root_socket();
    for i in 0..c.len() {
        assert!(c.is_running(i));
        let ticket = c.node_ticket(i).expect("ticket");
        assert_eq!(ticket, format!("stand-in-ticket node={} addr={}", i + 1, c.addr(i)));
        assert!(echo_ok(&probe, c.addr(i)), "node {i} unreachable from the test process");
    }
    if c.supports_partitions() {
        assert!(c.addr(0).to_string().starts_with("198.1"), "netns addresses: {}", c.addr(0));
    }

    let old_pid = c.pid(1).expect("pid");
    c.kill(1).expect("kill");
    assert!(!c.is_running(1));
    assert_eq!(process_state(old_pid), None, "killed node must be reaped, not a zombie");
    assert!(echo_blocked(&probe, c.addr(1)));
    assert!(c.kill(1).is_err(), "killing a dead node is an error");

    c.restart(1).await.expect("restart");
    assert!(c.is_running(1));
    assert_ne!(c.pid(1), Some(old_pid));
    assert!(echo_ok(&probe, c.addr(1)), "restarted node serves on the same address");
    assert!(c.node_ticket(1).is_ok());
    let log = std::fs::read_to_string(c.log_path(1)).expect("log");
    assert_eq!(log.matches("serving UDP echo").count(), 2, "log appends across restarts:\n{log}");

    // Restart of a running node kills it first.
    c.restart(2).await.expect("restart running node");
    assert!(echo_ok(&probe, c.addr(2)));
    let err = c.start(0).await.expect_err("already running");
    assert!(matches!(err.downcast_ref(), Some(TestkitError::AlreadyRunning { .. })), "{err:#}");
}

#[tokio::test]
async fn pause_resume_and_stop() {
    let (_bin, mut c) = cluster(1);
    c.start(0).await.expect("start");
    let pid = c.pid(0).expect("pid");
    let probe = root_socket();

    c.pause(0).expect("pause");
    assert_eq!(process_state(pid), Some('T'));
    assert!(c.is_running(0), "a paused node still runs");
    assert!(echo_blocked(&probe, c.addr(0)), "a paused node must not answer");

    c.resume(0).expect("resume");
    assert_ne!(process_state(pid), Some('T'));
    assert!(echo_ok(&probe, c.addr(0)));

    c.pause(0).expect("pause again");
    c.stop(0).await.expect("graceful stop of a paused node");
    assert!(!c.is_running(0));
    assert_eq!(process_state(pid), None);
    assert!(c.pause(0).is_err());
}

#[tokio::test]
async fn exit_before_ready_reports_log() {
    let bin_dir = tempfile::tempdir().expect("tempdir");
    let bin = stand_in_node(bin_dir.path());
    let spec = NodeSpec { node_id: 7, extra_args: vec!["--fail-on-start".into()] };
    let mut c = ProcessCluster::with_specs(bin, vec![spec], ClusterOptions::default()).expect("cluster");
    let err = c.start(0).await.expect_err("must fail");
    match err.downcast_ref() {
        Some(TestkitError::ExitedBeforeReady { index: 0, status, log }) => {
            assert_eq!(status.code(), Some(3));
            assert!(log.contains("failing on purpose"), "log tail: {log}");
        }
        other => panic!("unexpected error {other:?}: {err:#}"),
    }
    assert!(!c.is_running(0));

    c.set_extra_args(0, Vec::new()).expect("args");
    c.start(0).await.expect("starts without the flag");
    assert!(c.node_ticket(0).expect("ticket").contains("node=7"));
}

#[tokio::test]
async fn add_node_gets_its_own_slot() {
    let (_bin, mut c) = cluster(1);
    let i = c.add_node(42).expect("add node");
    assert_eq!((i, c.len(), c.node_id(i)), (1, 2, 42));
    assert_ne!(c.addr(0), c.addr(1));
    c.start_all().await.expect("start all");
    assert!(echo_ok(&root_socket(), c.addr(1)));
}
