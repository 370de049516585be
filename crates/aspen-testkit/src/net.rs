//! The network one test cluster's nodes live on.
//!
//! **Namespace mode** (root, `ip netns` works): every node gets its own network namespace with
//! `eth0` = `198.18.x.<i+1>/24` (no IPv6, no default route), joined by a veth pair to a bridge
//! in the root namespace that carries `198.18.x.254`, the test process's address. Partitions
//! are tc drop filters on the root-namespace ends of the veths, i.e. inside the "switch": a
//! sender's `sendmsg` succeeds and the packet just never arrives, as on a real faulty network.
//! Each veth end gets a `clsact` qdisc; a cut node `i` gets two classic-BPF direct-action
//! filters (see [`crate::bpf`]), `ingress` dropping frames from `i` to blocked addresses and
//! `egress` dropping frames to `i` from blocked addresses. The exact commands:
//!
//! ```text
//! tc qdisc add dev asv<k>-<i> clsact                                   # once, at setup
//! tc filter replace dev asv<k>-<i> ingress pref 1 handle 1 bpf da bytecode '<dst program>'
//! tc filter replace dev asv<k>-<i> egress  pref 1 handle 1 bpf da bytecode '<src program>'
//! tc filter del dev asv<k>-<i> ingress pref 1                          # heal (and egress)
//! ```
//!
//! (`prio` + `u32 ... action drop` is not used: `sch_prio`, `cls_u32` and `act_gact` are missing
//! from the kernels we run on, while `clsact` and `cls_bpf` are present.)
//!
//! **Loopback mode** (not root, namespaces unavailable, or `ASPEN_TESTKIT_NETNS=0`): nodes bind
//! `127.0.0.1` on distinct ports and partitions fail with
//! [`TestkitError::PartitionsUnsupported`]. `ASPEN_TESTKIT_NETNS=1` turns the fallback into an
//! error, for CI jobs that must run partition tests.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::process::Command;
use std::sync::{Mutex, MutexGuard};

use anyhow::{Context, anyhow, bail};

use crate::bpf::{self, Field};
use crate::error::TestkitError;
use crate::netns::NetnsHandle;
use crate::partition::LinkState;
use crate::{alloc, cmd, names};

/// Port every node binds in namespace mode (addresses differ, so ports may coincide).
pub const NETNS_NODE_PORT: u16 = 7000;

/// Environment variable choosing the mode: unset = automatic, `0` = loopback, `1` = namespaces
/// or fail.
pub const NETNS_ENV: &str = "ASPEN_TESTKIT_NETNS";

/// One cluster's network; see the module documentation.
pub struct TestNet {
    mode: Mode,
}

enum Mode {
    Netns(NetnsNet),
    Loopback { reason: String, addrs: Vec<SocketAddr> },
}

struct NetnsNet {
    k: u16,
    nodes: Vec<NetnsHandle>,
    links: Mutex<Links>,
}

struct Links {
    state: LinkState,
    /// Addresses currently blocked per node, as installed in tc.
    applied: Vec<Vec<Ipv4Addr>>,
}

/// How a [`TestNet`] chooses between namespaces and loopback.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NetMode {
    /// Namespaces when possible, else loopback (with a warning).
    #[default]
    Auto,
    /// Always loopback.
    Loopback,
    /// Namespaces or an error.
    Namespaces,
}

impl NetMode {
    /// The mode [`NETNS_ENV`] asks for (`Auto` when unset or unrecognised).
    pub fn from_env() -> Self {
        match std::env::var(NETNS_ENV).as_deref() {
            Ok("0") => NetMode::Loopback,
            Ok("1") => NetMode::Namespaces,
            _ => NetMode::Auto,
        }
    }
}

impl TestNet {
    /// A network with `n` node slots in the mode [`NETNS_ENV`] selects.
    pub fn with_nodes(n: usize) -> anyhow::Result<Self> {
        Self::new(NetMode::from_env(), n)
    }

    /// A network with `n` node slots in `mode`.
    pub fn new(mode: NetMode, n: usize) -> anyhow::Result<Self> {
        if mode == NetMode::Loopback {
            return Self::loopback_with_nodes("loopback mode requested", n);
        }
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        let attempt = if euid != 0 { Err(anyhow!("not running as root (euid {euid})")) } else { NetnsNet::create(n) };
        match attempt {
            Ok(net) => Ok(Self { mode: Mode::Netns(net) }),
            Err(e) if mode == NetMode::Namespaces => Err(e.context("network namespaces are unavailable")),
            Err(e) => {
                let reason = format!("{e:#}");
                tracing::warn!("aspen-testkit falls back to loopback networking: {reason}");
                Self::loopback_with_nodes(reason, n)
            }
        }
    }

