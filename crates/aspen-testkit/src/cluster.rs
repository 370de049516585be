//! [`ProcessCluster`]: real node processes on a [`TestNet`], with fault injection (kill -9,
//! SIGSTOP/SIGCONT, restart on the same data, network partitions).
//!
//! Node contract: `<bin> node --data-dir <DIR> --bind <IP:PORT> --node-id <N> [extra args]`,
//! logging to stderr (appended with stdout to `<DIR>/node.log`), and renaming `<DIR>/node.ticket`
//! into place once it serves requests.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::Context;
use tempfile::TempDir;

use crate::error::TestkitError;
use crate::logs;
use crate::net::{NetMode, TestNet};
use crate::process::{NodeProcess, process_state};
use crate::ready::{self, Readiness};

/// File the node writes when ready.
pub const TICKET_FILE: &str = "node.ticket";
/// File receiving the node's stdout and stderr.
pub const LOG_FILE: &str = "node.log";

/// Identity and extra command-line arguments of one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSpec {
    /// Value of `--node-id`.
    pub node_id: u64,
    /// Arguments appended after the standard ones.
    pub extra_args: Vec<String>,
}

impl NodeSpec {
    /// A node with no extra arguments.
    pub fn new(node_id: u64) -> Self {
        Self { node_id, extra_args: Vec::new() }
    }
}

/// Knobs shared by every node of a cluster.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// `RUST_LOG` for the nodes; defaults to the test's own `RUST_LOG`, else `info`.
    pub rust_log: String,
    /// How long `start` waits for `node.ticket` (default 60 s).
    pub ready_timeout: Duration,
    /// How long `stop` waits after SIGTERM before SIGKILL (default 30 s).
    pub stop_grace: Duration,
    /// Extra environment variables for every node.
    pub env: Vec<(String, String)>,
    /// Namespaces or loopback; defaults to what `ASPEN_TESTKIT_NETNS` says (automatic).
    pub net_mode: NetMode,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            rust_log: std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_owned()),
            ready_timeout: Duration::from_secs(60),
            stop_grace: Duration::from_secs(30),
            env: Vec::new(),
            net_mode: NetMode::from_env(),
        }
    }
}

struct Slot {
    spec: NodeSpec,
    addr: SocketAddr,
    data_dir: PathBuf,
    process: Option<NodeProcess>,
}

/// A set of node processes, their data directories and their network. Dropping it kills every
/// node, deletes the network and the data directories (printing log tails if panicking).
pub struct ProcessCluster {
    // Drop order matters: processes, then network, then directories.
    slots: Vec<Slot>,
    net: TestNet,
    bin: PathBuf,
    options: ClusterOptions,
    dir: TempDir,
}

impl ProcessCluster {
    /// `n` node slots with ids `1..=n`; creates network and data directories, starts nothing.
    pub fn new(bin: impl Into<PathBuf>, n: usize) -> anyhow::Result<Self> {
        let specs = (1..=n as u64).map(NodeSpec::new).collect();
        Self::with_specs(bin, specs, ClusterOptions::default())
    }

    /// One node slot per spec, with the given options; starts nothing.
    pub fn with_specs(bin: impl Into<PathBuf>, specs: Vec<NodeSpec>, options: ClusterOptions) -> anyhow::Result<Self> {
        let dir =
            tempfile::Builder::new().prefix("aspen-testkit-").tempdir().context("cannot create cluster temp dir")?;
        write_secrets_key(&dir.path().join(SECRETS_KEY_FILE))?;
        let net = TestNet::new(options.net_mode, 0)?;
        let mut cluster = Self { slots: Vec::new(), net, bin: bin.into(), options, dir };
        for spec in specs {
            cluster.add_node_with(spec)?;
        }
        Ok(cluster)
    }

    /// Adds a slot (namespace, address, data dir) for node `node_id`; returns its index.
    pub fn add_node(&mut self, node_id: u64) -> anyhow::Result<usize> {
        self.add_node_with(NodeSpec::new(node_id))
    }

    /// Adds a slot for `spec`; returns its index. The node is not started.
    pub fn add_node_with(&mut self, spec: NodeSpec) -> anyhow::Result<usize> {
        let index = self.slots.len();
        let data_dir = self.dir.path().join(format!("node-{index}"));
        fs::create_dir_all(&data_dir).with_context(|| format!("cannot create {}", data_dir.display()))?;
        let addr = self.net.add_node()?;
        self.slots.push(Slot { spec, addr, data_dir, process: None });
        Ok(index)
    }

    /// Replaces node `i`'s extra arguments for its next start.
    pub fn set_extra_args(&mut self, i: usize, args: Vec<String>) -> anyhow::Result<()> {
        self.slot_mut(i)?.spec.extra_args = args;
        Ok(())
    }

    /// Starts every node that is not running and waits until all are ready.
    pub async fn start_all(&mut self) -> anyhow::Result<()> {
        let mut started = Vec::new();
        for i in 0..self.slots.len() {
            if !self.is_running(i) {
                self.spawn(i)?;
                started.push(i);
            }
        }
        for i in started {
            self.await_ready(i).await?;
        }
        Ok(())
    }

