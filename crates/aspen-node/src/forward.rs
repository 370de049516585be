//! Calls to other members over the members-only ALPN, on one cached connection per peer:
//! client requests forwarded to the leader, and streams an app opens to its counterpart on
//! another member. Also the one call a node makes as a client: a joining node asking the
//! cluster to add it, with the token its join ticket carries.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use aspen_app::wire::{MemberRequest, read_member_reply};
use aspen_core::api::{CLIENT_ALPN, ClientRequest, ClientResponse, NodeAddr};
use aspen_core::error::AspenError;
use aspen_core::limits::FORWARD_TIMEOUT_MS;
use aspen_net::FrameError;
use iroh::Endpoint;
use iroh::endpoint::{Connection, RecvStream, SendStream};
use tokio::sync::Mutex;

const FORWARD_TIMEOUT: Duration = Duration::from_millis(FORWARD_TIMEOUT_MS);
/// How long connecting to a peer may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a peer that could not be reached counts as unreachable when choosing among peers.
const UNREACHABLE_MEMORY: Duration = Duration::from_secs(30);

pub struct Forwarder {
    endpoint: Endpoint,
    /// Member-ALPN connections, by peer key.
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

    async fn connect(&self, to: &NodeAddr, alpn: &[u8]) -> Result<Connection, AspenError> {
        let addr = aspen_net::endpoint_addr(to).map_err(|e| AspenError::internal(format!("bad node address: {e}")))?;
        let conn = tokio::time::timeout(CONNECT_TIMEOUT, self.endpoint.connect(addr, alpn))
            .await
            .map_err(|_| AspenError::Unavailable { reason: "connecting to the node timed out".into() })
            .and_then(|r| r.map_err(|e| AspenError::Unavailable { reason: format!("cannot reach the node: {e}") }));
        self.note_reachable(to, conn.is_ok());
        conn
    }

    /// A live member connection to `to`, reusing the cached one. The cache is not locked
    /// while connecting, so a dead peer never delays requests to the others.
    async fn member_connection(&self, to: &NodeAddr) -> Result<Connection, AspenError> {
        if let Some(c) = self.conns.lock().await.get(&to.endpoint_id)
            && c.close_reason().is_none()
        {
            return Ok(c.clone());
        }
        let conn = self.connect(to, aspen_app::MEMBER_ALPN).await?;
        self.conns.lock().await.insert(to.endpoint_id, conn.clone());
        Ok(conn)
    }

    async fn forget(&self, to: &NodeAddr) {
        self.conns.lock().await.remove(&to.endpoint_id);
    }

    /// A fresh stream on the member connection to `to`.
    async fn member_stream(&self, to: &NodeAddr) -> Result<(SendStream, RecvStream), AspenError> {
        let conn = self.member_connection(to).await?;
        match conn.open_bi().await {
            Ok(s) => Ok(s),
            Err(e) => {
                self.forget(to).await;
                Err(AspenError::Unavailable { reason: format!("cannot open a stream to the node: {e}") })
            }
        }
    }

    /// Sends `request` to the leader at `to`, to be served there and never forwarded on.
    /// Once a write has been sent, losing the answer makes its outcome unknown; before
    /// that, the request certainly had no effect.
    pub async fn forward(&self, to: &NodeAddr, request: ClientRequest, is_write: bool) -> ClientResponse {
        let (send, recv) = match self.member_stream(to).await {
            Ok(s) => s,
            Err(e) => return ClientResponse::Error(e),
        };
        let frame = MemberRequest::Forward(request);
        match exchange(send, recv, &frame, is_write, FORWARD_TIMEOUT).await {
            Ok(resp) => resp,
            Err(e) => {
                self.forget(to).await;
                ClientResponse::Error(e)
            }
        }
    }

    /// Opens a stream to app `app` on the member at `to`; the member has agreed to route it.
    pub async fn open_app_stream(&self, to: &NodeAddr, app: &str) -> Result<(SendStream, RecvStream), AspenError> {
        let (mut send, mut recv) = self.member_stream(to).await?;
        let routed = async {
            aspen_net::write_frame(&mut send, &MemberRequest::App { app: app.to_string() })
                .await
                .map_err(|e| AspenError::Unavailable { reason: format!("cannot reach the member: {e}") })?;
            read_member_reply(&mut recv).await
        };
        match tokio::time::timeout(FORWARD_TIMEOUT, routed).await {
            Ok(Ok(())) => Ok((send, recv)),
            Ok(Err(e)) => {
                if matches!(e, AspenError::Unavailable { .. }) {
                    self.forget(to).await;
                }
                Err(e)
            }
            Err(_) => {
                self.forget(to).await;
                Err(AspenError::Unavailable { reason: format!("the member did not answer within {FORWARD_TIMEOUT:?}") })
            }
        }
    }

    /// Sends `request` to `to` on the client protocol, first presenting `token`: what a
    /// joining node (not a member yet) does. Uses a connection of its own.
    pub async fn call_as_client(&self, to: &NodeAddr, request: ClientRequest, token: Option<&[u8]>) -> ClientResponse {
        let conn = match self.connect(to, CLIENT_ALPN).await {
            Ok(c) => c,
            Err(e) => return ClientResponse::Error(e),
        };
        let call = async {
            if let Some(token) = token {
                let (send, recv) = open(&conn).await?;
                let auth = ClientRequest::Authenticate { token: token.to_vec() };
                match exchange(send, recv, &auth, false, FORWARD_TIMEOUT).await? {
                    ClientResponse::Done => {}
                    other => return Ok(other),
                }
            }
            let (send, recv) = open(&conn).await?;
            exchange(send, recv, &request, true, FORWARD_TIMEOUT).await
        };
        let response = call.await.unwrap_or_else(ClientResponse::Error);
        conn.close(0u32.into(), b"done");
        response
    }
}

async fn open(conn: &Connection) -> Result<(SendStream, RecvStream), AspenError> {
    conn.open_bi().await.map_err(|e| AspenError::Unavailable { reason: format!("cannot open a stream: {e}") })
}

/// Writes one frame and reads one `ClientResponse` frame, within `timeout`.
async fn exchange<T: serde::Serialize>(
    mut send: SendStream,
    mut recv: RecvStream,
    request: &T,
    is_write: bool,
    timeout: Duration,
) -> Result<ClientResponse, AspenError> {
    let lost = |what: String| {
        if is_write { AspenError::OutcomeUnknown { reason: what } } else { AspenError::Unavailable { reason: what } }
    };
    let exchange = async {
        aspen_net::write_frame(&mut send, request).await.map_err(|e| match e {
            // Nothing was sent: too large to encode.
            FrameError::TooLarge { len, max } => AspenError::FrameTooLarge { len, max },
            other => lost(format!("forwarding to the leader failed: {other}")),
        })?;
        let _ = send.finish();
        aspen_net::read_frame::<ClientResponse>(&mut recv)
            .await
            .map_err(|e| lost(format!("the leader's answer was lost: {e}")))?
            .ok_or_else(|| lost("the leader closed the stream without answering".into()))
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(r) => r,
        Err(_) => Err(lost(format!("no answer within {timeout:?}"))),
    }
}
