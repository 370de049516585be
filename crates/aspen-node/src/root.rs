//! The cluster root key's public half reaches every node through the log: the node that
//! ran `init` (and holds the key) proposes `SetClusterRoot` until it is applied. If that
//! node crashed in between, it does so again when it starts.

use std::sync::Arc;
use std::time::Duration;

use aspen_core::api::{ClientRequest, ClientResponse};
use aspen_core::command::WriteCommand;
use aspen_core::error::AspenError;

use crate::state::{NodeState, Route};

/// The cluster root secret key, in the data dir of the node that initialized the cluster.
pub const CLUSTER_KEY_FILE: &str = "cluster.key";
/// The root capability token, next to it.
pub const ROOT_TOKEN_FILE: &str = "root.token";

/// Proposes the root key until this node has applied it, or `within` has passed.
pub async fn announce(state: &NodeState, public_key: [u8; 32], within: Duration) -> Result<(), AspenError> {
    let deadline = tokio::time::Instant::now() + within;
    let mut last = None;
    loop {
        match state.security.root() {
            Some(root) if root == public_key => return Ok(()),
            Some(_) => return Err(AspenError::AlreadyInitialized),
            None => {}
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(AspenError::Unavailable {
                reason: format!(
                    "the cluster root key was not replicated in time{}",
                    last.map(|e: AspenError| format!(": {e}")).unwrap_or_default()
                ),
            });
        }
        let attempt = match state.route_to_leader().await {
            Ok(Route::Local) => state.batcher.write(WriteCommand::SetClusterRoot { public_key }).await.map(drop),
            Ok(Route::Leader(_, addr)) => {
                match state.forwarder.forward(&addr, ClientRequest::SetClusterRoot { public_key }, true).await {
                    ClientResponse::Error(e) => Err(e),
                    _ => Ok(()),
                }
            }
            Err(e) => Err(e),
        };
        if let Err(e) = attempt {
            last = Some(e);
        }
        // The write may have committed before this node applied it.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// On start: if this node holds the root key but the cluster has not recorded it, keep
/// proposing it in the background.
pub fn spawn_if_pending(state: Arc<NodeState>) -> Option<tokio::task::JoinHandle<()>> {
    let key = std::fs::read(state.data_dir.join(CLUSTER_KEY_FILE)).ok()?;
    let key: [u8; 32] = key.try_into().ok()?;
    let public = *iroh::SecretKey::from_bytes(&key).public().as_bytes();
    if state.security.root().is_some() {
        return None;
    }
    Some(tokio::spawn(async move {
        loop {
            if state.is_initialized() {
                match announce(&state, public, Duration::from_secs(60)).await {
                    Ok(()) => return,
                    Err(AspenError::AlreadyInitialized) => {
                        tracing::error!("the cluster recorded a different root key than {CLUSTER_KEY_FILE} holds");
                        return;
                    }
                    Err(e) => tracing::warn!("cluster root key not recorded yet: {e}"),
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }))
}
