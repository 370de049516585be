//! `aspen cluster upgrade`: a rolling upgrade of a local cluster onto a new node binary.
//!
//! One node at a time, followers first: hand leadership away if the node leads, restart it
//! on the new binary through the supervisor's control socket, and wait until it runs that
//! exact binary (its `NodeBuild` hash is the artifact's) and has applied everything the
//! leader had when it came back. A node that does not get there is restarted on its old
//! binary and the upgrade stops, saying which nodes run what. Two nodes of three keep a
//! quorum throughout, so the cluster serves reads and writes all along.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use aspen_blob::{BlobClient, blob_hash_hex, parse_blob_hash};
use aspen_client::{Client, ClientConfig, ClusterStatus, ClusterTicket, NodeAddr};
use aspen_core::api::NodeBuild;
use aspen_net::token::Token;
use serde_json::json;
use tokio::time::Instant;

use crate::context::Ctx;
use crate::control::{self, ControlError, ControlRequest};
use crate::local_cluster::{CLUSTER_TICKET_FILE, NodeView};
use crate::output;

/// Where staged artifacts go in the cluster directory: `releases/<blake3>/aspen`.
pub const RELEASES_DIR: &str = "releases";
/// Longest wait for leadership to move off a node.
const TRANSFER_LIMIT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(200);

#[derive(Debug, clap::Args)]
pub struct UpgradeArgs {
    /// The new node binary: a file; the BLAKE3 hash (hex) of a blob in the cluster; or
    /// `ci:RUN/JOB/PATH`, an artifact a CI job kept.
    #[arg(long)]
    pub artifact: String,
    /// The local cluster's directory, as given to `aspen cluster up --data-dir`.
    #[arg(long, default_value = ".aspen/cluster")]
    pub data_dir: PathBuf,
    /// Longest wait for a restarted node to run the new binary and catch up with the leader.
    #[arg(long, default_value = "120s", value_parser = crate::duration::parse_duration)]
    pub catch_up: Duration,
    /// Restart each node with this shell command instead of through `cluster up`, for nodes
    /// that something else runs (systemd hosts: a `nixos-rebuild switch --target-host` of
    /// that node's host). `{id}` becomes the node id; the command also gets
    /// $ASPEN_UPGRADE_NODE and $ASPEN_UPGRADE_EXE (the staged artifact). The cluster comes
    /// from the usual ticket sources, and DATA_DIR only holds the staged artifacts.
    #[arg(long, requires = "rollback_command", value_name = "CMD")]
    pub restart_command: Option<String>,
    /// With --restart-command: puts node {id} back on the binary it ran (e.g. `nixos-rebuild
    /// switch --rollback` on its host).
    #[arg(long, requires = "restart_command", value_name = "CMD")]
    pub rollback_command: Option<String>,
    /// Longest a restart or rollback command may run.
    #[arg(long, default_value = "600s", value_parser = crate::duration::parse_duration)]
    pub command_limit: Duration,
}

/// What restarts a node.
enum Driver {
    /// The `cluster up` supervising the cluster in this directory.
    Local { dir: PathBuf },
    /// Shell commands, `{id}` replaced by the node id.
    Commands { restart: String, rollback: String, limit: Duration },
}

/// A node to move, and what it ran before (known when `cluster up` runs it).
#[derive(Debug, Clone)]
struct Target {
    id: u64,
    old_exe: Option<PathBuf>,
    log: Option<PathBuf>,
}

impl From<NodeView> for Target {
    fn from(view: NodeView) -> Target {
        Target { id: view.id, old_exe: Some(view.exe), log: Some(view.log) }
    }
}

/// How one node's step went.
#[derive(Debug, Clone, serde::Serialize)]
struct Step {
    node: u64,
    outcome: &'static str,
    seconds: f64,
    applied: Option<u64>,
}

