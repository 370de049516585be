//! The one connection a client keeps, and failover between the nodes it knows.
//!
//! The client talks to one node at a time over one QUIC connection that every request
//! shares. When that connection is reported broken, the next node in the list is tried,
//! round-robin. A generation number makes sure that many requests failing on the same
//! broken connection move the client on by one node, not by one node each.
//!
//! The QUIC endpoint itself can die under the client: its socket driver stops at the
//! first I/O error, which a network change can cause (seen in tests, where network
//! namespaces come and go beside the client). Every connect then fails at once with
//! "endpoint stopping". The pool notices that and binds a fresh endpoint, unless the
//! client was closed on purpose.

use std::net::SocketAddr;

use aspen_app::wire::{Hello, HelloReply};
use aspen_core::api::{ClientRequest, ClientResponse, NodeAddr};
use aspen_core::error::AspenError;
use aspen_net::EndpointConfig;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use iroh::Endpoint;
use iroh::endpoint::{ConnectError, ConnectWithOptsError, Connection, QuicConnectError};
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::config::ClientConfig;

/// The connection in use, as handed to one request.
/// How long a connect attempt runs alone before the next node is tried alongside it.
pub const CONNECT_STAGGER: std::time::Duration = std::time::Duration::from_millis(250);

#[derive(Debug, Clone)]
pub(crate) struct Current {
    pub(crate) conn: Connection,
    /// Identifies this connection for [`NodePool::mark_failed`].
    pub(crate) generation: u64,
    /// The node's address, for messages.
    pub(crate) node: String,
}

#[derive(Debug)]
struct State {
    current: Option<(usize, Current)>,
    /// Index of the node tried first on the next connect.
    next: usize,
    generation: u64,
}

/// Why no connection could be had.
#[derive(Debug, Clone)]
pub(crate) enum ConnectFailure {
    /// Every node tried refused or did not answer in time.
    Unreachable { tried: String },
    /// The deadline passed while waiting for another request's connect attempt.
    Deadline,
    /// A node refused this client's token: no other node will accept it either.
    Refused(AspenError),
}

/// The client's QUIC endpoint, shared by its connections to every protocol. Replaced when
/// its driver dies (see the module docs), unless the client was closed on purpose.
#[derive(Debug)]
pub(crate) struct SharedEndpoint {
    endpoint: std::sync::Mutex<Endpoint>,
    /// Set by [`SharedEndpoint::close`]: a closed endpoint then stays closed.
    closed: std::sync::atomic::AtomicBool,
    /// The nodes, for the address family of a rebound endpoint.
    nodes: Vec<NodeAddr>,
    /// The client's fixed iroh key, if it has one (kept across rebinds).
    identity: Option<iroh::SecretKey>,
}

impl SharedEndpoint {
    pub(crate) fn new(endpoint: Endpoint, nodes: Vec<NodeAddr>, identity: Option<iroh::SecretKey>) -> Self {
        SharedEndpoint { endpoint: std::sync::Mutex::new(endpoint), closed: Default::default(), nodes, identity }
    }

    pub(crate) fn endpoint(&self) -> Endpoint {
        match self.endpoint.lock() {
            Ok(e) => e.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Binds a fresh endpoint in place of one whose driver died.
    async fn rebind(&self) {
        if self.closed.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        match bind_client_endpoint(&self.nodes, self.identity.as_ref()).await {
            Ok(fresh) => {
                tracing::warn!("the client's QUIC endpoint stopped; bound a new one");
                let old = match self.endpoint.lock() {
                    Ok(mut e) => std::mem::replace(&mut *e, fresh),
                    Err(poisoned) => std::mem::replace(&mut *poisoned.into_inner(), fresh),
                };
                old.close().await;
            }
            Err(e) => tracing::warn!("the client's QUIC endpoint stopped and a new one cannot be bound: {e}"),
        }
    }

    /// Closes the endpoint for good.
    pub(crate) async fn close(&self) {
        self.closed.store(true, std::sync::atomic::Ordering::SeqCst);
        self.endpoint().close().await;
    }
}

/// How a new connection presents the client's token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Presentation {
    /// The client protocol's `Authenticate` request (skipped without a token).
    ClientProtocol,
    /// An app protocol's `Hello` on the connection's first stream (a token is required).
    AppHello,
}

/// The known nodes and the current connection on one ALPN.
#[derive(Debug)]
pub(crate) struct NodePool {
    shared: std::sync::Arc<SharedEndpoint>,
    alpn: Vec<u8>,
    presentation: Presentation,
    nodes: Vec<NodeAddr>,
    config: ClientConfig,
    /// The encoded token presented on every new connection.
    token: Option<Vec<u8>>,
    state: Mutex<State>,
}

impl NodePool {
    /// A pool over `nodes` (which must not be empty), connecting lazily.
    pub(crate) fn new(
        shared: std::sync::Arc<SharedEndpoint>,
        alpn: Vec<u8>,
        presentation: Presentation,
        nodes: Vec<NodeAddr>,
        config: ClientConfig,
        token: Option<Vec<u8>>,
    ) -> Self {
        NodePool {
            shared,
            alpn,
            presentation,
            nodes,
            config,
            token,
            state: Mutex::new(State { current: None, next: 0, generation: 0 }),
        }
    }

