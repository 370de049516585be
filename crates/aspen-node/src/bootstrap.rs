//! Forming a cluster with nobody at a keyboard. A node started with `--init` makes a new
//! cluster on its first start (it is the first voter) and writes a join ticket whose token may
//! change the membership and nothing else. A node started with `--join-ticket-file` serves at
//! once, waits for that file to appear, and asks the cluster to add it (as a learner, then a
//! voter once caught up), retrying until it is a member: an image can boot before its ticket
//! is placed, or before the first node is up, without a restart loop.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use aspen_core::api::{ClientRequest, ClientResponse};
use aspen_core::capability::Capability;
use aspen_core::error::AspenError;
use aspen_net::ClusterTicket;
use aspen_net::token::{Audience, LinkSpec, Token};

use crate::state::NodeState;

/// Longest pause between two attempts to join.
const MAX_JOIN_BACKOFF: Duration = Duration::from_secs(5);

/// On a node started with `--init`: initializes a one-voter cluster unless it already is
/// one, then writes the join ticket to `out` unless that file exists.
pub async fn init_and_write_join_ticket(state: &Arc<NodeState>, out: &Path) -> anyhow::Result<()> {
    if !state.is_initialized() {
        match crate::ops::dispatch(state, ClientRequest::Init { members: Vec::new() }, false).await {
            ClientResponse::Initialized { cluster_id, root_token_file } => {
                tracing::info!(%cluster_id, %root_token_file, "initialized a new cluster (--init)");
            }
            ClientResponse::Error(AspenError::AlreadyInitialized) => {}
            ClientResponse::Error(e) => bail!("--init could not initialize the cluster: {e}"),
            other => bail!("--init got an unexpected answer: {other:?}"),
        }
    }
    if out.exists() {
        return Ok(());
    }
    let text = match std::fs::read_to_string(&state.root_token_file) {
        Ok(text) => text,
        Err(e) => {
            tracing::warn!(
                "no join ticket written: the root token {} is not readable here ({e})",
                state.root_token_file.display()
            );
            return Ok(());
        }
    };
    let root =
        Token::decode(&text).with_context(|| format!("the root token in {}", state.root_token_file.display()))?;
    let secret = root.holder_secret.context("the root token carries no holder secret to delegate with")?;
    let spec = LinkSpec {
        caps: vec![Capability::ClusterAdmin],
        audience: Audience::Bearer,
        not_before_ms: aspen_net::now_ms().saturating_sub(60_000),
        expires_ms: None,
        may_delegate: false,
    };
    let join = root.delegate(&iroh::SecretKey::from_bytes(&secret), spec)?;
    let mut nodes: Vec<_> = state.members().nodes.into_values().collect();
    if nodes.is_empty() {
        nodes.push(state.addr.clone());
    }
    let ticket = ClusterTicket { cluster_id: state.cluster_id(), nodes, token: Some(join.to_bytes()) };
    aspen_net::identity::write_secret_file(out, ticket.encode().as_bytes())
        .with_context(|| format!("writing the join ticket {}", out.display()))?;
    tracing::info!(path = %out.display(), "wrote the join ticket (mode 0600)");
    Ok(())
}

/// Whether this node is in the membership as it wants to be: a voter, or (for a learner)
/// a member at all.
fn joined(state: &NodeState, as_voter: bool) -> bool {
    let members = state.members();
    if as_voter { members.voters.contains(&state.node_id) } else { members.nodes.contains_key(&state.node_id) }
}

/// Reads the join ticket, if it is there yet.
fn read_ticket(path: &Path) -> Result<Option<ClusterTicket>, String> {
    match std::fs::read_to_string(path) {
        Ok(text) => ClusterTicket::decode(&text).map(Some).map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// Joins the cluster named in `ticket_file` in the background, until this node is a member
/// (a voter when `as_voter`). Never gives up: a missing ticket, an unreachable cluster or a
/// refused step is logged and tried again.
pub fn spawn_join(state: Arc<NodeState>, ticket_file: PathBuf, as_voter: bool) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(250);
        let mut waiting_logged = false;
        let mut attempt = 0usize;
        loop {
            if joined(&state, as_voter) {
                tracing::info!(node_id = state.node_id, as_voter, "this node is a member of the cluster");
                return;
            }
            let ticket = match read_ticket(&ticket_file) {
                Ok(Some(t)) => t,
                Ok(None) => {
                    if !waiting_logged {
                        tracing::info!(path = %ticket_file.display(), "waiting for the join ticket");
                        waiting_logged = true;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
                Err(e) => {
                    tracing::warn!("the join ticket is unusable, retrying: {e}");
                    tokio::time::sleep(MAX_JOIN_BACKOFF).await;
                    continue;
                }
            };
            // A join ticket carries a token allowed to change the membership; its holder
            // secret (if any) never leaves this node.
            let token = ticket
                .token
                .as_ref()
                .map(|t| Token::from_bytes(t).map(|t| t.without_secret().to_bytes()).unwrap_or_else(|_| t.clone()));
            let step = if state.members().nodes.contains_key(&state.node_id) {
                ClientRequest::Promote { node_id: state.node_id }
            } else {
                ClientRequest::AddLearner { node_id: state.node_id, addr: state.addr.clone() }
            };
            let to = &ticket.nodes[attempt % ticket.nodes.len()];
            attempt += 1;
            match state.forwarder.call_as_client(to, step.clone(), token.as_deref()).await {
                ClientResponse::Done => {
                    backoff = Duration::from_millis(250);
                    // This node learns the new membership with the next round of replication.
                    let learner = matches!(step, ClientRequest::AddLearner { .. });
                    for _ in 0..40 {
                        let members = state.members();
                        let seen = if learner {
                            members.nodes.contains_key(&state.node_id)
                        } else {
                            members.voters.contains(&state.node_id)
                        };
                        if seen {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(250)).await;
                    }
                }
                ClientResponse::Error(e) => {
                    tracing::info!("join step {} not done yet: {e}; retrying in {backoff:?}", step.name());
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_JOIN_BACKOFF);
                }
                other => {
                    tracing::warn!("join step {} got an unexpected answer {other:?}; retrying", step.name());
                    tokio::time::sleep(backoff).await;
                }
            }
        }
    })
}
