//! A cluster of node processes on this machine, as `aspen cluster up` and
//! `aspen bench kv --start-cluster` run it.
//!
//! Node `i` (from 1) runs as `<this executable> node --data-dir <dir>/n<i> --bind
//! 127.0.0.1:<port> --node-id <i>`, logging to `<dir>/n<i>/node.log`, and announces that it
//! serves by writing `<dir>/n<i>/node.ticket`. A fresh cluster is initialized through node
//! 1 with the others as voters; a restarted one (same data dirs) just comes back up.
//!
//! A node may run another executable than the one that started the cluster: a rolling
//! upgrade restarts it on a new one ([`LocalCluster::restart_node`]), and `<dir>/n<i>/exe`
//! records it once the node serves on it, so the next `cluster up` starts it on it again.

use std::io::{Read, Seek, SeekFrom};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};
use aspen_client::{AspenError, Client, ClientConfig, ClientError, ClusterTicket, NodeAddr};
use aspen_net::token::Token;
use indicatif::ProgressBar;
use tokio::process::{Child, Command};
use tokio::time::Instant;

use aspen_client::discovery::read_ticket_file;

/// Longest wait for a node to write its ticket, and for the cluster to elect a leader.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long stopping waits after SIGTERM before it sends SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(10);
/// File each node writes once it serves requests.
pub const NODE_TICKET_FILE: &str = "node.ticket";
/// File receiving each node's output.
pub const NODE_LOG_FILE: &str = "node.log";
/// File the cluster's ticket is written to, in the cluster's directory.
pub const CLUSTER_TICKET_FILE: &str = "cluster.ticket";
/// Most nodes a local cluster may have.
pub const MAX_LOCAL_NODES: u32 = 64;
/// File naming the executable a node last served on after a restart through the control
/// socket; a node without one runs the executable that runs `cluster up`.
pub const NODE_EXE_FILE: &str = "exe";
/// Log lines quoted when a node fails to start.
const LOG_TAIL_LINES: usize = 20;
/// How often readiness is polled.
const POLL: Duration = Duration::from_millis(50);

/// What to start.
#[derive(Debug, Clone)]
pub struct LocalClusterSpec {
    /// Holds `n<i>/` per node and `cluster.ticket`.
    pub dir: PathBuf,
    /// UDP port of each node, node 1 first.
    pub ports: Vec<u16>,
    /// The `aspen` executable to run nodes with.
    pub exe: PathBuf,
}

/// One running node process.
#[derive(Debug)]
struct LocalNode {
    id: u64,
    port: u16,
    exe: PathBuf,
    dir: PathBuf,
    child: Child,
    exited: Option<ExitStatus>,
    /// Where this process's lines begin in the log.
    log_start: u64,
}

/// What the supervisor says of one node.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NodeView {
    pub id: u64,
    pub port: u16,
    pub exe: PathBuf,
    pub pid: Option<u32>,
    pub running: bool,
    pub log: PathBuf,
}

/// The running node processes.
#[derive(Debug)]
pub struct LocalCluster {
    dir: PathBuf,
    nodes: Vec<LocalNode>,
}

impl LocalClusterSpec {
    /// `count` nodes on consecutive ports from `base_port`.
    pub fn consecutive(dir: PathBuf, count: u32, base_port: u16, exe: PathBuf) -> anyhow::Result<Self> {
        if count == 0 || count > MAX_LOCAL_NODES {
            bail!("--nodes must be between 1 and {MAX_LOCAL_NODES}");
        }
        let ports = (0..count)
            .map(|i| u16::try_from(u32::from(base_port) + i).ok().filter(|p| *p != 0))
            .collect::<Option<Vec<u16>>>()
            .with_context(|| format!("ports {base_port}.. run past 65535; pick a lower --base-port"))?;
        Ok(LocalClusterSpec { dir, ports, exe })
    }
}

impl LocalCluster {
    /// Starts every node and waits until each serves (or one fails).
    pub async fn start(spec: &LocalClusterSpec, progress: &ProgressBar) -> anyhow::Result<LocalCluster> {
        std::fs::create_dir_all(&spec.dir).with_context(|| format!("cannot create {}", spec.dir.display()))?;
        let dir = std::path::absolute(&spec.dir).with_context(|| format!("bad directory {}", spec.dir.display()))?;
        let mut cluster = LocalCluster { dir: dir.clone(), nodes: Vec::new() };
        for (i, port) in spec.ports.iter().enumerate() {
            let id = i as u64 + 1;
            progress.set_message(format!("starting node {id} on 127.0.0.1:{port}"));
            let exe = recorded_exe(&dir, id).unwrap_or_else(|| spec.exe.clone());
            match spawn_node(&exe, &dir, id, *port) {
                Ok(node) => cluster.nodes.push(node),
                Err(e) => {
                    cluster.stop().await;
                    return Err(e);
                }
            }
        }
        progress.set_message(format!("waiting for {} nodes to serve", cluster.nodes.len()));
        if let Err(e) = cluster.wait_ready().await {
            cluster.stop().await;
            return Err(e);
        }
        Ok(cluster)
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        self.wait_ready_of(|_| true).await
    }