pub async fn upgrade(ctx: &Ctx, args: UpgradeArgs) -> anyhow::Result<()> {
    let dir =
        std::path::absolute(&args.data_dir).with_context(|| format!("bad directory {}", args.data_dir.display()))?;
    let (driver, targets, ticket, token) = match (args.restart_command, args.rollback_command) {
        (Some(restart), Some(rollback)) => {
            let ticket = ctx.ticket()?;
            let token = ctx.token_for(&ticket)?;
            (Driver::Commands { restart, rollback, limit: args.command_limit }, None, ticket, token)
        }
        _ => {
            let views = control::nodes(&dir).await?;
            let (ticket, token) = local_ticket(ctx, &dir)?;
            let targets = views.into_iter().map(Target::from).collect();
            (Driver::Local { dir: dir.clone() }, Some(targets), ticket, token)
        }
    };
    let config = ctx.client_config();
    let first = Client::over_nodes_as(ticket.nodes.clone(), config, token.clone(), None)
        .await
        .context("cannot connect to the cluster")?;
    // The ticket names the members at bootstrap; fail over across all of today's.
    let members = first.ticket().await.context("cannot ask the cluster for its members");
    first.close().await;
    let members = ClusterTicket::decode(&members?).context("the cluster sent a bad ticket")?;
    let client = Client::over_nodes_as(members.nodes, config, token.clone(), None)
        .await
        .context("cannot connect to the cluster")?;
    let result = async {
        let targets = match targets {
            Some(targets) => targets,
            None => {
                let status = client.status().await.context("cannot read the cluster's status")?;
                status.members.iter().map(|m| Target { id: m.node_id, old_exe: None, log: None }).collect()
            }
        };
        let (exe, hash) = stage(&client, &dir, &args.artifact).await?;
        if !ctx.json {
            println!("artifact {} staged as {}", blob_hash_hex(&hash), exe.display());
        }
        let upgrade = Upgrade { ctx, client: &client, driver, token, exe, hash, catch_up: args.catch_up };
        upgrade.run(targets).await
    }
    .await;
    client.close().await;
    result
}

/// The cluster's ticket from `<dir>/cluster.ticket`, and the token to present: an explicit
/// one, else the ticket's (a local cluster's ticket carries the root token).
fn local_ticket(ctx: &Ctx, dir: &Path) -> anyhow::Result<(ClusterTicket, Option<Token>)> {
    let path = dir.join(CLUSTER_TICKET_FILE);
    let text =
        aspen_client::discovery::read_ticket_file(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let ticket = ClusterTicket::decode(&text).with_context(|| format!("bad ticket in {}", path.display()))?;
    let token = match ctx.token()? {
        Some(token) => Some(token),
        None => {
            ticket.token.as_deref().map(Token::from_bytes).transpose().context("bad token in the cluster ticket")?
        }
    };
    Ok((ticket, token))
}

/// Puts the artifact at `<dir>/releases/<blake3>/aspen` (mode 0755) and returns it with its
/// hash. A file is copied; a blob or CI artifact is fetched from the cluster and checked.
async fn stage(client: &Client, dir: &Path, artifact: &str) -> anyhow::Result<(PathBuf, [u8; 32])> {
    use std::os::unix::fs::PermissionsExt;
    let releases = dir.join(RELEASES_DIR);
    std::fs::create_dir_all(&releases).with_context(|| format!("cannot create {}", releases.display()))?;
    let tmp = releases.join(format!(".staging-{}", std::process::id()));
    let hash = if Path::new(artifact).is_file() {
        std::fs::copy(artifact, &tmp).with_context(|| format!("cannot copy {artifact}"))?;
        hash_file(&tmp)?
    } else {
        let hash = match artifact.strip_prefix("ci:") {
            Some(reference) => ci_artifact(client, reference).await?,
            None => parse_blob_hash(artifact).map_err(|e| {
                anyhow::anyhow!("--artifact {artifact:?} is neither a file, a blob hash nor ci:RUN/JOB/PATH ({e})")
            })?,
        };
        let mut file =
            tokio::fs::File::create(&tmp).await.with_context(|| format!("cannot create {}", tmp.display()))?;
        BlobClient::new(client)
            .get_to(hash, &mut file)
            .await
            .with_context(|| format!("cannot fetch blob {}", blob_hash_hex(&hash)))?;
        file.sync_all().await?;
        let got = hash_file(&tmp)?;
        if got != hash {
            let _ = std::fs::remove_file(&tmp);
            bail!("blob {} arrived with hash {}", blob_hash_hex(&hash), blob_hash_hex(&got));
        }
        hash
    };
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))?;
    let slot = releases.join(blob_hash_hex(&hash));
    std::fs::create_dir_all(&slot).with_context(|| format!("cannot create {}", slot.display()))?;
    let exe = slot.join("aspen");
    std::fs::rename(&tmp, &exe).with_context(|| format!("cannot move the artifact to {}", exe.display()))?;
    Ok((exe, hash))
}

