//! Forwarding client requests to the leader (and blob requests to other members), over the
//! client protocol, on one cached connection per peer.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use aspen_core::api::{CLIENT_ALPN, ClientRequest, ClientResponse, NodeAddr};
use aspen_core::error::AspenError;
use aspen_core::limits::FORWARD_TIMEOUT_MS;
use iroh::Endpoint;
use iroh::endpoint::Connection;
use tokio::sync::Mutex;

const FORWARD_TIMEOUT: Duration = Duration::from_millis(FORWARD_TIMEOUT_MS);
/// How long a peer that could not be reached counts as unreachable when choosing among peers.
const UNREACHABLE_MEMORY: Duration = Duration::from_secs(30);

pub struct Forwarder {
    endpoint: Endpoint,
    conns: Mutex<HashMap<[u8; 32], Connection>>,
    /// When each peer last failed to connect; cleared by its next success.
    unreachable: std::sync::Mutex<HashMap<[u8; 32], Instant>>,
}

impl Forwarder {
    pub fn new(endpoint: Endpoint) -> Self {
        Forwarder { endpoint, conns: Mutex::new(HashMap::new()), unreachable: Default::default() }
    }

    /// Whether connecting to `to` failed within the last [`UNREACHABLE_MEMORY`], so a
    /// choice among peers can try the others first.
    pub fn recently_unreachable(&self, to: &NodeAddr) -> bool {
        let failed = self.unreachable.lock().map(|m| m.get(&to.endpoint_id).copied()).unwrap_or(None);
        failed.is_some_and(|at| at.elapsed() < UNREACHABLE_MEMORY)
    }

    fn note_reachable(&self, to: &NodeAddr, reachable: bool) {
        if let Ok(mut m) = self.unreachable.lock() {
            if reachable {
                m.remove(&to.endpoint_id);
            } else {
                m.insert(to.endpoint_id, Instant::now());
            }
        }
    }

    /// A live connection to `to`, reusing the cached one. The cache is not locked while
    /// connecting, so a dead peer never delays requests to the others.
    async fn connection(&self, to: &NodeAddr) -> Result<Connection, AspenError> {
        if let Some(c) = self.conns.lock().await.get(&to.endpoint_id)
            && c.close_reason().is_none()
        {
            return Ok(c.clone());
        }
        let addr = aspen_net::endpoint_addr(to).map_err(|e| AspenError::internal(format!("bad node address: {e}")))?;
        let conn = tokio::time::timeout(Duration::from_secs(5), self.endpoint.connect(addr, CLIENT_ALPN))
            .await
            .map_err(|_| AspenError::Unavailable { reason: "connecting to the node timed out".into() })
            .and_then(|r| r.map_err(|e| AspenError::Unavailable { reason: format!("cannot reach the node: {e}") }));
        self.note_reachable(to, conn.is_ok());
        let conn = conn?;
        self.conns.lock().await.insert(to.endpoint_id, conn.clone());
        Ok(conn)
    }

    /// Sends `request` to the leader, marked as forwarded so it is never forwarded on.
    pub async fn forward(&self, to: &NodeAddr, request: ClientRequest, is_write: bool) -> ClientResponse {
        self.call(to, ClientRequest::Forwarded(Box::new(request)), is_write).await
    }

    /// Sends `request` to `to` as is. Once a write has been sent, losing the answer
    /// makes its outcome unknown; before that, the request certainly had no effect.
    pub async fn call(&self, to: &NodeAddr, request: ClientRequest, is_write: bool) -> ClientResponse {
        self.call_as(to, request, is_write, None).await
    }

    /// [`Forwarder::forward`] of a request that changes nothing if repeated, with its own
    /// patience: a blob copy may take far longer than forwarding usually does.
    pub async fn forward_with_timeout(
        &self,
        to: &NodeAddr,
        request: ClientRequest,
        timeout: Duration,
    ) -> ClientResponse {
        let conn = match self.connection(to).await {
            Ok(c) => c,
            Err(e) => return ClientResponse::Error(e),
        };
        self.exchange(&conn, to, &ClientRequest::Forwarded(Box::new(request)), false, timeout).await
    }

    /// [`Forwarder::call`], first presenting `token` on the connection (a joining node,
    /// which is not a member yet, asks with the token its join ticket carries).
    pub async fn call_as(
        &self,
        to: &NodeAddr,
        request: ClientRequest,
        is_write: bool,
        token: Option<&[u8]>,
    ) -> ClientResponse {
        let conn = match self.connection(to).await {
            Ok(c) => c,
            Err(e) => return ClientResponse::Error(e),
        };
        if let Some(token) = token {
            let auth = ClientRequest::Authenticate { token: token.to_vec() };
            match self.exchange(&conn, to, &auth, false, FORWARD_TIMEOUT).await {
                ClientResponse::Done => {}
                other => return other,
            }
        }
        self.exchange(&conn, to, &request, is_write, FORWARD_TIMEOUT).await
    }

    async fn exchange(
        &self,
        conn: &Connection,
        to: &NodeAddr,
        request: &ClientRequest,
        is_write: bool,
        timeout: Duration,
    ) -> ClientResponse {
        let lost = |what: String| {
            if is_write {
                AspenError::OutcomeUnknown { reason: what }
            } else {
                AspenError::Unavailable { reason: what }
            }
        };
        let (mut send, mut recv) = match conn.open_bi().await {
            Ok(s) => s,
            Err(e) => {
                self.conns.lock().await.remove(&to.endpoint_id);
                return ClientResponse::Error(AspenError::Unavailable { reason: format!("leader stream: {e}") });
            }
        };
        let exchange = async {
            aspen_net::write_frame(&mut send, request)
                .await
                .map_err(|e| lost(format!("forwarding to the leader failed: {e}")))?;
            let _ = send.finish();
            aspen_net::read_frame::<ClientResponse>(&mut recv)
                .await
                .map_err(|e| lost(format!("the leader's answer was lost: {e}")))?
                .ok_or_else(|| lost("the leader closed the stream without answering".into()))
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(Ok(resp)) => resp,
            Ok(Err(e)) => {
                self.conns.lock().await.remove(&to.endpoint_id);
                ClientResponse::Error(e)
            }
            Err(_) => {
                self.conns.lock().await.remove(&to.endpoint_id);
                ClientResponse::Error(lost(format!("no answer within {timeout:?}")))
            }
        }
    }
}