    /// Waits until every node `which` selects serves, or one exits, or [`READY_TIMEOUT`].
    async fn wait_ready_of(&mut self, which: impl Fn(u64) -> bool) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let mut waiting = Vec::new();
            for node in self.nodes.iter_mut().filter(|n| which(n.id)) {
                if node.dir.join(NODE_TICKET_FILE).is_file() {
                    continue;
                }
                if let Some(status) = node.child.try_wait().context("cannot check a node process")? {
                    node.exited = Some(status);
                    bail!(
                        "node {} exited ({status}) before it served; last lines of {}:\n{}",
                        node.id,
                        node.log().display(),
                        log_tail_from(&node.log(), node.log_start)
                    );
                }
                waiting.push(node);
            }
            let Some(first) = waiting.first() else {
                return Ok(());
            };
            if Instant::now() >= deadline {
                bail!(
                    "node {} did not serve within {READY_TIMEOUT:?}; last lines of {}:\n{}",
                    first.id,
                    first.log().display(),
                    log_tail_from(&first.log(), first.log_start)
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The node ids and addresses, from each node's ticket.
    fn members(&self) -> anyhow::Result<Vec<(u64, NodeAddr)>> {
        self.nodes
            .iter()
            .map(|node| {
                let path = node.dir.join(NODE_TICKET_FILE);
                let text = read_ticket_file(&path).with_context(|| format!("cannot read {}", path.display()))?;
                let ticket =
                    ClusterTicket::decode(&text).with_context(|| format!("bad ticket in {}", path.display()))?;
                let addr = ticket.nodes.into_iter().next().context("node ticket names no node")?;
                Ok((node.id, addr))
            })
            .collect()
    }

    /// Initializes the cluster through node 1 unless it already is, waits for a leader,
    /// writes `cluster.ticket` and returns the ticket.
    pub async fn bootstrap(&self, progress: &ProgressBar) -> anyhow::Result<String> {
        let members = self.members()?;
        let Some(((_, first_addr), others)) = members.split_first() else {
            bail!("the cluster has no node");
        };
        let config = ClientConfig::default();
        let first = Client::for_node(first_addr.clone(), config).await.context("cannot reach node 1")?;
        let result = self.bootstrap_through(&first, others, progress).await;
        first.close().await;
        result
    }

    async fn bootstrap_through(
        &self,
        first: &Client,
        others: &[(u64, NodeAddr)],
        progress: &ProgressBar,
    ) -> anyhow::Result<String> {
        if !first.node_info().await?.initialized {
            progress.set_message("initializing the cluster");
            match first.init(others.to_vec()).await {
                Ok(_) | Err(ClientError::Aspen(AspenError::AlreadyInitialized)) => {}
                Err(e) => return Err(e).context("cannot initialize the cluster"),
            }
        }
        // Node 1 initialized the cluster and holds its root token; the local ticket
        // carries it, so commands run here need no --token.
        let token_path = self.dir.join("n1").join(aspen_node::ROOT_TOKEN_FILE);
        let text = std::fs::read_to_string(&token_path)
            .with_context(|| format!("cannot read the root token {}", token_path.display()))?;
        let token = Token::decode(&text).with_context(|| format!("bad root token in {}", token_path.display()))?;
        let first =
            &Client::for_node_with_token(first.nodes()[0].clone(), ClientConfig::default(), Some(token.clone()))
                .await
                .context("cannot reach node 1 with the root token")?;
        progress.set_message("waiting for a leader");
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            match first.status().await {
                Ok(status) if status.leader.is_some() => break,
                Ok(_) => {}
                Err(e) if Instant::now() >= deadline => return Err(e).context("no leader elected"),
                Err(e) => tracing::debug!(%e, "status while waiting for a leader"),
            }
            if Instant::now() >= deadline {
                bail!("no leader elected within {READY_TIMEOUT:?}; see the node.log files in {}", self.dir.display());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let ticket = first.ticket().await.context("cannot get the cluster ticket")?;
        let mut ticket = ClusterTicket::decode(&ticket).context("the node sent a bad ticket")?;
        ticket.token = Some(token.to_bytes());
        let ticket = ticket.encode();
        let path = self.dir.join(CLUSTER_TICKET_FILE);
        aspen_net::identity::write_secret_file(&path, ticket.as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))?;
        first.close().await;
        Ok(ticket)
    }

    /// The file holding the cluster ticket once bootstrapped.
    /// The process ids of the running nodes.
    pub fn pids(&self) -> Vec<u32> {
        self.nodes.iter().filter_map(|n| n.child.id()).collect()
    }

    pub fn ticket_path(&self) -> PathBuf {
        self.dir.join(CLUSTER_TICKET_FILE)
    }

    /// Reports nodes that exited since the last call: `(id, status, log path)`.
    pub fn newly_exited(&mut self) -> Vec<(u64, ExitStatus, PathBuf)> {
        let mut out = Vec::new();
        for node in &mut self.nodes {
            if node.exited.is_some() {
                continue;
            }
            if let Ok(Some(status)) = node.child.try_wait() {
                node.exited = Some(status);
                out.push((node.id, status, node.log()));
            }
        }
        out
    }

    /// What each node runs, for the control socket.
    pub fn views(&self) -> Vec<NodeView> {
        self.nodes
            .iter()
            .map(|n| NodeView {
                id: n.id,
                port: n.port,
                exe: n.exe.clone(),
                pid: n.child.id(),
                running: n.exited.is_none(),
                log: n.log(),
            })
            .collect()
    }

    /// Stops node `id` and starts it again on `exe`, with the same data, address and
    /// flags; returns once it serves. Once it does, `exe` is recorded for later starts.
    /// When it fails to serve, the node is left stopped and the error quotes its log.
    pub async fn restart_node(&mut self, id: u64, exe: &Path) -> anyhow::Result<()> {
        let Some(index) = self.nodes.iter().position(|n| n.id == id) else {
            bail!("this cluster has no node {id}");
        };
        let exe = std::path::absolute(exe).with_context(|| format!("bad executable path {}", exe.display()))?;
        if !exe.is_file() {
            bail!("{} is not a file", exe.display());
        }
        self.nodes[index].stop().await;
        // Failures quote only what the new process wrote.
        let log_start = std::fs::metadata(self.nodes[index].log()).map_or(0, |m| m.len());
        let mut node = spawn_node(&exe, &self.dir, id, self.nodes[index].port)?;
        node.log_start = log_start;
        self.nodes[index] = node;
        self.wait_ready_of(|n| n == id).await?;
        let record = self.dir.join(format!("n{id}")).join(NODE_EXE_FILE);
        write_atomically(&record, exe.as_os_str().as_encoded_bytes())
            .with_context(|| format!("cannot write {}", record.display()))?;
        Ok(())
    }

    /// True when no node process is left running.
    pub fn all_exited(&self) -> bool {
        self.nodes.iter().all(|n| n.exited.is_some())
    }

    /// SIGTERM to every node, then SIGKILL to those still running after [`STOP_GRACE`].
    pub async fn stop(&mut self) {
        for node in &self.nodes {
            if node.exited.is_none() {
                node.signal(libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + STOP_GRACE;
        for node in &mut self.nodes {
            if node.exited.is_some() {
                continue;
            }
            match tokio::time::timeout_at(deadline, node.child.wait()).await {
                Ok(Ok(status)) => node.exited = Some(status),
                Ok(Err(e)) => tracing::warn!(node = node.id, %e, "cannot wait for node"),
                Err(_) => {
                    eprintln!("node {} did not stop within {STOP_GRACE:?}; killing it", node.id);
                    node.signal(libc::SIGKILL);
                    if let Ok(status) = node.child.wait().await {
                        node.exited = Some(status);
                    }
                }
            }
        }
    }
}

impl LocalNode {
    fn log(&self) -> PathBuf {
        self.dir.join(NODE_LOG_FILE)
    }

    /// SIGTERM, then SIGKILL after [`STOP_GRACE`].
    async fn stop(&mut self) {
        if self.exited.is_some() {
            return;
        }
        self.signal(libc::SIGTERM);
        match tokio::time::timeout(STOP_GRACE, self.child.wait()).await {
            Ok(Ok(status)) => self.exited = Some(status),
            Ok(Err(e)) => tracing::warn!(node = self.id, %e, "cannot wait for node"),
            Err(_) => {
                eprintln!("node {} did not stop within {STOP_GRACE:?}; killing it", self.id);
                self.signal(libc::SIGKILL);
                if let Ok(status) = self.child.wait().await {
                    self.exited = Some(status);
                }
            }
        }
    }

    /// Signals the node's process group (it leads its own group).
    fn signal(&self, signal: libc::c_int) {
        let Some(pid) = self.child.id().and_then(|p| libc::pid_t::try_from(p).ok()) else {
            return;
        };
        // SAFETY: plain kill(2) on the process group of a child we spawned and have not reaped.
        unsafe {
            libc::kill(-pid, signal);
        }
    }
}

/// The local cluster's secrets key, shared by its nodes: `<cluster dir>/secrets.key`, made
/// (mode 0600) the first time.
fn secrets_key_file(cluster_dir: &Path) -> anyhow::Result<PathBuf> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = cluster_dir.join("secrets.key");
    match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path) {
        Ok(mut file) => file
            .write_all(aspen_app::SecretBox::generate_text().as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e).with_context(|| format!("cannot create {}", path.display())),
    }
    Ok(path)
}

fn spawn_node(exe: &Path, cluster_dir: &Path, id: u64, port: u16) -> anyhow::Result<LocalNode> {
    let dir = cluster_dir.join(format!("n{id}"));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    // A ticket left by an earlier run would make the node look ready before it is.
    match std::fs::remove_file(dir.join(NODE_TICKET_FILE)) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot remove the stale ticket in {}", dir.display())),
    }
    let log_path = dir.join(NODE_LOG_FILE);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("cannot open {}", log_path.display()))?;
    let log_for_stdout = log.try_clone().with_context(|| format!("cannot open {}", log_path.display()))?;
    let bind = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut cmd = Command::new(exe);
    cmd.arg("node")
        .arg("--data-dir")
        .arg(&dir)
        .arg("--bind")
        .arg(bind.to_string())
        .arg("--node-id")
        .arg(id.to_string())
        // The cache's HTTP gateway, on the same port number over TCP.
        .arg("--cache-http-listen")
        .arg(bind.to_string())
        .env("ASPEN_SECRETS_KEY_FILE", secrets_key_file(cluster_dir)?)
        .env_remove("ASPEN_JOIN_TICKET_FILE")
        .env_remove("ASPEN_ADVERTISE_ADDR")
        .stdin(Stdio::null())
        .stdout(log_for_stdout)
        .stderr(log)
        .kill_on_drop(true)
        // Its own process group, so a Ctrl-C at the terminal reaches only us and we stop
        // the nodes in order.
        .process_group(0);
    // SAFETY: the hook only makes the async-signal-safe prctl(2) call. It asks the kernel
    // to SIGTERM the node if this process dies without stopping it.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().with_context(|| format!("cannot start {} node", exe.display()))?;
    Ok(LocalNode { id, port, exe: exe.to_path_buf(), dir, child, exited: None, log_start: 0 })
}

/// The executable `n<id>/exe` names, if that file exists and names an existing file.
fn recorded_exe(cluster_dir: &Path, id: u64) -> Option<PathBuf> {
    let path = cluster_dir.join(format!("n{id}")).join(NODE_EXE_FILE);
    let text = std::fs::read_to_string(&path).ok()?;
    let exe = PathBuf::from(text.trim());
    if exe.is_file() {
        Some(exe)
    } else {
        eprintln!("warning: {} names {}, which is gone; using this executable", path.display(), exe.display());
        None
    }
}

/// The last lines of a log file written after byte `start`, reading at most 64 KiB.
fn log_tail_from(path: &Path, start: u64) -> String {
    const MAX_BYTES: u64 = 64 * 1024;
    let read = || -> std::io::Result<String> {
        let mut f = std::fs::File::open(path)?;
        let len = f.metadata()?.len();
        f.seek(SeekFrom::Start(len.saturating_sub(MAX_BYTES).max(start.min(len))))?;
        let mut buf = Vec::new();
        f.read_to_end(&mut buf)?;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let lines: Vec<&str> = text.lines().collect();
        Ok(lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n"))
    };
    read().unwrap_or_else(|e| format!("(cannot read {}: {e})", path.display()))
}

/// Writes `bytes` to `path` through a temporary file and a rename.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// `count` ports on 127.0.0.1 that were free a moment ago over both UDP (a node's endpoint)
/// and TCP (its cache gateway).
pub fn free_ports(count: usize) -> anyhow::Result<Vec<u16>> {
    let mut held = Vec::new();
    for _ in 0..count * 20 {
        if held.len() == count {
            break;
        }
        let udp = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).context("cannot find free ports")?;
        let port = udp.local_addr()?.port();
        if let Ok(tcp) = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port)) {
            held.push((udp, tcp, port));
        }
    }
    if held.len() < count {
        bail!("cannot find {count} ports free over both UDP and TCP");
    }
    Ok(held.into_iter().map(|(_, _, port)| port).collect())
}

/// A port on 127.0.0.1 from which `count` consecutive ports were free over UDP and TCP a
/// moment ago, for `cluster up --base-port`.
pub fn free_base_port(count: u16) -> anyhow::Result<u16> {
    Ok(aspen_net::ports::free_base_port(count)?)
}
