//! Starting an initialized cluster for a test, and waiting on it with bounded patience.

use std::future::Future;
use std::time::Duration;

use aspen_client::{Client, ClientConfig};
use aspen_core::api::{NodeAddr, ReadConsistency};
use aspen_net::ClusterTicket;
use aspen_net::token::Token;
use aspen_testkit::{ClusterOptions, NodeSpec, ProcessCluster};

/// Generous bound for anything a healthy or healing cluster must reach.
pub const CONVERGE: Duration = Duration::from_secs(60);

pub struct TestCluster {
    pub nodes: ProcessCluster,
    /// The root token `init` wrote: every test client presents it.
    pub token: Token,
}

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_aspen")
}

/// Fast elections keep fault tests short; the bounds in tests stay generous anyway.
pub fn fast_raft_args() -> Vec<String> {
    ["--heartbeat-ms", "50", "--election-timeout-ms", "400"].iter().map(|s| s.to_string()).collect()
}

impl TestCluster {
    /// Starts `n` nodes and initializes them as one cluster.
    pub async fn start(n: usize) -> TestCluster {
        Self::start_with(n, Vec::new()).await
    }

    pub async fn start_with(n: usize, extra: Vec<String>) -> TestCluster {
        let specs = (1..=n as u64)
            .map(|id| {
                let mut s = NodeSpec::new(id);
                s.extra_args = fast_raft_args().into_iter().chain(extra.iter().cloned()).collect();
                s
            })
            .collect();
        let mut nodes = ProcessCluster::with_specs(bin(), specs, ClusterOptions::default()).expect("create cluster");
        nodes.start_all().await.expect("start nodes");
        let first_addr =
            ClusterTicket::decode(&nodes.node_ticket(0).expect("node ticket")).expect("ticket").nodes.remove(0);
        let first = Client::for_node(first_addr, ClientConfig::default()).await.expect("client for node 0");
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
        self.for_node(self.node_addr(i), ClientConfig::default()).await
    }

    /// A client over every node, with failover.
    pub async fn client(&self) -> Client {
        let nodes = (0..self.nodes.len()).filter(|i| self.nodes.is_running(*i)).map(|i| self.node_addr(i)).collect();
        self.over(nodes, ClientConfig::default()).await
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
                if let Ok(s) = c.status().await
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

    /// The nemesis of the coordination tests: kill -9 the leader, and bring it back half a
    /// second later.
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

/// Polls `check` every 100 ms until it yields a value; panics after [`CONVERGE`].
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + CONVERGE;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out after {CONVERGE:?} waiting until {what}");
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