/// The blob of `RUN/JOB/PATH`: an artifact the job kept.
async fn ci_artifact(client: &Client, reference: &str) -> anyhow::Result<[u8; 32]> {
    let mut parts = reference.splitn(3, '/');
    let (Some(run), Some(job), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
        bail!("ci:{reference} is not ci:RUN/JOB/PATH");
    };
    let run: u64 = run.parse().with_context(|| format!("ci:{reference}: run {run:?} is not a number"))?;
    let info = aspen_ci::CiClient::new(client).show(run).await.with_context(|| format!("cannot read run {run}"))?;
    let Some((_, record)) = info.jobs.iter().find(|(name, _)| name == job) else {
        bail!("run {run} has no job {job:?}");
    };
    let Some(kept) = record.artifacts.iter().find(|a| a.path == path) else {
        let kept: Vec<&str> = record.artifacts.iter().map(|a| a.path.as_str()).collect();
        bail!("job {job} of run {run} kept no artifact {path:?} (it kept: {kept:?})");
    };
    Ok(kept.blob)
}

fn hash_file(path: &Path) -> anyhow::Result<[u8; 32]> {
    let mut file = std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut hasher = blake3::Hasher::new();
    std::io::copy(&mut file, &mut hasher).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(*hasher.finalize().as_bytes())
}

struct Upgrade<'a> {
    ctx: &'a Ctx,
    client: &'a Client,
    driver: Driver,
    token: Option<Token>,
    exe: PathBuf,
    hash: [u8; 32],
    catch_up: Duration,
}

