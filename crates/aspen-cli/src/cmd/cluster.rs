//! `aspen cluster`: run a local cluster, and inspect or change a cluster's membership.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use aspen_client::{Client, ClusterStatus, ClusterTicket, NodeAddr};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};
use tokio::signal::unix::{SignalKind, signal};

use crate::context::Ctx;
use crate::local_cluster::{LocalCluster, LocalClusterSpec};
use crate::output::{self, endpoint_hex};
use aspen_client::discovery::read_ticket_file;

#[derive(Debug, clap::Subcommand)]
pub enum ClusterCommand {
    /// Run a cluster of local node processes until Ctrl-C or SIGTERM, then stop them.
    ///
    /// Starts `<this executable> node` for each node with its data in DATA_DIR/n<i>, on
    /// 127.0.0.1:BASE_PORT+i-1, initializes the cluster on first start, writes its ticket to
    /// DATA_DIR/cluster.ticket and prints it. Run it again on the same DATA_DIR to restart
    /// the same cluster.
    Up(UpArgs),
    /// Show the contacted node's view of the cluster.
    Status,
    /// Initialize a new cluster on the node the ticket names first, with --member nodes as
    /// the other voters (none: a single-node cluster).
    Init {
        /// Another voter: ID=TICKET, ID=PATH_TO_NODE_TICKET, or ID=ENDPOINT_ID@IP:PORT.
        #[arg(long = "member", value_name = "ID=NODE")]
        members: Vec<String>,
    },
    /// Add a node as a learner (it replicates but does not vote); NODE_TICKET is the
    /// content of, or path to, the node's node.ticket.
    AddLearner { id: u64, node_ticket: String },
    /// Make a learner a voter.
    Promote { id: u64 },
    /// Remove a node from the cluster.
    Remove { id: u64 },
    /// Hand leadership to another voter.
    TransferLeader { id: u64 },
    /// Print a ticket naming every member of the cluster.
    Ticket {
        /// Put the token in use into the ticket (keep such a ticket private: it is a
        /// credential).
        #[arg(long)]
        with_token: bool,
    },
    /// Ask the contacted node to take a snapshot now.
    Snapshot,
    /// Roll the nodes of a local cluster (`aspen cluster up`) onto a new binary, one at a
    /// time: leadership handed away first, each node caught up before the next, and a node
    /// that fails on the new binary rolled back, stopping the upgrade.
    Upgrade(crate::cmd::upgrade::UpgradeArgs),
    /// Show the build each member runs: version, commit, and the BLAKE3 of its executable.
    Builds,
    /// Ask the `aspen cluster up` of DATA_DIR to restart node ID on another executable (same
    /// data, address and flags); returns once it serves, or fails quoting its log. It then
    /// stays on that executable across restarts of the cluster.
    RestartNode {
        id: u64,
        /// The executable to run the node with.
        #[arg(long)]
        exe: PathBuf,
        /// The local cluster's directory, as given to `aspen cluster up --data-dir`.
        #[arg(long, default_value = ".aspen/cluster")]
        data_dir: PathBuf,
    },
    /// Save this cluster's ticket (asked of the cluster: every member) under NAME in the
    /// configuration directory, so `aspen://NAME/REPO` remote URLs and `--cluster NAME`
    /// find it.
    Save {
        name: String,
        /// Put the token in use into the saved ticket (the file is then a credential, kept
        /// with mode 0600).
        #[arg(long)]
        with_token: bool,
    },
}

#[derive(Debug, clap::Args)]
pub struct UpArgs {
    /// Number of nodes.
    #[arg(long, default_value_t = 3)]
    pub nodes: u32,
    /// Directory holding each node's data (n1, n2, ...) and cluster.ticket.
    #[arg(long, default_value = ".aspen/cluster")]
    pub data_dir: PathBuf,
    /// UDP port of node 1; node i uses BASE_PORT+i-1.
    #[arg(long, default_value_t = 7701)]
    pub base_port: u16,
}