    /// A loopback network with `n` node slots; `reason` explains why in partition errors.
    pub fn loopback_with_nodes(reason: impl Into<String>, n: usize) -> anyhow::Result<Self> {
        let mut net = Self { mode: Mode::Loopback { reason: reason.into(), addrs: Vec::new() } };
        for _ in 0..n {
            net.add_node()?;
        }
        Ok(net)
    }

    /// Adds a node slot and returns the address its node must bind.
    pub fn add_node(&mut self) -> anyhow::Result<SocketAddr> {
        match &mut self.mode {
            Mode::Netns(net) => net.add_node(),
            Mode::Loopback { addrs, .. } => {
                let addr = free_loopback_addr()?;
                addrs.push(addr);
                Ok(addr)
            }
        }
    }

    /// Number of node slots.
    pub fn len(&self) -> usize {
        match &self.mode {
            Mode::Netns(net) => net.nodes.len(),
            Mode::Loopback { addrs, .. } => addrs.len(),
        }
    }

    /// Whether the network has no node slots.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Address node `i` binds.
    pub fn addr(&self, i: usize) -> anyhow::Result<SocketAddr> {
        self.check(i)?;
        Ok(match &self.mode {
            Mode::Netns(net) => SocketAddr::from((names::node_ip(net.k, i), NETNS_NODE_PORT)),
            Mode::Loopback { addrs, .. } => addrs[i],
        })
    }

    /// Whether partition functions work (namespace mode).
    pub fn supports_partitions(&self) -> bool {
        matches!(self.mode, Mode::Netns(_))
    }

    /// The test process's address on the node network (namespace mode only). Client endpoints
    /// bound to `0.0.0.0` or to this address reach the nodes from it.
    pub fn client_ip(&self) -> Option<Ipv4Addr> {
        match &self.mode {
            Mode::Netns(net) => Some(names::client_ip(net.k)),
            Mode::Loopback { .. } => None,
        }
    }

    /// Name of node `i`'s network namespace (namespace mode only).
    pub fn netns_name(&self, i: usize) -> Option<&str> {
        match &self.mode {
            Mode::Netns(net) => net.nodes.get(i).map(NetnsHandle::name),
            Mode::Loopback { .. } => None,
        }
    }

    /// Name of the bridge (namespace mode only).
    pub fn bridge_name(&self) -> Option<String> {
        match &self.mode {
            Mode::Netns(net) => Some(names::bridge(net.k)),
            Mode::Loopback { .. } => None,
        }
    }

    /// Makes `cmd` run inside node `i`'s namespace (no-op in loopback mode). Spawn it before
    /// this network is dropped.
    pub fn enter_in_child(&self, i: usize, cmd: &mut Command) -> anyhow::Result<()> {
        self.check(i)?;
        if let Mode::Netns(net) = &self.mode {
            net.nodes[i].apply_to(cmd);
        }
        Ok(())
    }

    /// A UDP socket on node `i`'s network stack, bound to its IP with an ephemeral port: to
    /// probe connectivity as that node would see it.
    pub fn udp_socket_in(&self, i: usize) -> anyhow::Result<UdpSocket> {
        let ip = self.addr(i)?.ip();
        match &self.mode {
            Mode::Netns(net) => net.nodes[i].run_in(|| UdpSocket::bind((ip, 0))),
            Mode::Loopback { .. } => UdpSocket::bind((ip, 0)).context("cannot bind UDP socket on loopback"),
        }
    }

    /// Nodes in different groups can no longer exchange packets (both directions); nodes in no
    /// group keep all links. Replaces earlier node-to-node cuts; the test process stays reachable.
    pub fn partition(&self, groups: &[&[usize]]) -> anyhow::Result<()> {
        self.update(|s| s.set_partition(groups))
    }

    /// Node `i` can reach no other node (replaces earlier node-to-node cuts).
    pub fn isolate(&self, i: usize) -> anyhow::Result<()> {
        self.update(|s| s.isolate(i))
    }

    /// Severs the link between nodes `a` and `b`, in addition to existing cuts.
    pub fn cut_link(&self, a: usize, b: usize) -> anyhow::Result<()> {
        self.update(|s| s.cut_link(a, b))
    }

