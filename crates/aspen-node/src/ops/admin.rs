//! Cluster administration: init, membership changes, leadership transfer, snapshots,
//! status and tickets.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use aspen_core::api::{ClientRequest, ClientResponse, ClusterStatus, MemberStatus};
use aspen_core::error::AspenError;
use aspen_net::ClusterTicket;
use aspen_net::token::{Token, cluster_id, cluster_id_text};
use openraft::ChangeMembers;
use openraft::async_runtime::watch::WatchReceiver;

use super::Placement;
use crate::root::CLUSTER_KEY_FILE;
use crate::state::NodeState;
use aspen_net::now_ms;

pub fn placement(request: &ClientRequest) -> Option<Placement> {
    Some(match request {
        ClientRequest::Init { .. }
        | ClientRequest::TriggerSnapshot
        | ClientRequest::Status
        | ClientRequest::Ticket
        | ClientRequest::NodeInfo
        | ClientRequest::Apps
        | ClientRequest::NodeBuild => Placement::Local,
        ClientRequest::AddLearner { .. }
        | ClientRequest::Promote { .. }
        | ClientRequest::Remove { .. }
        | ClientRequest::TransferLeader { .. } => Placement::Leader { is_write: true },
        _ => return None,
    })
}

fn membership_error(e: impl std::fmt::Display) -> AspenError {
    AspenError::Membership { reason: e.to_string() }
}

pub async fn serve(state: &NodeState, request: ClientRequest) -> Result<ClientResponse, AspenError> {
    match request {
        ClientRequest::Init { members } => {
            if state.is_initialized() {
                return Err(AspenError::AlreadyInitialized);
            }
            let mut all = BTreeMap::new();
            all.insert(state.node_id, state.addr.clone());
            for (id, addr) in members {
                if all.insert(id, addr).is_some() {
                    return Err(AspenError::invalid(format!("node id {id} appears twice in the member list")));
                }
            }
            // The root key stays on this node; every node learns its public half
            // through the log. The root token goes next to it, for the operator.
            let key = aspen_net::identity::load_or_create_secret_key(&state.data_dir.join(CLUSTER_KEY_FILE))
                .map_err(|e| AspenError::storage(e.to_string()))?;
            let token_file = state.root_token_file.clone();
            let token = Token::root(&key, now_ms()).encode();
            aspen_net::identity::write_secret_file(&token_file, token.as_bytes())
                .map_err(|e| AspenError::storage(format!("cannot write {}: {e}", token_file.display())))?;
            state.raft.initialize(all).await.map_err(|e| match e {
                openraft::errors::RaftError::APIError(openraft::errors::InitializeError::NotAllowed(_)) => {
                    AspenError::AlreadyInitialized
                }
                other => membership_error(other),
            })?;
            let public = *key.public().as_bytes();
            crate::root::announce(state, public, Duration::from_secs(30)).await?;
            Ok(ClientResponse::Initialized {
                cluster_id: cluster_id_text(&cluster_id(&key.public())),
                root_token_file: token_file.display().to_string(),
            })
        }
        ClientRequest::AddLearner { node_id, addr } => {
            state.raft.add_learner(node_id, addr, true).await.map_err(membership_error)?;
            Ok(ClientResponse::Done)
        }
        ClientRequest::Promote { node_id } => {
            if state.member_addr(node_id).is_none() {
                return Err(AspenError::Membership {
                    reason: format!("node {node_id} is not a member; add it as a learner first"),
                });
            }
            let ids = BTreeSet::from([node_id]);
            state.raft.change_membership(ChangeMembers::AddVoterIds(ids), true).await.map_err(membership_error)?;
            Ok(ClientResponse::Done)
        }
        ClientRequest::Remove { node_id } => {
            let voters: BTreeSet<u64> = state.raft.voter_ids().collect();
            let ids = BTreeSet::from([node_id]);
            if voters.contains(&node_id) {
                state
                    .raft
                    .change_membership(ChangeMembers::RemoveVoters(ids.clone()), false)
                    .await
                    .map_err(membership_error)?;
            }
            if state.member_addr(node_id).is_some() {
                state.raft.change_membership(ChangeMembers::RemoveNodes(ids), false).await.map_err(membership_error)?;
            }
            Ok(ClientResponse::Done)
        }
        ClientRequest::TransferLeader { node_id } => {
            if !state.raft.voter_ids().any(|v| v == node_id) {
                return Err(AspenError::Membership { reason: format!("node {node_id} is not a voter") });
            }
            state.raft.trigger().transfer_leader(node_id).await.map_err(membership_error)?;
            Ok(ClientResponse::Done)
        }
        ClientRequest::TriggerSnapshot => {
            state.raft.trigger().snapshot().await.map_err(AspenError::internal)?;
            Ok(ClientResponse::Done)
        }
        ClientRequest::Status => Ok(ClientResponse::Status(status(state)?)),
        ClientRequest::Ticket => {
            let m = state.raft.metrics();
            let m = m.borrow_watched();
            let mut nodes: Vec<_> = m.membership_config.membership().nodes().map(|(_, a)| a.clone()).collect();
            if nodes.is_empty() {
                nodes.push(state.addr.clone());
            }
            Ok(ClientResponse::Ticket {
                ticket: ClusterTicket { cluster_id: state.cluster_id(), nodes, token: None }.encode(),
            })
        }
        ClientRequest::NodeInfo => Ok(ClientResponse::NodeInfo {
            node_id: state.node_id,
            addr: state.addr.clone(),
            initialized: state.is_initialized(),
        }),
        ClientRequest::Apps => Ok(ClientResponse::Apps { apps: state.apps.clone() }),
        ClientRequest::NodeBuild => Ok(ClientResponse::Build(crate::build::node_build(state.node_id).await)),
        other => Err(AspenError::invalid(format!("request {} is not an admin request", other.name()))),
    }
}

fn status(state: &NodeState) -> Result<ClusterStatus, AspenError> {
    let m = state.raft.metrics();
    let m = m.borrow_watched();
    let membership = m.membership_config.membership();
    let voters: BTreeSet<u64> = membership.voter_ids().collect();
    let members = membership
        .nodes()
        .map(|(id, addr)| MemberStatus {
            node_id: *id,
            addr: addr.clone(),
            voter: voters.contains(id),
            matched_index: m.replication.as_ref().and_then(|r| r.get(id)).and_then(|l| l.as_ref()).map(|l| l.index),
        })
        .collect();
    Ok(ClusterStatus {
        node_id: state.node_id,
        initialized: !voters.is_empty(),
        state: format!("{:?}", m.state),
        leader: m.current_leader,
        term: m.current_term,
        last_log_index: m.last_log_index,
        last_applied: m.last_applied.as_ref().map(|l| l.index),
        snapshot_index: m.snapshot.as_ref().map(|l| l.index),
        purged_index: m.purged.as_ref().map(|l| l.index),
        revision: state.reader.revision()?,
        members,
        cluster_id: state.cluster_id(),
        raft_refused: state.raft_refused.load(std::sync::atomic::Ordering::Relaxed),
    })
}
