//! The apps a node serves: starting them, and the connection loop of each app's ALPN.
//!
//! A connection on an app's ALPN first presents a token ([`aspen_app::wire::Hello`] on its
//! first stream); the node checks it as it checks client tokens and refuses the connection
//! otherwise. Every later stream goes to the app with the [`Caller`] that opened it.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use aspen_app::wire::{Hello, HelloReply};
use aspen_app::{App, AppHandler, Caller, ConnAuth};
use aspen_core::error::AspenError;
use iroh::endpoint::Connection;
use iroh::protocol::{AcceptError, ProtocolHandler};

use crate::cluster::NodeCluster;

/// How long a new app connection may take to present its token.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// The started apps, by name; filled once every app has started.
#[derive(Default)]
pub struct AppRegistry {
    handlers: OnceLock<HashMap<String, Arc<dyn AppHandler>>>,
}

impl AppRegistry {
    pub fn set(&self, handlers: HashMap<String, Arc<dyn AppHandler>>) {
        let _ = self.handlers.set(handlers);
    }

    /// The handler of app `name`.
    pub fn handler(&self, name: &str) -> Result<Arc<dyn AppHandler>, AspenError> {
        let Some(handlers) = self.handlers.get() else {
            return Err(AspenError::Unavailable { reason: "this node's apps are still starting".into() });
        };
        handlers
            .get(name)
            .cloned()
            .ok_or_else(|| AspenError::UnknownRequest { detail: format!("this node serves no app named {name:?}") })
    }

    /// Every started handler.
    pub fn all(&self) -> Vec<Arc<dyn AppHandler>> {
        self.handlers.get().map(|h| h.values().cloned().collect()).unwrap_or_default()
    }
}

/// Checks that `apps` have distinct names and ALPNs that no other protocol of the node uses.
pub fn check_unique(apps: &[Arc<dyn App>], reserved: &[&[u8]]) -> Result<(), String> {
    let infos: Vec<_> = apps.iter().map(|a| a.info()).collect();
    for (i, a) in infos.iter().enumerate() {
        if infos[..i].iter().any(|b| b.name == a.name) {
            return Err(format!("two apps are named {:?}", a.name));
        }
        if infos[..i].iter().any(|b| b.alpn == a.alpn) || reserved.contains(&a.alpn.as_slice()) {
            return Err(format!("app {:?} uses an ALPN another protocol uses", a.name));
        }
    }
    Ok(())
}

/// The connection loop of one app's ALPN.
#[derive(Clone)]
pub struct AppProtocol {
    name: String,
    handler: Arc<dyn AppHandler>,
    cluster: Arc<NodeCluster>,
    drain: crate::drain::Drain,
}

impl std::fmt::Debug for AppProtocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppProtocol").field("name", &self.name).finish_non_exhaustive()
    }
}

impl AppProtocol {
    pub fn new(
        name: String,
        handler: Arc<dyn AppHandler>,
        cluster: Arc<NodeCluster>,
        drain: crate::drain::Drain,
    ) -> Self {
        AppProtocol { name, handler, cluster, drain }
    }

    /// Reads the token on the connection's first stream and answers whether it is taken.
    async fn hello(&self, connection: &Connection, auth: &ConnAuth) -> Result<(), AspenError> {
        let (mut send, mut recv) = connection
            .accept_bi()
            .await
            .map_err(|e| AspenError::Unavailable { reason: format!("no first stream: {e}") })?;
        let result = match aspen_net::read_frame::<Hello>(&mut recv).await {
            Ok(Some(Hello::Token(token))) => {
                // Checked now when the node knows the root key (else on first use).
                auth.present(&*self.cluster, &token)
            }
            Ok(None) => Err(AspenError::Unauthenticated { reason: "the connection presented no token".into() }),
            Err(e) => Err(AspenError::Unauthenticated { reason: format!("the first frame is not a token: {e}") }),
        };
        let reply = match &result {
            Ok(()) => HelloReply::Accepted,
            Err(e) => HelloReply::Refused(e.clone()),
        };
        let _ = aspen_net::write_frame(&mut send, &reply).await;
        let _ = send.finish();
        result
    }
}

impl ProtocolHandler for AppProtocol {
    async fn accept(&self, connection: Connection) -> Result<(), AcceptError> {
        let auth = Arc::new(ConnAuth::new(*connection.remote_id().as_bytes()));
        match tokio::time::timeout(HELLO_TIMEOUT, self.hello(&connection, &auth)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::debug!(app = %self.name, "refused an app connection: {e}");
                // Let the refusal reach the client before the connection goes.
                tokio::time::sleep(Duration::from_millis(100)).await;
                connection.close(1u32.into(), b"token refused");
                return Ok(());
            }
            Err(_) => {
                connection.close(1u32.into(), b"no token in time");
                return Ok(());
            }
        }
        let cluster: Arc<dyn aspen_app::Cluster> = self.cluster.clone();
        loop {
            let (send, recv) = match connection.accept_bi().await {
                Ok(s) => s,
                Err(_) => return Ok(()),
            };
            let caller = Caller::new(auth.clone(), cluster.clone());
            // Counted, so a stopping node lets it finish (within its drain limit).
            self.drain.spawn(self.handler.clone().serve(caller, send, recv));
        }
    }
}