    /// Node `i` and the test process can no longer exchange packets.
    pub fn isolate_from_clients(&self, i: usize) -> anyhow::Result<()> {
        self.update(|s| s.isolate_from_clients(i))
    }

    /// Removes every cut.
    pub fn heal(&self) -> anyhow::Result<()> {
        self.update(|s| {
            s.heal();
            Ok(())
        })
    }

    fn update(&self, change: impl FnOnce(&mut LinkState) -> Result<(), TestkitError>) -> anyhow::Result<()> {
        match &self.mode {
            Mode::Netns(net) => {
                let mut links = net.lock_links()?;
                change(&mut links.state)?;
                net.apply(&mut links)
            }
            Mode::Loopback { reason, .. } => Err(TestkitError::PartitionsUnsupported { reason: reason.clone() }.into()),
        }
    }

    fn check(&self, i: usize) -> Result<(), TestkitError> {
        let len = self.len();
        if i < len { Ok(()) } else { Err(TestkitError::NoSuchNode { index: i, len }) }
    }
}

impl NetnsNet {
    fn create(n: usize) -> anyhow::Result<Self> {
        let k = {
            let locked = alloc::lock()?;
            locked.sweep_stale();
            let k = locked.claim()?;
            if let Err(e) = create_bridge(k) {
                cmd::run_quiet("ip", &["link", "del", &names::bridge(k)]);
                locked.release(k);
                return Err(e);
            }
            k
        };
        // From here on, Drop cleans up whatever exists.
        let mut net =
            Self { k, nodes: Vec::new(), links: Mutex::new(Links { state: LinkState::new(0), applied: Vec::new() }) };
        for _ in 0..n {
            net.add_node()?;
        }
        Ok(net)
    }

    fn add_node(&mut self) -> anyhow::Result<SocketAddr> {
        let i = self.nodes.len();
        if i >= names::MAX_NODES {
            bail!("a test network holds at most {} nodes", names::MAX_NODES);
        }
        let (k, ns, veth) = (self.k, names::netns(self.k, i), names::veth(self.k, i));
        let handle = {
            let _locked = alloc::lock()?;
            match create_node(k, i) {
                Ok(handle) => handle,
                Err(e) => {
                    cmd::run_quiet("ip", &["link", "del", &veth]);
                    cmd::run_quiet("ip", &["netns", "del", &ns]);
                    return Err(e.context(format!("cannot set up namespace {ns} for node {i}")));
                }
            }
        };
        self.nodes.push(handle);
        let mut links = self.lock_links()?;
        links.state.set_len(i + 1);
        links.applied.push(Vec::new());
        Ok(SocketAddr::from((names::node_ip(k, i), NETNS_NODE_PORT)))
    }

    fn lock_links(&self) -> anyhow::Result<MutexGuard<'_, Links>> {
        self.links.lock().map_err(|_| anyhow!("partition state poisoned by a panic"))
    }

    /// Brings tc in line with `links.state`, touching only nodes whose blocked set changed.
    fn apply(&self, links: &mut Links) -> anyhow::Result<()> {
        for i in 0..self.nodes.len() {
            let mut blocked: Vec<Ipv4Addr> =
                links.state.blocked_peers(i).into_iter().map(|j| names::node_ip(self.k, j)).collect();
            if links.state.clients_blocked(i) {
                blocked.push(names::client_ip(self.k));
            }
            if blocked == links.applied[i] {
                continue;
            }
            let veth = names::veth(self.k, i);
            // Frames leaving node i (veth ingress) by destination, frames reaching it by source.
            for (hook, field) in [("ingress", Field::Dst), ("egress", Field::Src)] {
                match bpf::drop_program(field, &blocked) {
                    Some(prog) => {
                        let code = bpf::to_tc_bytecode(&prog);
                        cmd::run(
                            "tc",
                            &[
                                "filter", "replace", "dev", &veth, hook, "pref", "1", "handle", "1", "bpf", "da",
                                "bytecode", &code,
                            ],
                        )?;
                    }
                    None => {
                        cmd::run("tc", &["filter", "del", "dev", &veth, hook, "pref", "1"])?;
                    }
                }
            }
            links.applied[i] = blocked;
        }
        Ok(())
    }
}

