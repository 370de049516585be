//! Starting and stopping a node: identity, storage, endpoint, Raft, the protocol
//! router, background duties, the readiness signal and a clean exit on SIGTERM.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use aspen_app::App;
use aspen_core::api::{CLIENT_ALPN, NodeAddr};
use aspen_core::capability::Capability;
use aspen_core::limits::MAX_RAFT_PAYLOAD_ENTRIES;
use aspen_net::{ClusterTicket, EndpointConfig};
use aspen_raft::network::NetworkFactory;
use aspen_raft::server::RaftServer;
use aspen_raft::{RAFT_ALPN, Raft};
use openraft::{Config, SnapshotPolicy};
use tokio::signal::unix::{SignalKind, signal};

use crate::NodeArgs;
use crate::apps::{AppProtocol, AppRegistry};
use crate::batcher::Batcher;
use crate::cluster::NodeCluster;
use crate::forward::Forwarder;
use crate::member::MemberService;
use crate::read_gate::ReadGate;
use crate::service::ClientService;
use crate::state::NodeState;

/// The file a running node writes once it serves requests: a ticket naming itself.
pub const READY_TICKET_FILE: &str = "node.ticket";
/// The ticket a node started with `--init` writes for others to join with (by default).
pub const JOIN_TICKET_FILE: &str = "join.ticket";

