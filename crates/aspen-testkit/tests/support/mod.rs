//! Shared helpers for the testkit's own tests: a stand-in for the node binary and UDP probes.
//!
//! The real `aspen` binary is not needed to test process and network control, so these tests
//! run a STAND-IN: a shell script with the node's command-line contract that execs python3,
//! binds a UDP echo server on `--bind`, and then renames `<data-dir>/node.ticket` into place.
//! `--fail-on-start` makes it exit with status 3 before writing the ticket.

#![allow(dead_code)] // each test binary uses a different subset

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const STAND_IN_PY: &str = r#"
import os, socket, sys
args = sys.argv[1:]
if not args or args[0] != "node":
    sys.exit("stand-in: expected the `node` subcommand")
opts, flags, i = {}, set(), 1
while i < len(args):
    if i + 1 < len(args) and not args[i + 1].startswith("--"):
        opts[args[i]] = args[i + 1]
        i += 2
    else:
        flags.add(args[i])
        i += 1
node_id = opts["--node-id"]
print(f"stand-in node {node_id} starting with {args}", file=sys.stderr, flush=True)
if "--fail-on-start" in flags:
    print("stand-in: failing on purpose", file=sys.stderr, flush=True)
    sys.exit(3)
host, port = opts["--bind"].rsplit(":", 1)
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind((host, int(port)))
print(f"stand-in node {node_id} serving UDP echo on {host}:{port}", file=sys.stderr, flush=True)
ticket = os.path.join(opts["--data-dir"], "node.ticket")
with open(ticket + ".tmp", "w") as f:
    f.write(f"stand-in-ticket node={node_id} addr={host}:{port}\n")
os.rename(ticket + ".tmp", ticket)
while True:
    data, peer = sock.recvfrom(2048)
    sock.sendto(data, peer)
"#;

/// Writes the stand-in node "binary" into `dir` and returns its path.
pub fn stand_in_node(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let py = dir.join("stand_in_node.py");
    std::fs::write(&py, STAND_IN_PY).expect("write stand-in python");
    let script = dir.join("stand-in-aspen");
    std::fs::write(&script, format!("#!/bin/sh\nexec python3 {} \"$@\"\n", py.display())).expect("write stand-in");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod stand-in");
    script
}

static PROBE: AtomicU64 = AtomicU64::new(0);

/// Sends one uniquely tagged datagram and waits up to `wait` for its echo.
fn probe_once(sock: &UdpSocket, to: SocketAddr, wait: Duration) -> bool {
    let tag = format!("probe-{}-{}", std::process::id(), PROBE.fetch_add(1, Ordering::Relaxed));
    if sock.send_to(tag.as_bytes(), to).is_err() {
        return false;
    }
    let deadline = Instant::now() + wait;
    let mut buf = [0u8; 256];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || sock.set_read_timeout(Some(left)).is_err() {
            return false;
        }
        match sock.recv_from(&mut buf) {
            Ok((n, _)) if &buf[..n] == tag.as_bytes() => return true,
            Ok(_) => continue, // late echo of an earlier probe
            Err(_) => return false,
        }
    }
}

/// Whether `to` echoes a datagram from `sock` within a few seconds (retrying).
pub fn echo_ok(sock: &UdpSocket, to: SocketAddr) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if probe_once(sock, to, Duration::from_millis(250)) {
            return true;
        }
    }
    false
}

/// Whether several probes from `sock` to `to` all go unanswered.
pub fn echo_blocked(sock: &UdpSocket, to: SocketAddr) -> bool {
    (0..3).all(|_| !probe_once(sock, to, Duration::from_millis(300)))
}

/// A UDP socket in the test process's own (root) namespace.
pub fn root_socket() -> UdpSocket {
    UdpSocket::bind("0.0.0.0:0").expect("bind root probe socket")
}