impl Drop for NetnsNet {
    fn drop(&mut self) {
        let locked = alloc::lock();
        if let Err(e) = &locked {
            tracing::warn!("tearing down test network without the allocation lock: {e:#}");
        }
        // Our open handles would keep the namespaces (and their veths) alive: close them first.
        let count = self.nodes.len();
        self.nodes.clear();
        for i in 0..count {
            cmd::run_quiet("ip", &["link", "del", &names::veth(self.k, i)]);
            cmd::run_quiet("ip", &["netns", "del", &names::netns(self.k, i)]);
        }
        cmd::run_quiet("ip", &["link", "del", &names::bridge(self.k)]);
        if let Ok(locked) = &locked {
            locked.release(self.k);
        }
    }
}

fn create_bridge(k: u16) -> anyhow::Result<()> {
    let bridge = names::bridge(k);
    let addr = format!("{}/24", names::client_ip(k));
    cmd::run("ip", &["link", "add", &bridge, "type", "bridge"])?;
    cmd::run("ip", &["addr", "add", &addr, "dev", &bridge])?;
    cmd::run("ip", &["link", "set", &bridge, "up"])?;
    Ok(())
}

fn create_node(k: u16, i: usize) -> anyhow::Result<NetnsHandle> {
    let (ns, veth, peer) = (names::netns(k, i), names::veth(k, i), names::veth_peer(k, i));
    let addr = format!("{}/24", names::node_ip(k, i));
    cmd::run("ip", &["netns", "add", &ns])?;
    let handle = NetnsHandle::open(&ns)?;
    // IPv4 only: link-local IPv6 would let nodes talk around the IPv4 filters.
    handle.run_in(disable_ipv6)?;
    cmd::run("ip", &["-n", &ns, "link", "set", "lo", "up"])?;
    cmd::run("ip", &["link", "add", &veth, "type", "veth", "peer", "name", &peer, "netns", &ns])?;
    cmd::run("ip", &["-n", &ns, "link", "set", &peer, "name", "eth0"])?;
    cmd::run("ip", &["-n", &ns, "addr", "add", &addr, "dev", "eth0"])?;
    cmd::run("ip", &["-n", &ns, "link", "set", "eth0", "up"])?;
    cmd::run("ip", &["link", "set", &veth, "master", &names::bridge(k)])?;
    cmd::run("ip", &["link", "set", &veth, "up"])?;
    cmd::run("tc", &["qdisc", "add", "dev", &veth, "clsact"])?;
    Ok(handle)
}

fn disable_ipv6() -> std::io::Result<()> {
    for conf in ["all", "default"] {
        match std::fs::write(format!("/proc/sys/net/ipv6/conf/{conf}/disable_ipv6"), "1") {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {} // kernel without IPv6
            other => other?,
        }
    }
    Ok(())
}

fn free_loopback_addr() -> anyhow::Result<SocketAddr> {
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).context("cannot bind a UDP port on 127.0.0.1")?;
    socket.local_addr().context("cannot read local address of probe socket")
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn sweep_removes_networks_of_dead_owners() {
        let net = match TestNet::new(NetMode::Namespaces, 2) {
            Ok(net) => net,
            Err(e) => {
                eprintln!("skipping, needs root and network namespaces: {e:#}");
                return;
            }
        };
        let Mode::Netns(inner) = &net.mode else { panic!("namespace mode was requested") };
        let k = inner.k;
        // Simulate a crashed owner: leak the network, then claim it for a pid that cannot exist.
        std::mem::forget(net);
        std::fs::write(alloc::state_file(k), "4194305 1\n").expect("rewrite lease");

        // Hold the lock so no parallel test re-creates subnet k before the assertions.
        let locked = alloc::lock().expect("lock");
        locked.sweep_stale();
        for i in 0..2 {
            assert!(!Path::new("/run/netns").join(names::netns(k, i)).exists(), "namespace {i} left");
            assert!(!Path::new("/sys/class/net").join(names::veth(k, i)).exists(), "veth {i} left");
        }
        assert!(!Path::new("/sys/class/net").join(names::bridge(k)).exists(), "bridge left");
        assert!(!alloc::state_file(k).exists(), "lease left");
    }

    #[test]
    fn loopback_rejects_partitions() {
        let net = TestNet::new(NetMode::Loopback, 2).expect("loopback net");
        assert!(!net.supports_partitions());
        assert_ne!(net.addr(0).expect("addr"), net.addr(1).expect("addr"));
        let err = net.partition(&[&[0], &[1]]).expect_err("partition must fail");
        assert!(matches!(err.downcast_ref(), Some(TestkitError::PartitionsUnsupported { .. })));
        assert!(net.heal().is_err());
    }
}