fn node_id(args: &NodeArgs, data_dir: &Path) -> anyhow::Result<u64> {
    let path = data_dir.join("node-id");
    let stored = match std::fs::read_to_string(&path) {
        Ok(s) => Some(s.trim().parse::<u64>().with_context(|| format!("{} does not hold a node id", path.display()))?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let id = match (stored, args.node_id) {
        (Some(s), Some(a)) if s != a => {
            bail!("data dir {} belongs to node {s}, but --node-id {a} was given", data_dir.display())
        }
        (Some(s), _) => s,
        (None, Some(a)) => a,
        (None, None) => loop {
            let candidate: u64 = rand_u64();
            if candidate != 0 {
                break candidate;
            }
        },
    };
    if id == 0 {
        bail!("node id 0 is reserved; pick another --node-id");
    }
    if stored.is_none() {
        write_atomic(&path, id.to_string().as_bytes())?;
    }
    Ok(id)
}

fn rand_u64() -> u64 {
    let key = iroh::SecretKey::generate();
    u64::from_le_bytes(key.to_bytes()[..8].try_into().unwrap_or([1; 8])) >> 12
}

fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming {} into place", path.display()))
}

pub(crate) fn raft_config(args: &NodeArgs) -> anyhow::Result<Config> {
    let config = Config {
        cluster_name: "aspen".into(),
        heartbeat_interval: args.heartbeat_ms,
        election_timeout_min: args.election_timeout_ms,
        election_timeout_max: args.election_timeout_ms * 2,
        max_payload_entries: MAX_RAFT_PAYLOAD_ENTRIES,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(args.snapshot_every),
        max_in_snapshot_log_to_keep: args.log_keep,
        install_snapshot_timeout: 60_000,
        enable_pre_vote: Some(true),
        // A restarted leader must win a new election. Restoring leadership without one
        // would let it serve ReadIndex reads at its persisted commit index, which lags the
        // real one (apply is not durable and the commit index is persisted with the next
        // append), so a write acknowledged just before a whole-cluster crash could be
        // missing from reads. Found by `killing_every_node_at_once_loses_no_acknowledged_write`.
        enable_leader_restore: Some(false),
        // Replicate entries as soon as `append` makes them visible, while this node's own
        // fsync runs in the log flusher; the leader counts itself only once flushed.
        broadcast_submitted_on_append: Some(true),
        ..Default::default()
    };
    Ok(config.validate()?)
}

/// A node that serves, until [`RunningNode::shutdown`].
pub struct RunningNode {
    state: Arc<NodeState>,
    cluster: Arc<NodeCluster>,
    apps: Arc<AppRegistry>,
    services: Arc<aspen_app::Services>,
    router: iroh::protocol::Router,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    ready_file: std::path::PathBuf,
    closed: aspen_raft::storage::Closed,
}

/// How long [`RunningNode::shutdown`] waits for the last holder of the storage files.
const STORAGE_RELEASE_LIMIT: Duration = Duration::from_secs(30);
/// How long a stopping node lets the requests in flight finish.
const DRAIN_LIMIT: Duration = Duration::from_secs(2);
/// How long a stopping node waits for its connections' close to be acknowledged.
const CLOSE_LIMIT: Duration = Duration::from_millis(500);

impl RunningNode {
    pub fn node_id(&self) -> u64 {
        self.state.node_id
    }

    /// How clients and peers reach this node.
    pub fn addr(&self) -> NodeAddr {
        self.state.addr.clone()
    }

    /// The KV as this node serves it in-process, with every right: for code embedding a
    /// node (and its tests). Clients use a token instead.
    pub fn kv(&self) -> aspen_kv::SharedKv {
        aspen_app::Cluster::kv_with_rights(&*self.cluster, vec![aspen_core::capability::Capability::All])
    }

    /// The cluster as the node's apps see it.
    pub fn cluster(&self) -> Arc<dyn aspen_app::Cluster> {
        self.cluster.clone()
    }

    /// The in-process handles the node's apps published.
    pub fn services(&self) -> Arc<aspen_app::Services> {
        self.services.clone()
    }

    /// Stops serving: background duties, apps, Raft, protocols, the endpoint. Returns once
    /// the storage files are closed (or after [`STORAGE_RELEASE_LIMIT`], with a warning),
    /// so the same process can start a node on the data dir again.
    pub async fn shutdown(self) {
        let (node_id, closed) = self.stop_serving().await;
        // Per-stream tasks, blocking storage steps, the log flusher and connections still
        // closing may hold the files for a moment; they end now that Raft and the endpoint
        // are closed.
        let started = std::time::Instant::now();
        match tokio::time::timeout(STORAGE_RELEASE_LIMIT, closed.wait()).await {
            Ok(()) => tracing::info!(node_id, released_ms = started.elapsed().as_millis() as u64, "node stopped"),
            Err(_) => tracing::warn!(
                node_id,
                "node stopped, but its storage files are still held after {}s; starting a node on this data dir \
                 in this process will fail until the holder lets go",
                STORAGE_RELEASE_LIMIT.as_secs()
            ),
        }
    }

    /// Everything [`Self::shutdown`] does but wait for the storage files: for a process
    /// that exits next, which closes them.
    async fn stop_serving(self) -> (u64, aspen_raft::storage::Closed) {
        let RunningNode { state, cluster, apps, services, router, tasks, ready_file, closed } = self;
        crate::notify::notify("STOPPING=1");
        let _ = std::fs::remove_file(&ready_file);
        // Requests in flight finish; new ones are sent to another node.
        if !state.drain.stop(DRAIN_LIMIT).await {
            tracing::info!("streams still open after {DRAIN_LIMIT:?} (follows, transfers); stopping under them");
        }
        for task in &tasks {
            task.abort();
        }
        // An aborted task's future is dropped (with what it holds) before its handle resolves.
        for task in tasks {
            let _ = task.await;
        }
        for app in apps.all() {
            app.shutdown().await;
        }
        // Raft first: a node on its way out starts no elections.
        let _ = state.raft.shutdown().await;
        // The router shuts the protocols down and closes the endpoint, which waits for peers
        // to acknowledge; one already gone would hold the stop for the QUIC probe timeout
        // (about 3 s). Past the bound, the close goes on in the background.
        if tokio::time::timeout(CLOSE_LIMIT, router.shutdown()).await.is_err() {
            tracing::debug!("connections still closing after {CLOSE_LIMIT:?}; not waiting for them");
        }
        let node_id = state.node_id;
        drop((state, cluster, apps, services));
        (node_id, closed)
    }
}

/// Runs a node with `apps` until SIGTERM or SIGINT.
pub async fn run(args: NodeArgs, apps: Vec<Arc<dyn App>>) -> anyhow::Result<()> {
    if args.check_config {
        args.check().map_err(|e| anyhow::anyhow!("invalid node settings: {e}"))?;
        crate::apps::check_unique(&apps, &[RAFT_ALPN, CLIENT_ALPN, aspen_app::MEMBER_ALPN])
            .map_err(|e| anyhow::anyhow!("invalid node settings: {e}"))?;
        println!("ok: a node would start with these settings");
        return Ok(());
    }
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let node = start(args, apps).await?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
    // The process exits next, which closes the storage files: no wait for them.
    let (node_id, _) = node.stop_serving().await;
    tracing::info!(node_id, "node stopped");
    Ok(())
}

/// Starts a node serving the core protocols and `apps`; returns once it serves (its ticket
/// written to `node.ticket`, systemd told it is ready).
pub async fn start(args: NodeArgs, apps: Vec<Arc<dyn App>>) -> anyhow::Result<RunningNode> {
    crate::build::record_start();
    let reserved: [&[u8]; 3] = [RAFT_ALPN, CLIENT_ALPN, aspen_app::MEMBER_ALPN];
    crate::apps::check_unique(&apps, &reserved).map_err(|e| anyhow::anyhow!("cannot assemble the node: {e}"))?;
    args.check().map_err(|e| anyhow::anyhow!("invalid node settings: {e}"))?;
    let data_dir = args.data_dir.clone();
    std::fs::create_dir_all(&data_dir).with_context(|| format!("creating data dir {}", data_dir.display()))?;
    let ready_file = data_dir.join(READY_TICKET_FILE);
    let _ = std::fs::remove_file(&ready_file);
    let node_id = node_id(&args, &data_dir)?;
    let secret_key = match &args.secret_key_file {
        Some(path) => aspen_net::identity::read_secret_key(path)?,
        None => aspen_net::identity::load_or_create_secret_key(&data_dir.join("node.key"))?,
    };
    let aspen_raft::Storage { log, state_machine: sm, reader, hub, security, closed } =
        aspen_raft::open_storage(&data_dir)?;
    hub.set_history_limit(args.watch_history);
    let incoming_snapshot = sm.incoming_snapshot_path();

    let endpoint = aspen_net::bind_endpoint(EndpointConfig {
        secret_key,
        bind: args.bind,
        // The router sets the full list (apps' ALPNs included) when it starts.
        alpns: vec![RAFT_ALPN.to_vec(), CLIENT_ALPN.to_vec()],
        relays: args.relays,
    })
    .await?;
    // A fixed bind address is what peers reach; with port 0 the bound socket says which.
    let fixed = !args.bind.ip().is_unspecified() && args.bind.port() != 0;
    let advertise = args.advertise_addr.or(fixed.then_some(args.bind));
    let addr = aspen_net::endpoint::node_addr(&endpoint, advertise);
    tracing::info!(node_id, endpoint = %endpoint.id(), addrs = ?addr.addrs, "node starting");

    let config = Arc::new(raft_config(&args)?);
    let log_bytes = log.clone();
    let raft: Raft = Raft::new(node_id, config, NetworkFactory::new(endpoint.clone()), log, sm).await?;
    // No wait_for_recovery here: it needs a reachable leader. Linearizable reads wait
    // for the apply index through ReadIndex; startup itself re-applies the log up to the
    // persisted commit index.
    let raft_server = RaftServer::new(raft.clone(), incoming_snapshot);
    let state = Arc::new(NodeState {
        raft_refused: raft_server.refused_counter(),
        node_id,
        addr: addr.clone(),
        batcher: Batcher::start(raft.clone()),
        reads: ReadGate::start(raft.clone()),
        forwarder: Forwarder::new(endpoint.clone()),
        raft: raft.clone(),
        reader,
        hub,
        security,
        data_dir: data_dir.clone(),
        apps: apps.iter().map(|a| a.info()).collect(),
        root_token_file: args.root_token_path(),
        drain: crate::drain::Drain::default(),
    });
    let cluster = NodeCluster::new(&state);
    let registry = Arc::new(AppRegistry::default());
    let services = Arc::new(aspen_app::Services::default());
    let secrets = match &args.secrets_key_file {
        Some(path) => Some(Arc::new(aspen_app::SecretBox::from_file(path).map_err(|e| anyhow::anyhow!("{e}"))?)),
        None => None,
    };

    let mut router = iroh::protocol::Router::builder(endpoint.clone())
        .accept(RAFT_ALPN, raft_server)
        .accept(CLIENT_ALPN, ClientService::new(state.clone(), cluster.clone()))
        .accept(aspen_app::MEMBER_ALPN, MemberService::new(state.clone(), registry.clone()));
    let mut handlers = std::collections::HashMap::new();
    for app in &apps {
        let info = app.info();
        let prefix = aspen_app::rights::app_prefix(&info.name).into_bytes();
        let mut own_rights = vec![
            Capability::Read(prefix.clone()),
            Capability::Write(prefix.clone()),
            Capability::Delete(prefix.clone()),
            Capability::Watch(prefix),
        ];
        own_rights.extend(app.kv_rights());
        let context = aspen_app::NodeContext {
            node_id,
            data_dir: data_dir.clone(),
            endpoint: endpoint.clone(),
            kv: aspen_app::Cluster::kv_with_rights(&*cluster, own_rights),
            cluster: cluster.clone(),
            services: services.clone(),
            secrets: secrets.clone(),
        };
        let handler =
            app.start(context).await.map_err(|e| anyhow::anyhow!("app {:?} did not start: {e}", info.name))?;
        for (alpn, protocol) in handler.protocols() {
            router = router.accept(alpn, protocol);
        }
        router = router.accept(
            info.alpn.clone(),
            AppProtocol::new(info.name.clone(), handler.clone(), cluster.clone(), state.drain.clone()),
        );
        tracing::info!(app = %info.name, alpn = %String::from_utf8_lossy(&info.alpn), "app started");
        handlers.insert(info.name, handler);
    }
    registry.set(handlers);
    let router = router.spawn();

    let mut tasks = vec![
        tokio::spawn(snapshot_by_log_bytes(raft.clone(), log_bytes, args.snapshot_every_bytes.max(1))),
        crate::leases::spawn(state.clone()),
    ];
    tasks.extend(crate::root::spawn_if_pending(state.clone()));

    if args.init {
        crate::bootstrap::init_and_write_join_ticket(&state, &args.join_ticket_path()).await?;
    }
    if let Some(ticket_file) = &args.join_ticket_file
        && !state.is_initialized()
    {
        tasks.push(crate::bootstrap::spawn_join(state.clone(), ticket_file.clone(), args.join_as == "voter"));
    }

    let own = ClusterTicket { cluster_id: String::new(), nodes: vec![addr], token: None };
    write_atomic(&ready_file, own.encode().as_bytes())?;
    crate::notify::notify("READY=1");
    tracing::info!(node_id, "node ready");
    Ok(RunningNode { state, cluster, apps: registry, services, router, tasks, ready_file, closed })
}

/// Triggers a snapshot (and so a log purge) whenever `every` bytes of log were appended
/// since the last trigger; openraft's own policy counts only entries.
async fn snapshot_by_log_bytes(raft: Raft, log: aspen_raft::LogStore, every: u64) {
    let mut last = 0u64;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = log.appended_bytes();
        if now - last >= every {
            last = now;
            tracing::info!(log_bytes = now, "log grew past the byte threshold: snapshot");
            if let Err(e) = raft.trigger().snapshot().await {
                tracing::warn!("cannot trigger a snapshot: {e}");
            }
        }
    }
}