    pub(crate) fn nodes(&self) -> &[NodeAddr] {
        &self.nodes
    }

    pub(crate) fn config(&self) -> &ClientConfig {
        &self.config
    }

    pub(crate) fn endpoint(&self) -> Endpoint {
        self.shared.endpoint()
    }

    /// The current connection, or a new one to the first node that answers, trying each
    /// node at most once and giving up at `deadline`.
    pub(crate) async fn connection(&self, deadline: Instant) -> Result<Current, ConnectFailure> {
        let mut state =
            tokio::time::timeout_at(deadline, self.state.lock()).await.map_err(|_| ConnectFailure::Deadline)?;
        if let Some((index, current)) = &state.current {
            if current.conn.close_reason().is_none() {
                return Ok(current.clone());
            }
            tracing::debug!(node = %current.node, "connection closed; trying the next node");
            state.next = (index + 1) % self.nodes.len();
            state.current = None;
        }
        // Happy eyeballs: try the next node first, and start on the one after it whenever
        // the attempts under way have not succeeded within CONNECT_STAGGER, so a dead node
        // delays a connect by the stagger, not by a whole connect timeout.
        let n = self.nodes.len();
        let mut attempts = FuturesUnordered::new();
        let mut started = 0;
        let mut tried = Vec::new();
        let mut endpoint_dead = false;
        loop {
            if started < n && Instant::now() < deadline {
                let index = (state.next + started) % n;
                started += 1;
                let attempt_deadline = deadline.min(Instant::now() + self.config.connect_timeout);
                attempts.push(async move {
                    let node = &self.nodes[index];
                    let result = match tokio::time::timeout_at(attempt_deadline, self.connect(node)).await {
                        Ok(r) => r,
                        Err(_) => {
                            Err(AttemptFailure::new(format!("no answer within {:?}", self.config.connect_timeout)))
                        }
                    };
                    (index, result)
                });
            }
            let more_to_start = started < n;
            let next = if more_to_start {
                match tokio::time::timeout(CONNECT_STAGGER, attempts.next()).await {
                    Ok(next) => next,
                    Err(_) => continue,
                }
            } else {
                attempts.next().await
            };
            match next {
                Some((index, Ok(conn))) => {
                    let node = &self.nodes[index];
                    state.generation += 1;
                    let current = Current { conn, generation: state.generation, node: describe(node) };
                    state.next = index;
                    state.current = Some((index, current.clone()));
                    tracing::debug!(node = %current.node, "connected");
                    return Ok(current);
                }
                Some((_, Err(AttemptFailure { refused: Some(e), .. }))) => return Err(ConnectFailure::Refused(e)),
                Some((index, Err(failure))) => {
                    endpoint_dead |= failure.endpoint_dead;
                    tried.push(format!("{} ({})", describe(&self.nodes[index]), failure.reason));
                }
                None if more_to_start => {}
                None => break,
            }
            if !more_to_start && attempts.is_empty() {
                break;
            }
            if more_to_start && Instant::now() >= deadline && attempts.is_empty() {
                tried.push(format!("{} more not tried: out of time", n - started));
                break;
            }
        }
        if endpoint_dead {
            // The request's retry loop tries again, on the fresh endpoint.
            self.shared.rebind().await;
        }
        Err(ConnectFailure::Unreachable { tried: tried.join(", ") })
    }

    async fn connect(&self, node: &NodeAddr) -> Result<Connection, AttemptFailure> {
        let addr =
            aspen_net::endpoint_addr(node).map_err(|e| AttemptFailure::new(format!("invalid endpoint id: {e}")))?;
        let conn = self.endpoint().connect(addr, &self.alpn).await.map_err(|e| AttemptFailure {
            endpoint_dead: is_endpoint_dead(&e),
            reason: error_chain(&e),
            refused: None,
        })?;
        match (self.presentation, &self.token) {
            (Presentation::ClientProtocol, Some(token)) => authenticate(&conn, token).await?,
            (Presentation::ClientProtocol, None) => {}
            (Presentation::AppHello, Some(token)) => hello(&conn, token).await?,
            (Presentation::AppHello, None) => {
                let e = AspenError::Unauthenticated {
                    reason: "an app protocol needs a token: pass --token, set ASPEN_TOKEN, or use a ticket with one"
                        .into(),
                };
                return Err(AttemptFailure { reason: e.to_string(), endpoint_dead: false, refused: Some(e) });
            }
        }
        Ok(conn)
    }

    /// Reports that the connection of `generation` is broken or unresponsive: the next
    /// request connects to the next node. Later reports about the same connection are ignored.
    pub(crate) async fn mark_failed(&self, generation: u64) {
        let mut state = self.state.lock().await;
        if let Some((index, current)) = &state.current
            && current.generation == generation
        {
            tracing::debug!(node = %current.node, "dropping connection; the next request tries the next node");
            state.next = (index + 1) % self.nodes.len();
            state.current = None;
        }
    }