    /// Starts node `i` with its data dir, address and arguments and waits until it is ready.
    pub async fn start(&mut self, i: usize) -> anyhow::Result<()> {
        self.spawn(i)?;
        self.await_ready(i).await
    }

    /// Kills node `i` if it runs, then starts it again on the same data dir and address.
    pub async fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        if let Some(process) = self.slot_mut(i)?.process.take() {
            process.kill()?;
        }
        self.start(i).await
    }

    /// `kill -9` node `i` and reap it.
    pub fn kill(&mut self, i: usize) -> anyhow::Result<()> {
        let process = self.slot_mut(i)?.process.take().ok_or(TestkitError::NotRunning { index: i })?;
        process.kill()?;
        Ok(())
    }

    /// Graceful stop: SIGTERM, then SIGKILL after [`ClusterOptions::stop_grace`].
    pub async fn stop(&mut self, i: usize) -> anyhow::Result<()> {
        let grace = self.options.stop_grace;
        let process = self.slot_mut(i)?.process.take().ok_or(TestkitError::NotRunning { index: i })?;
        process.terminate(grace).await?;
        Ok(())
    }

    /// SIGSTOP node `i` and wait until it is stopped: it stays alive but does nothing, like a long
    /// GC pause or a hung VM.
    pub fn pause(&mut self, i: usize) -> anyhow::Result<()> {
        self.running(i)?.pause()
    }

    /// SIGCONT node `i` and wait until it runs again.
    pub fn resume(&mut self, i: usize) -> anyhow::Result<()> {
        self.running(i)?.resume()
    }

    /// Whether node `i`'s process exists and has not exited (paused counts as running).
    pub fn is_running(&self, i: usize) -> bool {
        self.pid(i).and_then(process_state).is_some_and(|s| s != 'Z' && s != 'X')
    }

    /// Process id of node `i`, while the testkit holds its process.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.slots.get(i)?.process.as_ref().map(NodeProcess::pid)
    }

    /// Content of node `i`'s `node.ticket` (whitespace-trimmed).
    pub fn node_ticket(&self, i: usize) -> anyhow::Result<String> {
        let path = self.slot(i)?.data_dir.join(TICKET_FILE);
        let content = fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        Ok(content.trim().to_owned())
    }

    /// Address node `i` binds. Panics if `i` is out of range.
    pub fn addr(&self, i: usize) -> SocketAddr {
        self.slots[i].addr
    }

    /// Node `i`'s data directory. Panics if `i` is out of range.
    pub fn data_dir(&self, i: usize) -> &Path {
        &self.slots[i].data_dir
    }

    /// Node `i`'s `--node-id`. Panics if `i` is out of range.
    pub fn node_id(&self, i: usize) -> u64 {
        self.slots[i].spec.node_id
    }

    /// Number of node slots.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether the cluster has no node slots.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Path of node `i`'s log. Panics if `i` is out of range.
    pub fn log_path(&self, i: usize) -> PathBuf {
        self.slots[i].data_dir.join(LOG_FILE)
    }

    /// Last `n` lines of node `i`'s log (all its runs). Panics if `i` is out of range.
    pub fn log_tail(&self, i: usize, n: usize) -> String {
        logs::tail(&self.log_path(i), n)
    }

    /// The network, for everything not mirrored here.
    pub fn net(&self) -> &TestNet {
        &self.net
    }

    /// See [`TestNet::supports_partitions`].
    pub fn supports_partitions(&self) -> bool {
        self.net.supports_partitions()
    }

    /// See [`TestNet::client_ip`].
    pub fn client_ip(&self) -> Option<Ipv4Addr> {
        self.net.client_ip()
    }

    /// See [`TestNet::partition`].
    pub fn partition(&self, groups: &[&[usize]]) -> anyhow::Result<()> {
        self.net.partition(groups)
    }

    /// See [`TestNet::isolate`].
    pub fn isolate(&self, i: usize) -> anyhow::Result<()> {
        self.net.isolate(i)
    }

    /// See [`TestNet::cut_link`].
    pub fn cut_link(&self, a: usize, b: usize) -> anyhow::Result<()> {
        self.net.cut_link(a, b)
    }

    /// See [`TestNet::isolate_from_clients`].
    pub fn isolate_from_clients(&self, i: usize) -> anyhow::Result<()> {
        self.net.isolate_from_clients(i)
    }

    /// See [`TestNet::heal`].
    pub fn heal(&self) -> anyhow::Result<()> {
        self.net.heal()
    }

    /// See [`TestNet::udp_socket_in`].
    pub fn udp_socket_in_ns(&self, i: usize) -> anyhow::Result<UdpSocket> {
        self.net.udp_socket_in(i)
    }

    /// A command that runs `program` inside node `i`'s namespace; spawn it while the cluster
    /// lives. In loopback mode it is a plain command.
    pub fn command_in_ns(&self, i: usize, program: impl AsRef<std::ffi::OsStr>) -> anyhow::Result<Command> {
        let mut cmd = Command::new(program);
        self.net.enter_in_child(i, &mut cmd)?;
        Ok(cmd)
    }

    fn slot(&self, i: usize) -> Result<&Slot, TestkitError> {
        let len = self.slots.len();
        self.slots.get(i).ok_or(TestkitError::NoSuchNode { index: i, len })
    }

    fn slot_mut(&mut self, i: usize) -> Result<&mut Slot, TestkitError> {
        let len = self.slots.len();
        self.slots.get_mut(i).ok_or(TestkitError::NoSuchNode { index: i, len })
    }

    fn running(&self, i: usize) -> anyhow::Result<&NodeProcess> {
        let process = self.slot(i)?.process.as_ref().ok_or(TestkitError::NotRunning { index: i })?;
        Ok(process)
    }

    /// The cluster's secrets key, which every node is started with (`ASPEN_SECRETS_KEY_FILE`,
    /// unless the options' environment names another).
    pub fn secrets_key_file(&self) -> PathBuf {
        self.dir.path().join(SECRETS_KEY_FILE)
    }

    /// Launches node `i` without waiting for readiness.
    fn spawn(&mut self, i: usize) -> anyhow::Result<()> {
        let slot = self.slot_mut(i)?;
        if let Some(process) = &mut slot.process {
            match process.try_exit()? {
                None => {
                    return Err(TestkitError::AlreadyRunning { index: i, pid: process.pid() }.into());
                }
                Some(_) => slot.process = None,
            }
        }
        let ticket = slot.data_dir.join(TICKET_FILE);
        if let Err(e) = fs::remove_file(&ticket)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            return Err(e).with_context(|| format!("cannot remove stale {}", ticket.display()));
        }
        let cmd = self.command(i)?;
        let process = NodeProcess::spawn(cmd).with_context(|| format!("cannot start node {i}"))?;
        tracing::debug!(index = i, pid = process.pid(), "started node");
        self.slot_mut(i)?.process = Some(process);
        Ok(())
    }

    async fn await_ready(&mut self, i: usize) -> anyhow::Result<()> {
        let timeout = self.options.ready_timeout;
        let slot = self.slot_mut(i)?;
        let ticket = slot.data_dir.join(TICKET_FILE);
        let log = slot.data_dir.join(LOG_FILE);
        let process = slot.process.as_mut().ok_or(TestkitError::NotRunning { index: i })?;
        match ready::wait_for_ticket(i, process, &ticket, &log, timeout).await? {
            Readiness::Ready => Ok(()),
            Readiness::Exited(err) => {
                slot.process = None;
                Err(err.into())
            }
        }
    }

    fn command(&self, i: usize) -> anyhow::Result<Command> {
        let slot = self.slot(i)?;
        let log_path = slot.data_dir.join(LOG_FILE);
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("cannot open {}", log_path.display()))?;
        let mut cmd = Command::new(&self.bin);
        cmd.arg("node")
            .arg("--data-dir")
            .arg(&slot.data_dir)
            .arg("--bind")
            .arg(slot.addr.to_string())
            .arg("--node-id")
            .arg(slot.spec.node_id.to_string())
            .args(&slot.spec.extra_args)
            .env("RUST_LOG", &self.options.rust_log)
            .env("ASPEN_SECRETS_KEY_FILE", self.secrets_key_file())
            .envs(self.options.env.iter().map(|(k, v)| (k, v)));
        writeln!(log, "===== aspen-testkit: starting node {i}: {cmd:?}")
            .with_context(|| format!("cannot write {}", log_path.display()))?;
        let stderr = log.try_clone().context("cannot duplicate log file handle")?;
        cmd.stdin(Stdio::null()).stdout(log).stderr(stderr);
        self.net.enter_in_child(i, &mut cmd)?;
        Ok(cmd)
    }
}

impl Drop for ProcessCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for i in 0..self.slots.len() {
                let tail = self.log_tail(i, ready::LOG_LINES_ON_FAILURE);
                eprintln!("----- aspen-testkit: node {i} ({}) log tail -----\n{tail}", self.addr(i));
            }
        }
        for (i, slot) in self.slots.iter_mut().enumerate() {
            if let Some(process) = slot.process.take()
                && let Err(e) = process.kill()
            {
                eprintln!("aspen-testkit: cannot kill node {i}: {e:#}");
            }
        }
    }
}

/// The file in a cluster's directory holding its secrets key.
const SECRETS_KEY_FILE: &str = "secrets.key";

/// Writes 32 random bytes to `path` (mode 0600): a cluster's secrets key.
pub fn write_secrets_key(path: &Path) -> anyhow::Result<()> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let mut key = [0u8; 32];
    fs::File::open("/dev/urandom").and_then(|mut r| r.read_exact(&mut key)).context("cannot read /dev/urandom")?;
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(&key).with_context(|| format!("cannot write {}", path.display()))
}