/// A spinner on stderr for waits that take a while.
pub fn spinner(message: &str) -> ProgressBar {
    let bar = ProgressBar::new_spinner();
    if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} ({elapsed})") {
        bar.set_style(style);
    }
    bar.set_message(message.to_string());
    bar.enable_steady_tick(Duration::from_millis(100));
    bar
}

/// Commands that need no ticket.
pub async fn up(ctx: &Ctx, args: UpArgs) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("cannot find this executable to run nodes with")?;
    let spec = LocalClusterSpec::consecutive(args.data_dir.clone(), args.nodes, args.base_port, exe)?;
    // Listen before starting anything, so a signal during startup still stops the nodes.
    let mut sigint = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    let mut sigterm = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let progress = spinner("starting nodes");
    let started = tokio::select! {
        r = start_and_bootstrap(&spec, &progress) => r,
        _ = sigint.recv() => Err(anyhow::anyhow!("interrupted while starting")),
        _ = sigterm.recv() => Err(anyhow::anyhow!("terminated while starting")),
    };
    progress.finish_and_clear();
    let (mut cluster, ticket) = started.with_context(|| {
        format!(
            "cannot start the cluster in {} (if ports {}.. are taken, choose another --base-port)",
            spec.dir.display(),
            args.base_port
        )
    })?;
    let ticket_path = cluster.ticket_path();
    if ctx.json {
        output::print_json(&json!({
            "ticket": ticket,
            "ticket_file": ticket_path.display().to_string(),
            "nodes": args.nodes,
            "data_dir": spec.dir.display().to_string(),
            "cache_gateways": spec.ports.iter().map(|p| format!("http://127.0.0.1:{p}")).collect::<Vec<_>>(),
        }))?;
    } else {
        println!("cluster of {} nodes is up; data in {}", args.nodes, spec.dir.display());
        println!("ticket (also in {}):", ticket_path.display());
        println!("{ticket}");
        println!();
        println!("  export ASPEN_TICKET={ticket}");
        println!("  aspen kv put hello world && aspen kv get hello");
        println!(
            "  aspen cache create main --public   # then nix substitutes from http://127.0.0.1:{}/main",
            spec.ports[0]
        );
        println!();
        println!("Ctrl-C stops the cluster.");
    }
    // A rolling upgrade restarts nodes through this socket.
    let control = match crate::control::bind(&spec.dir) {
        Ok(listener) => Some(listener),
        Err(e) => {
            eprintln!("warning: {e:#}; `aspen cluster upgrade` cannot reach this cluster");
            None
        }
    };
    let mut check = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            accepted = accept(control.as_ref()) => {
                let stream = match accepted {
                    Ok(stream) => stream,
                    Err(e) => {
                        eprintln!("warning: control socket: {e}");
                        continue;
                    }
                };
                // A restart takes a while; a signal meanwhile still stops the cluster.
                tokio::select! {
                    _ = crate::control::serve(stream, &mut cluster) => {}
                    _ = sigint.recv() => break,
                    _ = sigterm.recv() => break,
                }
            }
            _ = check.tick() => {
                for (id, status, log) in cluster.newly_exited() {
                    eprintln!("warning: node {id} exited ({status}); see {}", log.display());
                }
                if cluster.all_exited() {
                    bail!("every node has exited; see the node.log files in {}", spec.dir.display());
                }
            }
        }
    }
    eprintln!("stopping the cluster");
    cluster.stop().await;
    let _ = std::fs::remove_file(spec.dir.join(crate::control::CONTROL_SOCKET));
    Ok(())
}

/// The next connection on the control socket; never, without one.
async fn accept(listener: Option<&tokio::net::UnixListener>) -> std::io::Result<tokio::net::UnixStream> {
    match listener {
        Some(listener) => listener.accept().await.map(|(stream, _)| stream),
        None => std::future::pending().await,
    }
}