    /// Closes the current connection.
    pub(crate) async fn close(&self) {
        if let Some((_, current)) = self.state.lock().await.current.take() {
            current.conn.close(0u32.into(), b"client closed");
        }
    }
}

/// Why one connect attempt failed.
struct AttemptFailure {
    reason: String,
    /// The local endpoint can no longer connect anywhere.
    endpoint_dead: bool,
    /// The node refused the token: final, unlike the other failures.
    refused: Option<AspenError>,
}

impl AttemptFailure {
    fn new(reason: String) -> Self {
        AttemptFailure { reason, endpoint_dead: false, refused: None }
    }
}

/// Presents the token as the first request on a new connection.
async fn authenticate(conn: &Connection, token: &[u8]) -> Result<(), AttemptFailure> {
    let request = ClientRequest::Authenticate { token: token.to_vec() };
    let exchange = async {
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| format!("cannot open a stream: {e}"))?;
        aspen_net::write_frame(&mut send, &request).await.map_err(|e| e.to_string())?;
        let _ = send.finish();
        aspen_net::read_frame::<ClientResponse>(&mut recv)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "the node closed the stream without answering".to_string())
    };
    match tokio::time::timeout(std::time::Duration::from_secs(5), exchange).await {
        Ok(Ok(ClientResponse::Done)) => Ok(()),
        Ok(Ok(ClientResponse::Error(e))) if e.is_retryable_without_effect() => {
            Err(AttemptFailure::new(format!("token not checked: {e}")))
        }
        Ok(Ok(ClientResponse::Error(e))) => {
            Err(AttemptFailure { reason: e.to_string(), endpoint_dead: false, refused: Some(e) })
        }
        Ok(Ok(other)) => Err(AttemptFailure::new(format!("unexpected answer to authenticate: {other:?}"))),
        Ok(Err(e)) => Err(AttemptFailure::new(format!("authenticate failed: {e}"))),
        Err(_) => Err(AttemptFailure::new("authenticate got no answer within 5s".into())),
    }
}

/// Presents the token on an app connection's first stream.
async fn hello(conn: &Connection, token: &[u8]) -> Result<(), AttemptFailure> {
    let exchange = async {
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| format!("cannot open a stream: {e}"))?;
        aspen_net::write_frame(&mut send, &Hello::Token(token.to_vec())).await.map_err(|e| e.to_string())?;
        let _ = send.finish();
        aspen_net::read_frame::<HelloReply>(&mut recv)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "the node closed the stream without answering".to_string())
    };
    match tokio::time::timeout(std::time::Duration::from_secs(5), exchange).await {
        Ok(Ok(HelloReply::Accepted)) => Ok(()),
        Ok(Ok(HelloReply::Refused(e))) if e.is_retryable_without_effect() => {
            Err(AttemptFailure::new(format!("token not checked: {e}")))
        }
        Ok(Ok(HelloReply::Refused(e))) => {
            Err(AttemptFailure { reason: e.to_string(), endpoint_dead: false, refused: Some(e) })
        }
        Ok(Err(e)) => Err(AttemptFailure::new(format!("presenting the token failed: {e}"))),
        Err(_) => Err(AttemptFailure::new("presenting the token got no answer within 5s".into())),
    }
}

fn is_endpoint_dead(e: &ConnectError) -> bool {
    matches!(
        e,
        ConnectError::Connect {
            source: ConnectWithOptsError::Noq { source: QuicConnectError::EndpointStopping, .. }
                | ConnectWithOptsError::EndpointClosed { .. },
            ..
        }
    )
}

/// An error with its causes, outermost first: "a: b: c".
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}

/// A node as people read it: its socket addresses, or its endpoint id when it has none.
pub fn describe(node: &NodeAddr) -> String {
    if node.addrs.is_empty() {
        let hex: String = node.endpoint_id.iter().take(5).map(|b| format!("{b:02x}")).collect();
        return format!("{hex}…");
    }
    node.addrs.iter().map(SocketAddr::to_string).collect::<Vec<_>>().join("|")
}

/// A client's endpoint: a fresh identity, no relays, on an ephemeral port.
pub(crate) async fn bind_client_endpoint(
    nodes: &[NodeAddr],
    identity: Option<&iroh::SecretKey>,
) -> Result<iroh::Endpoint, aspen_net::EndpointError> {
    aspen_net::bind_endpoint(EndpointConfig {
        secret_key: identity.cloned().unwrap_or_else(iroh::SecretKey::generate),
        bind: bind_addr_for(nodes),
        alpns: Vec::new(),
        relays: false,
    })
    .await
}

/// The socket a client binds: IPv4 unless the nodes can only be reached over IPv6.
fn bind_addr_for(nodes: &[NodeAddr]) -> SocketAddr {
    let any_v4 = nodes.iter().flat_map(|n| &n.addrs).any(SocketAddr::is_ipv4);
    let any_v6 = nodes.iter().flat_map(|n| &n.addrs).any(SocketAddr::is_ipv6);
    if any_v6 && !any_v4 { SocketAddr::from(([0u16; 8], 0)) } else { SocketAddr::from(([0, 0, 0, 0], 0)) }
}
