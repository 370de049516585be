//! [`TestCluster`]: an initialized cluster of real `aspen` node processes for any crate's
//! integration tests, with its root token, clients, narrower tokens, bounded waits and the
//! usual nemesis.
//!
//! The node binary is `aspen` (every app included), found as [`aspen_bin`] says: `cargo
//! test --workspace` builds it beside every test executable.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use aspen_client::{Client, ClientConfig};
use aspen_core::api::{NodeAddr, ReadConsistency};
use aspen_core::capability::Capability;
use aspen_net::ClusterTicket;
use aspen_net::token::{Audience, LinkSpec, Token};

use crate::{ClusterOptions, NodeSpec, ProcessCluster};

/// Generous bound for anything a healthy or healing cluster must reach.
pub const CONVERGE: Duration = Duration::from_secs(60);

/// Environment variable naming the node binary, overriding the search.
pub const ASPEN_BIN_ENV: &str = "ASPEN_BIN";

/// The `aspen` binary nodes run as: `$ASPEN_BIN`, else `aspen` in the target directory the
/// running test executable was built into (`target/<profile>/deps/<test>` →
/// `target/<profile>/aspen`). Panics with what to do when there is none.
pub fn aspen_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os(ASPEN_BIN_ENV) {
        return PathBuf::from(bin);
    }
    let exe = std::env::current_exe().expect("the test executable's path");
    let candidates = exe.ancestors().skip(1).take(2).map(|dir| dir.join("aspen")).collect::<Vec<_>>();
    candidates.iter().find(|p| p.is_file()).cloned().unwrap_or_else(|| {
        panic!(
            "no aspen binary at {candidates:?}: build it first (`cargo build -p aspen-cli`; `cargo test --workspace` \
             does), or set {ASPEN_BIN_ENV}"
        )
    })
}

/// A running, initialized cluster.
pub struct TestCluster {
    pub nodes: ProcessCluster,
    /// The root token `init` wrote: every test client presents it unless told otherwise.
    pub token: Token,
}

/// How many times slower than a plain host this one runs: `ASPEN_TESTKIT_SLOWNESS` (1 to 20,
/// default 1). An emulated guest (QEMU TCG, as CI's vm job) sets it, and the testkit's Raft
/// timings, init and waits stretch by that factor; what tests decide stays the same.
pub fn slowness() -> u32 {
    std::env::var("ASPEN_TESTKIT_SLOWNESS").ok().and_then(|v| v.parse().ok()).unwrap_or(1).clamp(1, 20)
}

/// The client settings of test clients: the defaults, stretched by the [`slowness`].
pub fn client_config() -> ClientConfig {
    let n = slowness();
    let mut config = ClientConfig::with_request_timeout(ClientConfig::default().request_timeout * n);
    config.read_attempt_timeout *= n;
    config.connect_timeout *= n;
    config
}

/// Fast elections keep fault tests short; the bounds in tests stay generous anyway.
pub fn fast_raft_args() -> Vec<String> {
    let n = slowness();
    args(&["--heartbeat-ms", &(50 * n).to_string(), "--election-timeout-ms", &(400 * n).to_string()])
}

/// Owned strings from string slices, for node arguments.
pub fn args(extra: &[&str]) -> Vec<String> {
    extra.iter().map(|s| s.to_string()).collect()
}

/// Wall-clock milliseconds, for token validity windows.
pub fn now_ms() -> u64 {
    aspen_net::now_ms()
}

impl TestCluster {
    /// Starts `n` nodes and initializes them as one cluster.
    pub async fn start(n: usize) -> TestCluster {
        Self::start_with(n, Vec::new()).await
    }

    /// Starts `n` nodes, each with [`fast_raft_args`] and `extra`, and initializes them.
    pub async fn start_with(n: usize, extra: Vec<String>) -> TestCluster {
        Self::start_each(n, |_, _| extra.clone()).await
    }

    /// Starts `n` nodes, node `i` with [`fast_raft_args`] and `extra(i, its bind address)`
    /// (a gateway of its own on its address, say), and initializes them.
    pub async fn start_each(n: usize, extra: impl Fn(usize, std::net::SocketAddr) -> Vec<String>) -> TestCluster {
        let specs = (1..=n as u64).map(NodeSpec::new).collect();
        let mut nodes =
            ProcessCluster::with_specs(aspen_bin(), specs, ClusterOptions::default()).expect("create cluster");
        for i in 0..n {
            let args = fast_raft_args().into_iter().chain(extra(i, nodes.addr(i))).collect();
            nodes.set_extra_args(i, args).expect("node arguments");
        }
        nodes.start_all().await.expect("start nodes");
        let first_addr =
            ClusterTicket::decode(&nodes.node_ticket(0).expect("node ticket")).expect("ticket").nodes.remove(0);
        let first = Client::for_node(first_addr, client_config()).await.expect("client for node 0");
        let members = (1..n)
            .map(|i| {
                let t = ClusterTicket::decode(&nodes.node_ticket(i).expect("node ticket")).expect("ticket");
                (nodes.node_id(i), t.nodes[0].clone())
            })
            .collect();
        let done = first.init(members).await.expect("init cluster");
        first.close().await;
        let text = std::fs::read_to_string(&done.root_token_file).expect("root token file");
        let token = Token::decode(&text).expect("root token");
        let cluster = TestCluster { nodes, token };
        cluster.wait_for_leader().await;
        // Every node must know the membership and its leader before a test talks to it:
        // a node that has not heard from the leader yet answers `not_initialized`.
        for i in 0..n {
            let c = cluster.node_client(i).await;
            eventually(&format!("node {i} knows the leader"), || async { c.status().await.ok()?.leader.map(drop) })
                .await;
        }
        cluster
    }