async fn start_and_bootstrap(
    spec: &LocalClusterSpec,
    progress: &ProgressBar,
) -> anyhow::Result<(LocalCluster, String)> {
    let mut cluster = LocalCluster::start(spec, progress).await?;
    match cluster.bootstrap(progress).await {
        Ok(ticket) => Ok((cluster, ticket)),
        Err(e) => {
            cluster.stop().await;
            Err(e)
        }
    }
}

/// `cluster init`: aimed at the ticket's first node, without failover.
pub async fn init(ctx: &Ctx, members: Vec<String>) -> anyhow::Result<()> {
    let ticket = ctx.ticket()?;
    let members = members.iter().map(|m| parse_member(m)).collect::<anyhow::Result<Vec<_>>>()?;
    let Some(target) = ticket.nodes.first().cloned() else {
        bail!("the ticket names no node");
    };
    let client = Client::for_node(target, ctx.client_config()).await.context("cannot reach the node to initialize")?;
    let result = init_through(ctx, &client, members).await;
    client.close().await;
    result
}

async fn init_through(ctx: &Ctx, client: &Client, members: Vec<(u64, NodeAddr)>) -> anyhow::Result<()> {
    let me = client.node_info().await?;
    let mut voters: Vec<u64> = std::iter::once(me.node_id).chain(members.iter().map(|(id, _)| *id)).collect();
    voters.sort_unstable();
    // The node answers once the cluster has a leader and has recorded its root key.
    let done = client.init(members).await.context("cannot initialize the cluster")?;
    if ctx.json {
        output::print_json(&json!({
            "initialized": true,
            "voters": voters,
            "cluster_id": done.cluster_id,
            "root_token_file": done.root_token_file,
        }))?;
        return Ok(());
    }
    let list: Vec<String> = voters.iter().map(u64::to_string).collect();
    println!("cluster {} initialized; voters: {}", done.cluster_id, list.join(", "));
    println!("root token (every right; keep it secret) written on node {} to {}", me.node_id, done.root_token_file);
    println!("use it with --token-file {} or ASPEN_TOKEN_FILE", done.root_token_file);
    Ok(())
}

/// Runs the other cluster commands.
pub async fn run(ctx: &Ctx, client: &Client, cmd: ClusterCommand) -> anyhow::Result<()> {
    let done = |what: String| -> anyhow::Result<()> {
        if ctx.json {
            output::print_json(&json!({"ok": true, "done": what}))?;
        } else {
            output::print_line(&what)?;
        }
        Ok(())
    };
    match cmd {
        ClusterCommand::Status => {
            let status = client.status().await?;
            if ctx.json {
                output::print_json(&status_json(&status))?;
            } else {
                print!("{}", status_text(&status));
            }
            Ok(())
        }
        ClusterCommand::AddLearner { id, node_ticket } => {
            let addr = node_from_ticket_arg(&node_ticket)?;
            client.add_learner(id, addr).await?;
            done(format!("node {id} added as a learner"))
        }
        ClusterCommand::Promote { id } => {
            client.promote(id).await?;
            done(format!("node {id} promoted to voter"))
        }
        ClusterCommand::Remove { id } => {
            client.remove(id).await?;
            done(format!("node {id} removed"))
        }
        ClusterCommand::TransferLeader { id } => {
            client.transfer_leader(id).await?;
            done(format!("leadership transferred to node {id}"))
        }
        ClusterCommand::Ticket { with_token } => {
            let mut ticket = client.ticket().await?;
            if with_token {
                let token = ctx.token_for(&ctx.ticket()?)?.context("no token is in use to put into the ticket")?;
                let mut decoded = ClusterTicket::decode(&ticket)?;
                decoded.token = Some(token.to_bytes());
                ticket = decoded.encode();
            }
            if ctx.json {
                output::print_json(&json!({"ticket": ticket}))?;
            } else {
                output::print_line(&ticket)?;
            }
            Ok(())
        }
        ClusterCommand::Snapshot => {
            client.trigger_snapshot().await?;
            done("snapshot triggered".into())
        }
        ClusterCommand::Save { name, with_token } => {
            let path = aspen_client::discovery::saved_cluster_file(&name).map_err(anyhow::Error::msg)?;
            let mut ticket = ClusterTicket::decode(&client.ticket().await?)?;
            if with_token {
                let token = ctx.token_for(&ctx.ticket()?)?.context("no token is in use to put into the ticket")?;
                ticket.token = Some(token.to_bytes());
            }
            let dir = path.parent().context("the saved cluster file has no directory")?;
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
            let tmp = path.with_extension("ticket.tmp");
            {
                use std::io::Write;
                use std::os::unix::fs::OpenOptionsExt;
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(&tmp)
                    .with_context(|| format!("cannot write {}", tmp.display()))?;
                file.write_all(format!("{}\n", ticket.encode()).as_bytes())?;
                file.sync_all()?;
            }
            std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))?;
            done(format!("saved as {name} in {}", path.display()))
        }
        ClusterCommand::Builds => crate::cmd::upgrade::builds(ctx, client).await,
        ClusterCommand::Up(_)
        | ClusterCommand::Init { .. }
        | ClusterCommand::Upgrade(_)
        | ClusterCommand::RestartNode { .. } => {
            bail!("internal: handled elsewhere")
        }
    }
}

