//! A session: one lease, kept alive in the background, that a client's locks (and other
//! holds) are attached to. If the client dies or is cut off for longer than the TTL, the
//! leader expires the lease and every key attached to it goes with it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use aspen_kv::Kv as _;
use aspen_kv::{KvError, LeaseId, SharedKv};

use crate::CoordError;

#[derive(Debug)]
struct Inner {
    client: SharedKv,
    lease: LeaseId,
    ttl: Duration,
    ended: Arc<AtomicBool>,
    keepalive: tokio::task::JoinHandle<()>,
}

/// A lease-backed session; cheap to clone.
#[derive(Debug, Clone)]
pub struct Session {
    inner: Arc<Inner>,
}

impl Session {
    /// Grants a lease of `ttl` and keeps it alive every `ttl / 3` until [`Session::close`]
    /// or until a keepalive finds it gone.
    pub async fn new(kv: impl aspen_kv::IntoSharedKv, ttl: Duration) -> Result<Session, CoordError> {
        Session::start(kv.into_shared_kv(), ttl, true).await
    }

    /// A session the caller keeps alive itself with [`Session::keepalive`]: its holds end
    /// when the caller stops (a stalled process loses them, as it should).
    pub async fn new_manual(kv: impl aspen_kv::IntoSharedKv, ttl: Duration) -> Result<Session, CoordError> {
        Session::start(kv.into_shared_kv(), ttl, false).await
    }

    /// Extends the lease by its TTL from now (leader's clock).
    pub async fn keepalive(&self) -> Result<(), CoordError> {
        match self.inner.client.lease_keepalive(self.inner.lease).await {
            Ok(_) => Ok(()),
            Err(KvError::Aspen(aspen_kv::AspenError::LeaseNotFound { .. })) => {
                self.inner.ended.store(true, Ordering::SeqCst);
                Err(CoordError::SessionEnded)
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn start(client: SharedKv, ttl: Duration, auto: bool) -> Result<Session, CoordError> {
        let grant = client.lease_grant(ttl).await?;
        let lease = grant.id;
        let ended = Arc::new(AtomicBool::new(false));
        if !auto {
            let keepalive = tokio::spawn(async {});
            return Ok(Session { inner: Arc::new(Inner { client, lease, ttl, ended, keepalive }) });
        }
        let keepalive = {
            let client = client.clone();
            let ended = ended.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(ttl / 3).await;
                    match client.lease_keepalive(lease).await {
                        Ok(_) => {}
                        Err(KvError::Aspen(aspen_kv::AspenError::LeaseNotFound { .. })) => {
                            tracing::warn!(%lease, "session lease ended");
                            ended.store(true, Ordering::SeqCst);
                            return;
                        }
                        Err(e) => tracing::debug!(%lease, "keepalive failed, retrying: {e}"),
                    }
                }
            })
        };
        Ok(Session { inner: Arc::new(Inner { client, lease, ttl, ended, keepalive }) })
    }

    /// The KV this session's holds live in.
    pub fn kv(&self) -> &SharedKv {
        &self.inner.client
    }

    pub fn lease(&self) -> LeaseId {
        self.inner.lease
    }

    pub fn ttl(&self) -> Duration {
        self.inner.ttl
    }

    /// Whether a keepalive found the lease gone (the session's holds are lost).
    pub fn ended(&self) -> bool {
        self.inner.ended.load(Ordering::SeqCst)
    }

    /// Stops the keepalive and revokes the lease: every hold of the session is released.
    pub async fn close(&self) -> Result<(), CoordError> {
        self.inner.keepalive.abort();
        match self.inner.client.lease_revoke(self.inner.lease).await {
            Ok(_) | Err(KvError::Aspen(aspen_kv::AspenError::LeaseNotFound { .. })) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.keepalive.abort();
    }
}
