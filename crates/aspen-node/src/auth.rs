//! Who may do what on the client protocol: each connection presents a capability token
//! once (`Authenticate`), and every request on it is checked against that token before
//! it runs. The token checks themselves are pure (`aspen_net::token::verify`,
//! `aspen_core::capability`); this file keeps the per-connection state.
//!
//! Without a token a connection may only ask `NodeInfo` and, on a node that is not
//! initialized yet, `Init`. Requests marked `Forwarded` and `SetClusterRoot` are accepted
//! only from member nodes, whose iroh keys the membership names.

use std::sync::Mutex;

use aspen_core::api::ClientRequest;
use aspen_core::capability::{first_unmet, required};
use aspen_core::error::AspenError;
use aspen_net::token::{Token, TokenError, Verified, verify};

use crate::batcher::now_ms;
use crate::state::NodeState;

/// What one connection has presented.
enum Presented {
    None,
    /// Presented before this node knew the cluster root key; checked on first use.
    Unchecked(Token),
    Checked(Verified),
}

/// Per-connection authentication state.
pub struct ConnAuth {
    /// The remote endpoint's iroh key, proven by the QUIC handshake.
    pub remote: [u8; 32],
    presented: Mutex<Presented>,
}

fn refused(e: TokenError) -> AspenError {
    AspenError::Unauthenticated { reason: format!("token refused: {e}") }
}

impl ConnAuth {
    pub fn new(remote: [u8; 32]) -> Self {
        ConnAuth { remote, presented: Mutex::new(Presented::None) }
    }

    /// Handles `Authenticate`: verifies the token now if the root key is known.
    pub fn present(&self, state: &NodeState, token_bytes: &[u8]) -> Result<(), AspenError> {
        let token = Token::from_bytes(token_bytes).map_err(refused)?.without_secret();
        let presented = match state.security.root() {
            Some(root) => Presented::Checked(self.check(state, &token, root)?),
            None => Presented::Unchecked(token),
        };
        if let Ok(mut p) = self.presented.lock() {
            *p = presented;
        }
        Ok(())
    }

    fn check(&self, state: &NodeState, token: &Token, root: [u8; 32]) -> Result<Verified, AspenError> {
        let root =
            iroh::PublicKey::from_bytes(&root).map_err(|e| AspenError::internal(format!("bad root key: {e}")))?;
        verify(token, &root, now_ms(), &self.remote, |h| state.security.is_revoked(h)).map_err(refused)
    }

    /// Decides whether `request` may run on this connection.
    pub fn authorize(&self, state: &NodeState, request: &ClientRequest) -> Result<(), AspenError> {
        match request {
            ClientRequest::NodeInfo | ClientRequest::Init { .. } => return Ok(()),
            ClientRequest::Forwarded(_) | ClientRequest::SetClusterRoot { .. } => {
                return if state.is_member_key(&self.remote) {
                    Ok(())
                } else {
                    Err(AspenError::PermissionDenied {
                        reason: format!("{} is accepted only from member nodes of this cluster", request.name()),
                    })
                };
            }
            _ => {}
        }
        if !state.is_initialized() {
            return Err(AspenError::NotInitialized);
        }
        let Some(root) = state.security.root() else {
            return Err(AspenError::Unavailable {
                reason: "the cluster's root key has not been replicated to this node yet".into(),
            });
        };
        let mut presented = self.presented.lock().map_err(|_| AspenError::internal("auth state poisoned"))?;
        if let Presented::Unchecked(token) = &*presented {
            let verified = self.check(state, token, root)?;
            *presented = Presented::Checked(verified);
        }
        let Presented::Checked(verified) = &*presented else {
            return Err(AspenError::Unauthenticated {
                reason: "no token presented: pass --token, set ASPEN_TOKEN, or use a ticket that carries a token"
                    .into(),
            });
        };
        verified.still_valid(now_ms(), |h| state.security.is_revoked(h)).map_err(refused)?;
        let Some(needs) = required(request) else {
            return Err(AspenError::PermissionDenied { reason: format!("{} is not a client request", request.name()) });
        };
        match first_unmet(&verified.caps, &needs) {
            None => Ok(()),
            Some(need) => Err(AspenError::PermissionDenied {
                reason: format!("the token does not allow {} ({})", need.describe(), request.name()),
            }),
        }
    }
}
