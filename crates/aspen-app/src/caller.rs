//! [`Caller`]: who opened a stream on an app's ALPN, and what their token allows.

use std::sync::Arc;

use aspen_core::AspenError;
use aspen_core::capability::Capability;
use aspen_kv::SharedKv;

use crate::auth::ConnAuth;
use crate::cluster::Cluster;
use crate::rights;

/// The client behind one app stream. Its rights are looked up afresh at each check, so a
/// token that expires or is revoked stops working on an open connection.
#[derive(Clone)]
pub struct Caller {
    auth: Arc<ConnAuth>,
    cluster: Arc<dyn Cluster>,
}

impl std::fmt::Debug for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Caller").finish_non_exhaustive()
    }
}

impl Caller {
    pub fn new(auth: Arc<ConnAuth>, cluster: Arc<dyn Cluster>) -> Self {
        Caller { auth, cluster }
    }

    /// The caller's iroh key, proven by the QUIC handshake.
    pub fn remote_key(&self) -> [u8; 32] {
        self.auth.remote()
    }

    /// What the caller's token grants now.
    pub fn capabilities(&self) -> Result<Vec<Capability>, AspenError> {
        self.auth.capabilities(&*self.cluster)
    }

    /// Succeeds when the token grants `app`'s `right` over `scope` (see [`rights::allows`]).
    pub fn require(&self, app: &str, right: &str, scope: &[u8]) -> Result<(), AspenError> {
        let caps = self.capabilities()?;
        if rights::allows(&caps, app, right, scope) { Ok(()) } else { Err(rights::denied(app, right, scope)) }
    }

    /// The KV with the caller's own rights, served by this node without a network hop.
    pub fn kv(&self) -> Result<SharedKv, AspenError> {
        Ok(self.cluster.kv_with_rights(self.capabilities()?))
    }
}
