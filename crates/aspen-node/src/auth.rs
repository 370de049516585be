//! Who may do what on the client protocol: each connection presents a capability token
//! once (`Authenticate`, kept in an `aspen_app::ConnAuth`), and every request on it is
//! checked against that token before it runs, with the needs `aspen_core::capability`
//! lists for it.
//!
//! Without a token a connection may only ask `NodeInfo` and, on a node that is not
//! initialized yet, `Init`. Node-to-node calls have their own members-only ALPN
//! (`crate::member`); here, `Forwarded` and `SetClusterRoot` are accepted only from a
//! member's key, as members of the version before that ALPN send them during a rolling
//! upgrade. No token, not even the root token, lets a client send them.

use aspen_app::ConnAuth;
use aspen_core::api::ClientRequest;
use aspen_core::capability::{first_unmet, required};
use aspen_core::error::AspenError;

use crate::state::NodeState;

/// Decides whether `request` may run on the connection `auth` belongs to.
pub fn authorize(
    state: &NodeState,
    cluster: &dyn aspen_app::Cluster,
    auth: &ConnAuth,
    request: &ClientRequest,
) -> Result<(), AspenError> {
    match request {
        ClientRequest::NodeInfo | ClientRequest::Init { .. } => return Ok(()),
        ClientRequest::Forwarded(_) | ClientRequest::SetClusterRoot { .. } => {
            return if state.is_member_key(&auth.remote()) {
                Ok(())
            } else {
                Err(AspenError::PermissionDenied {
                    reason: format!("{} is accepted only from member nodes of this cluster", request.name()),
                })
            };
        }
        _ => {}
    }
    let Some(needs) = required(request) else {
        return Err(AspenError::PermissionDenied { reason: format!("{} is not a client request", request.name()) });
    };
    match auth.with_capabilities(cluster, |caps| first_unmet(caps, &needs))? {
        None => Ok(()),
        Some(need) => Err(AspenError::PermissionDenied {
            reason: format!("the token does not allow {} ({})", need.describe(), request.name()),
        }),
    }
}