fn opt(v: Option<u64>) -> String {
    v.map_or("-".into(), |v| v.to_string())
}

fn status_text(s: &ClusterStatus) -> String {
    let mut out = String::new();
    let cluster = match (s.initialized, s.cluster_id.is_empty()) {
        (false, _) => "(not initialized)",
        (true, true) => "-",
        (true, false) => &s.cluster_id,
    };
    out.push_str(&format!("cluster   {cluster}\n"));
    out.push_str(&format!("node      {} ({})\n", s.node_id, s.state));
    out.push_str(&format!("leader    {}\n", opt(s.leader)));
    out.push_str(&format!("term      {}\n", s.term));
    out.push_str(&format!("revision  {}\n", s.revision));
    out.push_str(&format!(
        "log       last={} applied={} snapshot={} purged={}\n",
        opt(s.last_log_index),
        opt(s.last_applied),
        opt(s.snapshot_index),
        opt(s.purged_index)
    ));
    out.push_str("members\n");
    let id_width = s.members.iter().map(|m| m.node_id.to_string().len()).max().unwrap_or(1);
    for m in &s.members {
        let addrs: Vec<String> = m.addr.addrs.iter().map(ToString::to_string).collect();
        let role = if m.voter { "voter" } else { "learner" };
        let leader = if Some(m.node_id) == s.leader { " leader" } else { "" };
        let id = endpoint_hex(&m.addr.endpoint_id);
        out.push_str(&format!(
            "  {:<id_width$}  {role:<7}  {:<21}  matched={:<8} {}{leader}\n",
            m.node_id,
            addrs.join(","),
            opt(m.matched_index),
            id.get(..10).unwrap_or(&id)
        ));
    }
    out
}

fn node_json(addr: &NodeAddr) -> Value {
    json!({
        "endpoint_id": endpoint_hex(&addr.endpoint_id),
        "addrs": addr.addrs.iter().map(ToString::to_string).collect::<Vec<_>>(),
    })
}

fn status_json(s: &ClusterStatus) -> Value {
    let members: Vec<Value> = s
        .members
        .iter()
        .map(|m| json!({"node_id": m.node_id, "voter": m.voter, "matched_index": m.matched_index, "addr": node_json(&m.addr)}))
        .collect();
    json!({
        "cluster_id": s.cluster_id,
        "node_id": s.node_id,
        "initialized": s.initialized,
        "state": s.state,
        "leader": s.leader,
        "term": s.term,
        "last_log_index": s.last_log_index,
        "last_applied": s.last_applied,
        "snapshot_index": s.snapshot_index,
        "purged_index": s.purged_index,
        "revision": s.revision,
        "members": members,
    })
}