impl Upgrade<'_> {
    async fn run(&self, targets: Vec<Target>) -> anyhow::Result<()> {
        let mut pending: Vec<Target> = targets;
        pending.sort_by_key(|v| v.id);
        let mut steps: Vec<Step> = Vec::new();
        while !pending.is_empty() {
            // A node that does not answer first (restarting it costs nothing), then followers;
            // the leader goes last, so leadership moves at most once.
            let status = self.client.status().await.context("cannot read the cluster's status")?;
            let mut builds = Vec::new();
            for target in &pending {
                builds.push(self.build_of(target.id, &status).await);
            }
            let next = builds
                .iter()
                .position(|b| b.is_err())
                .or_else(|| pending.iter().position(|v| Some(v.id) != status.leader))
                .unwrap_or(0);
            let view = pending.remove(next);
            let build = builds.swap_remove(next);
            let started = Instant::now();
            if build.as_ref().is_ok_and(|b| b.exe_blake3 == Some(self.hash)) {
                self.say(&format!("node {}: already runs {}", view.id, short(&self.hash)));
                steps.push(Step { node: view.id, outcome: "already", seconds: 0.0, applied: None });
                continue;
            }
            // Nothing is restarted yet: a refusal here needs no rollback.
            let ready = async {
                self.wait_quorum_without(view.id).await?;
                self.move_leadership_off(view.id, &steps).await
            }
            .await;
            if let Err(e) = ready {
                let upgraded: Vec<String> = steps.iter().map(|s| s.node.to_string()).collect();
                let on_new = match upgraded.is_empty() {
                    true => "no node was upgraded".to_string(),
                    false => format!("on {}: node(s) [{}]", short(&self.hash), upgraded.join(", ")),
                };
                bail!("upgrade stopped before node {}: {e:#}. {on_new}", view.id);
            }
            match self.step(&view).await {
                Ok(applied) => {
                    let seconds = started.elapsed().as_secs_f64();
                    self.say(&format!(
                        "node {}: upgraded in {seconds:.1} s; runs {}, applied index {applied}",
                        view.id,
                        short(&self.hash)
                    ));
                    steps.push(Step { node: view.id, outcome: "upgraded", seconds, applied: Some(applied) });
                }
                Err(failure) => return Err(self.stop(&view, failure, &steps, &pending).await),
            }
        }
        if self.ctx.json {
            output::print_json(&json!({
                "artifact": blob_hash_hex(&self.hash),
                "exe": self.exe.display().to_string(),
                "nodes": steps,
            }))?;
        } else {
            println!("every node runs {}", self.exe.display());
        }
        Ok(())
    }

    fn say(&self, line: &str) {
        if !self.ctx.json {
            println!("{line}");
        }
    }

    /// Moves node `view` onto the new binary; returns the index it caught up to.
    async fn step(&self, view: &Target) -> anyhow::Result<u64> {
        self.say(&format!("node {}: restarting on the new binary", view.id));
        match &self.driver {
            Driver::Local { dir } => {
                match control::ask(dir, &ControlRequest::Restart { node: view.id, exe: self.exe.clone() }).await {
                    Ok(_) => {}
                    Err(ControlError::Failed { reason, .. }) => bail!("it did not start on the new binary: {reason}"),
                    Err(e) => bail!("{e}"),
                }
            }
            Driver::Commands { restart, limit, .. } => {
                run_command(restart, view.id, &self.exe, *limit).await.context("the restart command failed")?
            }
        }
        self.catch_up(view.id, Some(self.hash)).await
    }

    /// Puts node `view` back on what it ran.
    async fn roll_back(&self, view: &Target) -> anyhow::Result<()> {
        match &self.driver {
            Driver::Local { dir } => {
                let exe = view.old_exe.clone().context("internal: no old executable")?;
                match control::ask(dir, &ControlRequest::Restart { node: view.id, exe }).await {
                    Ok(_) => Ok(()),
                    Err(e) => bail!("{e}"),
                }
            }
            Driver::Commands { rollback, limit, .. } => {
                run_command(rollback, view.id, &self.exe, *limit).await.context("the rollback command failed")
            }
        }
    }

    /// Waits until the voters other than `id` that answer and follow a leader are a majority
    /// of all voters, so taking `id` down keeps the cluster serving. Refuses after the
    /// catch-up time, before anything was restarted.
    async fn wait_quorum_without(&self, id: u64) -> anyhow::Result<()> {
        let deadline = Instant::now() + self.catch_up;
        loop {
            let status = self.client.status().await.context("cannot read the cluster's status")?;
            let voters: Vec<u64> = status.members.iter().filter(|m| m.voter).map(|m| m.node_id).collect();
            let mut up = 0;
            let mut down = Vec::new();
            for voter in voters.iter().copied().filter(|v| *v != id) {
                let answer = async {
                    let node = self.node_client(voter, &status).await?;
                    let own = node.status().await.map_err(anyhow::Error::from);
                    node.close().await;
                    own
                }
                .await;
                match answer {
                    Ok(own) if own.leader.is_some() => up += 1,
                    Ok(_) => down.push(format!("node {voter} knows no leader")),
                    Err(e) => down.push(format!("node {voter}: {e:#}")),
                }
            }
            // A node outside the voters (a learner) can go down freely.
            if !voters.contains(&id) || up > voters.len() / 2 {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "taking node {id} down would leave {up} of {} voters serving, not a majority ({}); \
                     nothing was restarted for it",
                    voters.len(),
                    down.join("; ")
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Hands leadership to another voter (one already upgraded if any) when `node` leads.
    async fn move_leadership_off(&self, node: u64, done: &[Step]) -> anyhow::Result<()> {
        let status = self.client.status().await.context("cannot read the cluster's status")?;
        if status.leader != Some(node) {
            return Ok(());
        }
        let voters: Vec<u64> =
            status.members.iter().filter(|m| m.voter && m.node_id != node).map(|m| m.node_id).collect();
        let Some(to) = voters.iter().copied().find(|v| done.iter().any(|s| s.node == *v)).or(voters.first().copied())
        else {
            bail!("node {node} is the only voter; a rolling upgrade needs at least two (the cluster would stop)");
        };
        self.say(&format!("node {node}: leads; handing leadership to node {to}"));
        self.client.transfer_leader(to).await.with_context(|| format!("cannot hand leadership to node {to}"))?;
        let deadline = Instant::now() + TRANSFER_LIMIT;
        loop {
            match self.client.status().await {
                Ok(s) if s.leader.is_some() && s.leader != Some(node) => return Ok(()),
                Ok(_) => {}
                Err(e) => tracing::debug!(%e, "status while leadership moves"),
            }
            if Instant::now() >= deadline {
                bail!("leadership did not move off node {node} within {TRANSFER_LIMIT:?}");
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until node `id` runs `hash` (when given), follows a leader and has applied
    /// everything the leader had logged when the wait began; returns that index.
    async fn catch_up(&self, id: u64, hash: Option<[u8; 32]>) -> anyhow::Result<u64> {
        let deadline = Instant::now() + self.catch_up;
        let mut target: Option<u64> = None;
        let mut last = String::from("no answer yet");
        loop {
            match self.probe(id, hash, &mut target).await {
                Ok(Some(applied)) => return Ok(applied),
                Ok(None) => {}
                Err(e) => last = format!("{e:#}"),
            }
            if Instant::now() >= deadline {
                bail!("it did not catch up within {:?} (last: {last})", self.catch_up);
            }
            tokio::time::sleep(POLL).await;
        }
    }

    async fn probe(&self, id: u64, hash: Option<[u8; 32]>, target: &mut Option<u64>) -> anyhow::Result<Option<u64>> {
        let status = self.client.status().await.context("cluster status")?;
        let node = self.node_client(id, &status).await?;
        let result = async {
            if let Some(hash) = hash {
                let build = node.node_build().await.context("its build")?;
                if build.exe_blake3 != Some(hash) {
                    bail!("it runs {} instead", build.exe_blake3.as_ref().map_or("an unknown binary".into(), short));
                }
            }
            let own = node.status().await.context("its status")?;
            let Some(leader) = own.leader else { bail!("it knows no leader yet") };
            if target.is_none() {
                let leader_status = self.node_client(leader, &status).await?.status().await.context("leader status")?;
                *target = Some(leader_status.last_log_index.unwrap_or(0));
            }
            let applied = own.last_applied.unwrap_or(0);
            let want = target.unwrap_or(0);
            if applied >= want { Ok(Some(applied)) } else { bail!("applied {applied} of {want}") }
        }
        .await;
        node.close().await;
        result
    }

    async fn build_of(&self, id: u64, status: &ClusterStatus) -> anyhow::Result<NodeBuild> {
        let node = self.node_client(id, status).await?;
        let build = node.node_build().await.context("its build");
        node.close().await;
        build
    }

    async fn node_client(&self, id: u64, status: &ClusterStatus) -> anyhow::Result<Client> {
        let addr: NodeAddr = status
            .members
            .iter()
            .find(|m| m.node_id == id)
            .map(|m| m.addr.clone())
            .with_context(|| format!("node {id} is not a member of the cluster"))?;
        let mut config = ClientConfig::with_request_timeout(Duration::from_secs(5));
        config.read_attempt_timeout = Duration::from_secs(5);
        Client::for_node_with_token(addr, config, self.token.clone())
            .await
            .with_context(|| format!("cannot reach node {id}"))
    }

    /// Rolls node `view` back onto the binary it ran, and says where the upgrade stopped.
    async fn stop(&self, view: &Target, failure: anyhow::Error, done: &[Step], rest: &[Target]) -> anyhow::Error {
        let id = view.id;
        let before = view.old_exe.as_ref().map_or("the binary it ran".to_string(), |e| e.display().to_string());
        self.say(&format!("node {id}: failed on the new binary; rolling it back to {before}"));
        let rollback = async {
            self.roll_back(view).await?;
            self.catch_up(id, None).await
        }
        .await;
        let upgraded: Vec<String> = done.iter().map(|s| s.node.to_string()).collect();
        let old: Vec<String> = std::iter::once(id).chain(rest.iter().map(|v| v.id)).map(|n| n.to_string()).collect();
        let log = view.log.as_ref().map_or(String::new(), |l| format!(" Its log: {}", l.display()));
        match rollback {
            Ok(applied) => anyhow::anyhow!(
                "upgrade stopped at node {id}: {failure:#}. Node {id} was rolled back to {before} and caught up \
                 (applied index {applied}). On {}: node(s) [{}]; still on their old binary: node(s) [{}].{log}",
                short(&self.hash),
                upgraded.join(", "),
                old.join(", "),
            ),
            Err(e) => anyhow::anyhow!(
                "upgrade stopped at node {id}: {failure:#}. Rolling it back to {before} FAILED too: {e:#}. \
                 Node {id} may be down.{log}"
            ),
        }
    }
}

/// Runs `template` with `{id}` replaced under `sh -c`, bounded by `limit`; its output goes
/// to ours, and a non-zero exit is an error.
async fn run_command(template: &str, id: u64, exe: &Path, limit: Duration) -> anyhow::Result<()> {
    use std::os::fd::AsFd;
    let command = template.replace("{id}", &id.to_string());
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(&command)
        .env("ASPEN_UPGRADE_NODE", id.to_string())
        .env("ASPEN_UPGRADE_EXE", exe)
        .stdin(std::process::Stdio::null())
        // Our stdout may be JSON; the command's output goes with our messages.
        .stdout(std::process::Stdio::from(std::io::stderr().as_fd().try_clone_to_owned()?))
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot run {command:?}"))?;
    match tokio::time::timeout(limit, child.wait()).await {
        Err(_) => bail!("{command:?} did not finish within {limit:?}"),
        Ok(Err(e)) => bail!("{command:?}: {e}"),
        Ok(Ok(status)) if status.success() => Ok(()),
        Ok(Ok(status)) => bail!("{command:?} exited ({status})"),
    }
}

/// The first 12 hex digits of a hash.
fn short(hash: &[u8; 32]) -> String {
    blob_hash_hex(hash)[..12].to_string()
}

/// `cluster builds`: each member's build, asked of the member itself.
pub async fn builds(ctx: &Ctx, client: &Client) -> anyhow::Result<()> {
    let status = client.status().await.context("cannot read the cluster's status")?;
    let token = ctx.token_for(&ctx.ticket()?)?;
    let mut rows = Vec::new();
    for member in &status.members {
        let mut config = ClientConfig::with_request_timeout(Duration::from_secs(5));
        config.read_attempt_timeout = Duration::from_secs(5);
        let answer = match Client::for_node_with_token(member.addr.clone(), config, token.clone()).await {
            Ok(node) => {
                let build = node.node_build().await.map_err(anyhow::Error::from);
                node.close().await;
                build
            }
            Err(e) => Err(e.into()),
        };
        rows.push((member.node_id, answer));
    }
    if ctx.json {
        let nodes: Vec<serde_json::Value> = rows
            .iter()
            .map(|(id, answer)| match answer {
                Ok(b) => json!({
                    "node": id,
                    "version": b.version,
                    "commit": b.commit,
                    "exe_blake3": b.exe_blake3.as_ref().map(blob_hash_hex),
                    "started_ms": b.started_ms,
                    "pid": b.pid,
                }),
                Err(e) => json!({"node": id, "error": format!("{e:#}")}),
            })
            .collect();
        output::print_json(&json!({ "nodes": nodes }))?;
        return Ok(());
    }
    for (id, answer) in rows {
        match answer {
            Ok(b) => println!(
                "node {id}: aspen {} commit {} exe {} pid {}",
                b.version,
                b.commit.as_deref().unwrap_or("(not recorded)"),
                b.exe_blake3.as_ref().map_or("(unreadable)".into(), short),
                b.pid
            ),
            Err(e) => println!("node {id}: cannot tell ({e:#})"),
        }
    }
    Ok(())
}

/// `cluster restart-node`: asks the `cluster up` of DIR to restart node ID on EXE.
pub async fn restart_node(ctx: &Ctx, dir: &Path, id: u64, exe: &Path) -> anyhow::Result<()> {
    let dir = std::path::absolute(dir).with_context(|| format!("bad directory {}", dir.display()))?;
    let exe = std::path::absolute(exe).with_context(|| format!("bad path {}", exe.display()))?;
    let nodes = match control::ask(&dir, &ControlRequest::Restart { node: id, exe: exe.clone() }).await {
        Ok(nodes) => nodes,
        Err(ControlError::Failed { reason, .. }) => bail!("node {id} did not serve on {}: {reason}", exe.display()),
        Err(e) => bail!("{e}"),
    };
    let node = nodes.iter().find(|n| n.id == id);
    if ctx.json {
        output::print_json(&json!({"node": id, "exe": exe.display().to_string(), "pid": node.and_then(|n| n.pid)}))?;
    } else {
        println!("node {id} serves on {}", exe.display());
    }
    Ok(())
}