    /// A client bound to `addr` only, presenting the root token.
    pub async fn for_node(&self, addr: NodeAddr, config: ClientConfig) -> Client {
        Client::for_node_with_token(addr, config, Some(self.token.clone())).await.expect("client for node")
    }

    /// A client over `addrs` with failover, presenting the root token.
    pub async fn over(&self, addrs: Vec<NodeAddr>, config: ClientConfig) -> Client {
        Client::over_nodes_with_token(addrs, config, Some(self.token.clone())).await.expect("cluster client")
    }

    pub fn node_addr(&self, i: usize) -> NodeAddr {
        let ticket = self.nodes.node_ticket(i).expect("node ticket");
        ClusterTicket::decode(&ticket).expect("valid node ticket").nodes.remove(0)
    }

    /// A client bound to node `i` only (no failover).
    pub async fn node_client(&self, i: usize) -> Client {
        self.for_node(self.node_addr(i), client_config()).await
    }

    /// A client over every running node, with failover.
    pub async fn client(&self) -> Client {
        let nodes = (0..self.nodes.len()).filter(|i| self.nodes.is_running(*i)).map(|i| self.node_addr(i)).collect();
        self.over(nodes, client_config()).await
    }

    /// A bearer token granting exactly `caps` for an hour, delegated from the root token.
    pub fn token_with(&self, caps: Vec<Capability>) -> Token {
        let holder = iroh::SecretKey::from_bytes(&self.token.holder_secret.expect("the root token may delegate"));
        let spec = LinkSpec {
            caps,
            audience: Audience::Bearer,
            not_before_ms: now_ms() - 60_000,
            expires_ms: Some(now_ms() + 3_600_000),
            may_delegate: false,
        };
        self.token.delegate(&holder, spec).expect("a narrower token")
    }

    /// A client bound to node `i` presenting a token that grants exactly `caps`.
    pub async fn client_with_caps(&self, i: usize, caps: Vec<Capability>) -> Client {
        let token = self.token_with(caps);
        Client::for_node_with_token(self.node_addr(i), client_config(), Some(token)).await.expect("client")
    }

    /// Index of the current leader, as seen by a running node.
    pub async fn wait_for_leader(&self) -> usize {
        eventually("a leader is elected", || async {
            for i in 0..self.nodes.len() {
                if !self.nodes.is_running(i) {
                    continue;
                }
                let Ok(c) = Client::for_node_with_token(
                    self.node_addr(i),
                    ClientConfig::with_request_timeout(Duration::from_secs(2)),
                    Some(self.token.clone()),
                )
                .await
                else {
                    continue;
                };
                let status = c.status().await;
                c.close().await;
                if let Ok(s) = status
                    && let Some(leader) = s.leader
                    && let Some(idx) = (0..self.nodes.len()).find(|j| self.nodes.node_id(*j) == leader)
                    && self.nodes.is_running(idx)
                {
                    return Some(idx);
                }
            }
            None
        })
        .await
    }

    /// The usual nemesis: kill -9 the leader, and bring it back half a second later.
    pub async fn kill_and_restart_leader(&mut self) {
        let leader = self.wait_for_leader().await;
        self.nodes.kill(leader).unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        self.nodes.restart(leader).await.unwrap();
    }

    /// Waits until node `i`'s own applied state holds `key` = `value`.
    pub async fn wait_for_value_on(&self, i: usize, key: &str, value: Option<&[u8]>) {
        let client = self.node_client(i).await;
        eventually(&format!("node {i} applies {key}"), || async {
            let kv = client.get(key, ReadConsistency::Stale).await.ok()?;
            (kv.as_ref().map(|kv| kv.value.as_slice()) == value).then_some(())
        })
        .await
    }
}

/// Polls `check` every 100 ms until it yields a value; panics after [`CONVERGE`] (times the
/// [`slowness`]).
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let limit = CONVERGE * slowness();
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out after {limit:?} waiting until {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Returns early from a test that needs network namespaces when they are unavailable.
#[macro_export]
macro_rules! require_partitions {
    ($cluster:expr) => {
        if !$cluster.nodes.supports_partitions() {
            eprintln!("SKIPPED: partition tests need root and network namespaces");
            return;
        }
    };
}