/// A node's address from a ticket string or a file holding one; its first node.
fn node_from_ticket_arg(arg: &str) -> anyhow::Result<NodeAddr> {
    let text = if arg.trim_start().starts_with("aspen") {
        arg.to_string()
    } else {
        read_ticket_file(Path::new(arg)).with_context(|| format!("{arg:?} is neither a ticket nor a readable file"))?
    };
    let ticket = ClusterTicket::decode(&text)?;
    ticket.nodes.into_iter().next().context("the ticket names no node")
}

/// `ID=NODE`, where NODE is a ticket, a ticket file, or `ENDPOINT_ID@IP:PORT[,IP:PORT...]`.
pub fn parse_member(arg: &str) -> anyhow::Result<(u64, NodeAddr)> {
    let Some((id, node)) = arg.split_once('=') else {
        bail!("bad --member {arg:?}: expected ID=NODE (a ticket, a node.ticket path, or ENDPOINT_ID@IP:PORT)");
    };
    let id: u64 = id.trim().parse().with_context(|| format!("bad --member {arg:?}: {id:?} is not a node id"))?;
    let node = node.trim();
    let addr = match node.split_once('@') {
        Some((endpoint, addrs)) if !node.starts_with("aspen") => {
            parse_endpoint_at(endpoint, addrs).with_context(|| format!("bad --member {arg:?}"))?
        }
        _ => node_from_ticket_arg(node).with_context(|| format!("bad --member {arg:?}"))?,
    };
    Ok((id, addr))
}

fn parse_endpoint_at(endpoint: &str, addrs: &str) -> anyhow::Result<NodeAddr> {
    let bytes = data_encoding::HEXLOWER_PERMISSIVE
        .decode(endpoint.as_bytes())
        .map_err(|_| anyhow::anyhow!("endpoint id {endpoint:?} is not hex"))?;
    let endpoint_id: [u8; 32] = bytes
        .try_into()
        .map_err(|b: Vec<u8>| anyhow::anyhow!("endpoint id is {} bytes; it must be 32 (64 hex digits)", b.len()))?;
    let addrs = addrs
        .split(',')
        .map(|a| a.trim().parse().with_context(|| format!("{a:?} is not an IP:PORT address")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(NodeAddr { endpoint_id, addrs })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_parse_from_endpoint_and_address() {
        let hex = "ab".repeat(32);
        let (id, addr) = parse_member(&format!("2={hex}@127.0.0.1:7702")).unwrap();
        assert_eq!(id, 2);
        assert_eq!(addr.endpoint_id, [0xab; 32]);
        assert_eq!(addr.addrs, vec!["127.0.0.1:7702".parse().unwrap()]);
    }

    #[test]
    fn members_parse_from_tickets() {
        let node = NodeAddr { endpoint_id: [1; 32], addrs: vec!["127.0.0.1:7703".parse().unwrap()] };
        let ticket = ClusterTicket { cluster_id: String::new(), nodes: vec![node.clone()], token: None };
        assert_eq!(parse_member(&format!("3={}", ticket.encode())).unwrap(), (3, node));
    }

    #[test]
    fn bad_members_say_what_is_wrong() {
        let e = |s: &str| format!("{:#}", parse_member(s).unwrap_err());
        assert!(e("nonsense").contains("expected ID=NODE"));
        assert!(e("x=aspenabc").contains("not a node id"));
        assert!(e("2=zz@127.0.0.1:1").contains("not hex"));
        assert!(e("2=abcd@127.0.0.1:1").contains("must be 32"));
        assert!(e(&format!("2={}@nowhere", "ab".repeat(32))).contains("not an IP:PORT"));
        assert!(e("2=/no/such/file").contains("neither a ticket nor a readable file"));
    }
}
