//! The node's settings: every one a flag with an environment-variable twin.

use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, Clone, clap::Args)]
pub struct NodeArgs {
    /// Directory holding the node's key, database, snapshots and ticket.
    #[arg(long, env = "ASPEN_DATA_DIR")]
    pub data_dir: PathBuf,
    /// UDP socket the node's iroh endpoint binds.
    #[arg(long, env = "ASPEN_BIND", default_value = "127.0.0.1:7700")]
    pub bind: SocketAddr,
    /// Address peers and clients use to reach this node (default: the bound address).
    #[arg(long, env = "ASPEN_ADVERTISE_ADDR")]
    pub advertise_addr: Option<SocketAddr>,
    /// Raft node id; chosen at random and persisted on first start when absent.
    #[arg(long, env = "ASPEN_NODE_ID")]
    pub node_id: Option<u64>,
    /// Use iroh's public relays (needs internet access).
    #[arg(long, env = "ASPEN_RELAYS", default_value_t = false)]
    pub relays: bool,
    /// The node's iroh secret key: a file of 32 raw bytes (a systemd credential, say), read
    /// at start. Without it the key is `node.key` in the data dir, made on first start.
    #[arg(long, env = "ASPEN_SECRET_KEY_FILE", value_name = "FILE")]
    pub secret_key_file: Option<PathBuf>,
    /// The cluster's secrets key: a file of 32 raw bytes or 64 hex digits, the same on every
    /// node, with which apps seal the secrets they keep in the KV (the cache's signing keys).
    /// Without it, apps that keep secrets refuse to on this node.
    #[arg(long, env = "ASPEN_SECRETS_KEY_FILE", value_name = "FILE")]
    pub secrets_key_file: Option<PathBuf>,
    /// On first start, make a new cluster with this node as its first voter: the root token
    /// goes to --root-token-file, and a ticket other nodes join with to --join-ticket-out.
    #[arg(long, env = "ASPEN_INIT", default_value_t = false, conflicts_with = "join_ticket_file")]
    pub init: bool,
    /// Where initializing a cluster writes its root token (mode 0600) [default: root.token
    /// in the data dir].
    #[arg(long, env = "ASPEN_ROOT_TOKEN_FILE", value_name = "FILE")]
    pub root_token_file: Option<PathBuf>,
    /// Where a node started with --init writes, at each start, the ticket other nodes join
    /// with (mode 0600; it carries a token that may change the membership and nothing else)
    /// [default: join.ticket in the data dir].
    #[arg(long, env = "ASPEN_JOIN_TICKET_OUT", value_name = "FILE")]
    pub join_ticket_out: Option<PathBuf>,
    /// On first start, join the cluster named in this ticket file. The node serves at once
    /// and keeps trying, waiting for the file to appear, until it is a member.
    #[arg(long, env = "ASPEN_JOIN_TICKET_FILE")]
    pub join_ticket_file: Option<PathBuf>,
    /// When joining: stay a learner or become a voter once caught up.
    #[arg(long, env = "ASPEN_JOIN_AS", default_value = "voter", value_parser = ["learner", "voter"])]
    pub join_as: String,
    /// Raft heartbeat interval, in milliseconds.
    #[arg(long, env = "ASPEN_HEARTBEAT_MS", default_value_t = 100)]
    pub heartbeat_ms: u64,
    /// Raft election timeout lower bound, in milliseconds (upper bound is twice it).
    #[arg(long, env = "ASPEN_ELECTION_TIMEOUT_MS", default_value_t = 600)]
    pub election_timeout_ms: u64,
    /// Log entries between automatic snapshots.
    #[arg(long, env = "ASPEN_SNAPSHOT_EVERY", default_value_t = aspen_core::limits::SNAPSHOT_EVERY_ENTRIES)]
    pub snapshot_every: u64,
    /// Log bytes appended between automatic snapshots (a snapshot comes at whichever of
    /// this and `--snapshot-every` is reached first).
    #[arg(long, env = "ASPEN_SNAPSHOT_EVERY_BYTES", default_value_t = aspen_core::limits::SNAPSHOT_EVERY_LOG_BYTES)]
    pub snapshot_every_bytes: u64,
    /// Async worker threads. 1 (the default) runs the node on a single-threaded runtime:
    /// Raft's core and the storage writes are serial anyway, and on a small machine, or
    /// with several nodes on one machine, handing work between threads costs more than
    /// it gains (measured in docs/benchmarks.md). More threads help a node that serves
    /// many reads on a machine of its own.
    #[arg(long, env = "ASPEN_WORKER_THREADS", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub worker_threads: u16,
    /// Watch events kept in memory for watchers that resume from an older revision; a
    /// watch from before them gets a `compacted` error. History starts afresh at each
    /// restart (with the entries the restart replays).
    #[arg(long, env = "ASPEN_WATCH_HISTORY", default_value_t = aspen_core::limits::WATCH_HISTORY_EVENTS, value_parser = parse_positive)]
    pub watch_history: usize,
    /// Check these settings and exit (0, printing `ok`) without starting a node; a wrong or
    /// contradicting setting exits 1 with the reason. Files are not read.
    #[arg(long, default_value_t = false)]
    pub check_config: bool,
    /// Log entries kept after a snapshot.
    #[arg(long, env = "ASPEN_LOG_KEEP", default_value_t = aspen_core::limits::LOG_KEPT_AFTER_SNAPSHOT)]
    pub log_keep: u64,
}

impl NodeArgs {
    /// The root token file: `--root-token-file`, or `root.token` in the data dir.
    pub fn root_token_path(&self) -> PathBuf {
        self.root_token_file.clone().unwrap_or_else(|| self.data_dir.join(crate::ROOT_TOKEN_FILE))
    }

    /// The join ticket an initializing node writes: `--join-ticket-out`, or `join.ticket` in
    /// the data dir.
    pub fn join_ticket_path(&self) -> PathBuf {
        self.join_ticket_out.clone().unwrap_or_else(|| self.data_dir.join(crate::JOIN_TICKET_FILE))
    }

    /// Checks the settings as a start would, without starting: contradictions, and the Raft
    /// timing openraft accepts. Files are not read (they may only exist at run time).
    pub fn check(&self) -> Result<(), String> {
        if self.init && self.join_ticket_file.is_some() {
            return Err("--init makes a new cluster and --join-ticket-file joins an existing one: pass one".into());
        }
        if !self.init && self.join_ticket_out.is_some() {
            return Err("--join-ticket-out is written only by a node started with --init".into());
        }
        if self.node_id == Some(0) {
            return Err("node id 0 is reserved; pick another --node-id".into());
        }
        if self.heartbeat_ms == 0 {
            return Err("--heartbeat-ms must be at least 1".into());
        }
        crate::node::raft_config(self).map(drop).map_err(|e| format!("raft settings: {e}"))
    }

    /// The async runtime this node runs on: current-thread for one worker, else multi-threaded.
    pub fn runtime(&self) -> std::io::Result<tokio::runtime::Runtime> {
        let mut builder = if self.worker_threads <= 1 {
            tokio::runtime::Builder::new_current_thread()
        } else {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(usize::from(self.worker_threads));
            b
        };
        builder.enable_all().build()
    }
}

fn parse_positive(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}
