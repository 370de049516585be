//! [`ConnAuth`]: what one connection has presented, and what it may do now.
//!
//! A connection presents a capability token once (the client protocol's `Authenticate`, an
//! app protocol's [`crate::wire::Hello`]). The token is verified against the cluster's root
//! key when the node knows it (before that, on first use), and re-checked for expiry and
//! revocation each time its rights are asked for. The checks themselves are pure
//! (`aspen_net::token::verify`); this type keeps the per-connection state.

use std::sync::Mutex;

use aspen_core::AspenError;
use aspen_core::capability::Capability;
use aspen_net::token::{Token, TokenError, Verified, verify};

use crate::cluster::Cluster;

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
    remote: [u8; 32],
    presented: Mutex<Presented>,
}

impl std::fmt::Debug for ConnAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnAuth").finish_non_exhaustive()
    }
}

fn refused(e: TokenError) -> AspenError {
    AspenError::Unauthenticated { reason: format!("token refused: {e}") }
}

/// The first app named by `caps` that `cluster` does not serve.
fn unserved_app(cluster: &dyn Cluster, caps: &[Capability]) -> Option<String> {
    let served = cluster.served_apps();
    caps.iter().find_map(|c| match c {
        Capability::App { app, .. } if !served.iter().any(|s| s.name == *app) => Some(app.clone()),
        _ => None,
    })
}

impl ConnAuth {
    pub fn new(remote: [u8; 32]) -> Self {
        ConnAuth { remote, presented: Mutex::new(Presented::None) }
    }

    /// The remote endpoint's iroh key.
    pub fn remote(&self) -> [u8; 32] {
        self.remote
    }

    /// Takes the token this connection presents: verified now if the root key is known.
    pub fn present(&self, cluster: &dyn Cluster, token_bytes: &[u8]) -> Result<(), AspenError> {
        let token = Token::from_bytes(token_bytes).map_err(refused)?.without_secret();
        let presented = match cluster.root_key() {
            Some(root) => Presented::Checked(self.check(cluster, &token, root)?),
            None => Presented::Unchecked(token),
        };
        if let Ok(mut p) = self.presented.lock() {
            *p = presented;
        }
        Ok(())
    }

    fn check(&self, cluster: &dyn Cluster, token: &Token, root: [u8; 32]) -> Result<Verified, AspenError> {
        let root =
            iroh::PublicKey::from_bytes(&root).map_err(|e| AspenError::internal(format!("bad root key: {e}")))?;
        let verified =
            verify(token, &root, aspen_net::now_ms(), &self.remote, |h| cluster.is_revoked(h)).map_err(refused)?;
        if let Some(app) = unserved_app(cluster, &verified.caps) {
            let served: Vec<String> = cluster.served_apps().into_iter().map(|a| a.name).collect();
            return Err(AspenError::Unauthenticated {
                reason: format!(
                    "token refused: it grants rights of app {app:?}, which this cluster does not serve (it serves: {})",
                    if served.is_empty() { "no apps".to_string() } else { served.join(", ") }
                ),
            });
        }
        Ok(verified)
    }

    /// The capabilities this connection holds now: its token checked (on first use, if it
    /// was presented before the root key was known), unexpired and unrevoked.
    pub fn capabilities(&self, cluster: &dyn Cluster) -> Result<Vec<Capability>, AspenError> {
        self.with_capabilities(cluster, <[Capability]>::to_vec)
    }

    /// Runs `f` on the capabilities this connection holds now (see
    /// [`ConnAuth::capabilities`]), without copying them.
    pub fn with_capabilities<R>(
        &self,
        cluster: &dyn Cluster,
        f: impl FnOnce(&[Capability]) -> R,
    ) -> Result<R, AspenError> {
        if !cluster.is_initialized() {
            return Err(AspenError::NotInitialized);
        }
        let Some(root) = cluster.root_key() else {
            return Err(AspenError::Unavailable {
                reason: "the cluster's root key has not been replicated to this node yet".into(),
            });
        };
        let mut presented = self.presented.lock().map_err(|_| AspenError::internal("auth state poisoned"))?;
        if let Presented::Unchecked(token) = &*presented {
            let verified = self.check(cluster, token, root)?;
            *presented = Presented::Checked(verified);
        }
        let Presented::Checked(verified) = &*presented else {
            return Err(AspenError::Unauthenticated {
                reason: "no token presented: pass --token, set ASPEN_TOKEN, or use a ticket that carries a token"
                    .into(),
            });
        };
        verified.still_valid(aspen_net::now_ms(), |h| cluster.is_revoked(h)).map_err(refused)?;
        Ok(f(&verified.caps))
    }
}
