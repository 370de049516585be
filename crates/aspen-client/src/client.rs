//! [`Client`]: a handle on a cluster, and the one generic [`Client::request`] every typed
//! method wraps.
//!
//! Each request opens its own bi-stream on the shared connection, writes one
//! [`ClientRequest`] frame, finishes its side and reads one [`ClientResponse`] frame, so
//! concurrent requests pipeline. Failures are retried only when the retry cannot change
//! the outcome (see [`crate::retry`]).

use std::sync::Arc;

use aspen_core::AspenError;
use std::collections::HashMap;

use aspen_core::api::{CLIENT_ALPN, ClientRequest, ClientResponse, NodeAddr};
use aspen_net::ClusterTicket;
use aspen_net::frame::{FrameError, encode_frame};
use aspen_net::token::Token;
use serde::de::DeserializeOwned;
use tokio::time::Instant;

use crate::config::ClientConfig;
use crate::error::ClientError;
use crate::pool::{ConnectFailure, Current, NodePool, Presentation, SharedEndpoint};
use crate::retry::{Backoff, is_safe_to_repeat};

/// How long closing the client waits for the endpoint to shut down cleanly. Open
/// connections drain in a round trip; only handshakes to dead nodes take longer, and
/// nobody waits on those.
const CLOSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// A cluster client. Cheap to clone; clones share one connection per protocol.
#[derive(Debug, Clone)]
pub struct Client {
    pool: Arc<NodePool>,
    shared: Arc<SharedEndpoint>,
    /// The encoded token, presented on every connection (app protocols included).
    token: Option<Vec<u8>>,
    /// One pool per app protocol this client has used, by ALPN.
    apps: Arc<std::sync::Mutex<HashMap<Vec<u8>, Arc<NodePool>>>>,
}

/// An answer frame of some protocol: the client protocol's `ClientResponse`, or an app's
/// response enum. The generic request loop reads errors through it.
pub trait Answer: DeserializeOwned + std::fmt::Debug + Send {
    /// The error this answer carries, when it is one.
    fn error(&self) -> Option<&AspenError>;
    /// The error, by value, when this answer is one.
    fn into_error(self) -> Result<Self, AspenError>;
}

impl Answer for ClientResponse {
    fn error(&self) -> Option<&AspenError> {
        match self {
            ClientResponse::Error(e) => Some(e),
            _ => None,
        }
    }
    fn into_error(self) -> Result<Self, AspenError> {
        match self {
            ClientResponse::Error(e) => Err(e),
            other => Ok(other),
        }
    }
}

/// What one attempt of a request came to.
enum Attempt<A> {
    /// The node answered (maybe with an error).
    Answer(A),
    /// The request certainly did not reach a node.
    NotSent(Failure),
    /// The request was sent, but no answer came back.
    Lost(Failure),
    /// Trying again cannot help.
    Fatal(ClientError),
}

/// The last reason a request did not succeed, kept to report when retries run out.
enum Failure {
    Unreachable { tried: String },
    Connection { node: String, reason: String },
    NoAnswer { node: String, reason: String },
    Cluster(AspenError),
    Deadline,
}

impl Client {
    /// Connects to the first reachable node named in `ticket`, failing over between them later.
    pub async fn connect(ticket: &ClusterTicket) -> Result<Client, ClientError> {
        Client::connect_with_config(ticket, ClientConfig::default()).await
    }

    /// Decodes `ticket` and connects as [`Client::connect`] does.
    pub async fn from_ticket_str(ticket: &str) -> Result<Client, ClientError> {
        Client::connect(&ClusterTicket::decode(ticket)?).await
    }

    /// [`Client::connect`] with explicit time bounds. Presents the ticket's token, if any.
    pub async fn connect_with_config(ticket: &ClusterTicket, config: ClientConfig) -> Result<Client, ClientError> {
        let token = match &ticket.token {
            Some(bytes) => {
                Some(Token::from_bytes(bytes).map_err(|e| ClientError::Config(format!("ticket token: {e}")))?)
            }
            None => None,
        };
        Client::over_nodes_with_token(ticket.nodes.clone(), config, token).await
    }

    /// A client that talks to `node` only, never failing over: for admin commands aimed at
    /// one node (`init`) and for tests.
    pub async fn for_node(node: NodeAddr, config: ClientConfig) -> Result<Client, ClientError> {
        Client::over_nodes(vec![node], config).await
    }

    /// [`Client::for_node`], presenting `token`.
    pub async fn for_node_with_token(
        node: NodeAddr,
        config: ClientConfig,
        token: Option<Token>,
    ) -> Result<Client, ClientError> {
        Client::over_nodes_with_token(vec![node], config, token).await
    }

    /// A client over `nodes`, tried in this order, connected to the first that answers.
    /// It presents no token: only `NodeInfo` and `Init` work without one.
    pub async fn over_nodes(nodes: Vec<NodeAddr>, config: ClientConfig) -> Result<Client, ClientError> {
        Client::over_nodes_with_token(nodes, config, None).await
    }

    /// A client over `nodes` that presents `token` on every connection it opens.
    pub async fn over_nodes_with_token(
        nodes: Vec<NodeAddr>,
        config: ClientConfig,
        token: Option<Token>,
    ) -> Result<Client, ClientError> {
        Client::over_nodes_as(nodes, config, token, None).await
    }

    /// [`Client::over_nodes_with_token`] with a fixed client identity: its iroh key is what
    /// a token bound to an audience names. Without one, each client has a fresh key.
    pub async fn over_nodes_as(
        nodes: Vec<NodeAddr>,
        config: ClientConfig,
        token: Option<Token>,
        identity: Option<iroh::SecretKey>,
    ) -> Result<Client, ClientError> {
        if nodes.is_empty() {
            return Err(ClientError::Config("no node to connect to".into()));
        }
        let endpoint = crate::pool::bind_client_endpoint(&nodes, identity.as_ref())
            .await
            .map_err(|e| ClientError::Endpoint(e.to_string()))?;
        // The holder secret (for offline delegation) never leaves the client.
        let token = token.map(|t| t.without_secret().to_bytes());
        let shared = Arc::new(SharedEndpoint::new(endpoint, nodes.clone(), identity));
        let pool = NodePool::new(
            shared.clone(),
            CLIENT_ALPN.to_vec(),
            Presentation::ClientProtocol,
            nodes,
            config,
            token.clone(),
        );
        let client = Client { pool: Arc::new(pool), shared, token, apps: Arc::default() };
        // Bound the first connect by one connect timeout per node.
        let per_node = config.connect_timeout;
        let n = u32::try_from(client.pool.nodes().len()).unwrap_or(u32::MAX);
        let deadline = Instant::now() + per_node.saturating_mul(n);
        match client.pool.connection(deadline).await {
            Ok(_) => Ok(client),
            Err(failure) => {
                client.close().await;
                Err(match failure {
                    ConnectFailure::Unreachable { tried } => ClientError::Unreachable { tried },
                    ConnectFailure::Deadline => ClientError::Unreachable { tried: "nothing (out of time)".into() },
                    ConnectFailure::Refused(e) => ClientError::Aspen(e),
                })
            }
        }
    }

    /// The nodes this client knows, in failover order.
    pub fn nodes(&self) -> &[NodeAddr] {
        self.pool.nodes()
    }

    /// The client's time bounds.
    pub fn config(&self) -> &ClientConfig {
        self.pool.config()
    }

    /// Closes the connections and the endpoint. Requests still in flight fail.
    pub async fn close(&self) {
        let apps: Vec<Arc<NodePool>> = self.apps.lock().map(|a| a.values().cloned().collect()).unwrap_or_default();
        let close = async {
            self.pool.close().await;
            for pool in apps {
                pool.close().await;
            }
            self.shared.close().await;
        };
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, close).await;
    }

    /// A channel to the app protocol `alpn` on this client's nodes, presenting its token:
    /// what each app's client wraps. Channels to one ALPN share one connection.
    pub fn app(&self, alpn: &[u8]) -> AppChannel {
        let mut apps = match self.apps.lock() {
            Ok(a) => a,
            Err(poisoned) => poisoned.into_inner(),
        };
        let pool = apps
            .entry(alpn.to_vec())
            .or_insert_with(|| {
                Arc::new(NodePool::new(
                    self.shared.clone(),
                    alpn.to_vec(),
                    Presentation::AppHello,
                    self.pool.nodes().to_vec(),
                    *self.pool.config(),
                    self.token.clone(),
                ))
            })
            .clone();
        AppChannel { pool }
    }

    /// Closes the QUIC endpoint without closing the client, as a dying socket driver
    /// would: for tests of the client's recovery. Not for other use.
    #[doc(hidden)]
    pub async fn break_endpoint_for_tests(&self) {
        self.shared.endpoint().close().await;
    }

    /// The endpoint's own id, for logs.
    pub fn endpoint_id(&self) -> String {
        self.shared.endpoint().id().to_string()
    }

    /// Sends `req` and returns the node's answer. `ClientResponse::Error` answers are
    /// turned into `ClientError::Aspen`, so an `Ok` is always a success.
    ///
    /// Retries, with backoff and failover, until `request_timeout`: requests that never
    /// left the client, answers that say the request had no effect (`NotLeader`,
    /// `Unavailable`), and requests safe to repeat. A write that was sent and got no
    /// answer fails with `AspenError::OutcomeUnknown` and is not resent.
    pub async fn request(&self, req: ClientRequest) -> Result<ClientResponse, ClientError> {
        let repeatable = is_safe_to_repeat(&req);
        call(&self.pool, req.name(), &req, repeatable).await
    }

    /// Opens a raw bi-stream on the current connection (for watches), reporting failures
    /// to the pool so the next call fails over.
    pub(crate) async fn open_stream(
        &self,
        deadline: Instant,
    ) -> Result<(iroh::endpoint::SendStream, iroh::endpoint::RecvStream, Current), ClientError> {
        open_stream(&self.pool, deadline).await
    }

    /// How many nodes this client can fail over between.
    pub fn node_count(&self) -> usize {
        self.pool.nodes().len()
    }

    pub(crate) async fn mark_failed(&self, current: &Current) {
        self.pool.mark_failed(current.generation).await;
    }
}

/// A channel to one app protocol (see [`Client::app`]): requests with the client's
/// retries and failover, and raw streams for requests that carry bytes.
#[derive(Debug, Clone)]
pub struct AppChannel {
    pool: Arc<NodePool>,
}

/// A raw stream of an [`AppChannel`], and which connection it is on (for
/// [`AppChannel::mark_failed`]).
#[derive(Debug)]
pub struct AppStream {
    pub send: iroh::endpoint::SendStream,
    pub recv: iroh::endpoint::RecvStream,
    /// The node's address, for messages.
    pub node: String,
    generation: u64,
}

impl AppChannel {
    /// Sends one request frame and reads one answer frame, retrying as [`Client::request`]
    /// does: freely when `repeatable`, else only when the request certainly had no effect.
    /// An answer carrying an error comes back as `ClientError::Aspen`.
    pub async fn call<R: serde::Serialize, A: Answer>(
        &self,
        name: &'static str,
        request: &R,
        repeatable: bool,
    ) -> Result<A, ClientError> {
        call(&self.pool, name, request, repeatable).await
    }

    /// Opens a raw bi-stream to the current node.
    pub async fn open_stream(&self) -> Result<AppStream, ClientError> {
        let deadline = Instant::now() + self.pool.config().request_timeout;
        let (send, recv, current) = open_stream(&self.pool, deadline).await?;
        Ok(AppStream { send, recv, node: current.node, generation: current.generation })
    }

    /// Reports that the node behind `stream` misbehaved: the next stream goes elsewhere.
    pub async fn mark_failed(&self, stream: &AppStream) {
        self.pool.mark_failed(stream.generation).await;
    }

    /// How many nodes this channel can fail over between.
    pub fn node_count(&self) -> usize {
        self.pool.nodes().len()
    }

    /// The time bounds of the client this channel belongs to.
    pub fn config(&self) -> &ClientConfig {
        self.pool.config()
    }
}

/// Sends `request` on `pool` and returns the node's answer; see [`Client::request`].
async fn call<R: serde::Serialize, A: Answer>(
    pool: &NodePool,
    name: &'static str,
    request: &R,
    repeatable: bool,
) -> Result<A, ClientError> {
    let frame = encode_frame(request).map_err(|e| match e {
        FrameError::TooLarge { len, max } => ClientError::Aspen(AspenError::FrameTooLarge { len, max }),
        other => ClientError::Aspen(AspenError::invalid(format!("cannot encode request: {other}"))),
    })?;
    let timeout = pool.config().request_timeout;
    let deadline = Instant::now() + timeout;
    let mut backoff = Backoff::default();
    loop {
        let failure = match attempt::<A>(pool, &frame, deadline, repeatable).await {
            Attempt::Answer(answer) => match answer.into_error() {
                Ok(answer) => return Ok(answer),
                Err(e) if e.is_retryable_without_effect() => Failure::Cluster(e),
                Err(e) => return Err(ClientError::Aspen(e)),
            },
            Attempt::NotSent(f) => f,
            Attempt::Lost(f) if repeatable => f,
            Attempt::Lost(f) => {
                return Err(ClientError::Aspen(AspenError::OutcomeUnknown {
                    reason: format!("{name} was sent but {}", f.describe()),
                }));
            }
            Attempt::Fatal(e) => return Err(e),
        };
        match backoff.next_delay(Instant::now(), deadline) {
            Some(delay) => {
                tracing::debug!(request = name, reason = %failure.describe(), ?delay, "retrying");
                tokio::time::sleep(delay).await;
            }
            None => return Err(failure.into_error(name, timeout)),
        }
    }
}

/// One try: a stream on the current connection, the request out, one answer in.
async fn attempt<A: Answer>(pool: &NodePool, frame: &[u8], deadline: Instant, repeatable: bool) -> Attempt<A> {
    let current = match pool.connection(deadline).await {
        Ok(c) => c,
        Err(ConnectFailure::Unreachable { tried }) => return Attempt::NotSent(Failure::Unreachable { tried }),
        Err(ConnectFailure::Deadline) => return Attempt::NotSent(Failure::Deadline),
        Err(ConnectFailure::Refused(e)) => return Attempt::Fatal(ClientError::Aspen(e)),
    };
    let (mut send, mut recv) = match tokio::time::timeout_at(deadline, current.conn.open_bi()).await {
        Ok(Ok(streams)) => streams,
        Ok(Err(e)) => return not_sent(pool, &current, format!("cannot open a stream: {e}")).await,
        Err(_) => return Attempt::NotSent(Failure::Deadline),
    };
    // A failed write left the frame incomplete at the node, which then cannot act on it.
    match tokio::time::timeout_at(deadline, send.write_all(frame)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return not_sent(pool, &current, format!("cannot send: {e}")).await,
        Err(_) => return Attempt::NotSent(Failure::Deadline),
    }
    if let Err(e) = send.finish() {
        return lost(pool, &current, format!("cannot finish the request stream: {e}")).await;
    }
    let answer_deadline =
        if repeatable { deadline.min(Instant::now() + pool.config().read_attempt_timeout) } else { deadline };
    match tokio::time::timeout_at(answer_deadline, aspen_net::read_frame::<A>(&mut recv)).await {
        Ok(Ok(Some(resp))) => {
            if let Some(AspenError::Unavailable { .. }) = resp.error()
                && pool.nodes().len() > 1
            {
                // This node cannot reach a working leader; another one may.
                pool.mark_failed(current.generation).await;
            }
            Attempt::Answer(resp)
        }
        Ok(Ok(None)) => lost(pool, &current, "the node closed the stream without answering".into()).await,
        Ok(Err(FrameError::Decode(e))) => {
            Attempt::Fatal(ClientError::Protocol { node: current.node, reason: format!("undecodable answer: {e}") })
        }
        Ok(Err(FrameError::TooLarge { len, max })) => {
            Attempt::Fatal(ClientError::Aspen(AspenError::FrameTooLarge { len, max }))
        }
        Ok(Err(e)) => lost(pool, &current, e.to_string()).await,
        Err(_) => lost(pool, &current, "no answer in time".into()).await,
    }
}

async fn not_sent<A>(pool: &NodePool, current: &Current, reason: String) -> Attempt<A> {
    pool.mark_failed(current.generation).await;
    Attempt::NotSent(Failure::Connection { node: current.node.clone(), reason })
}

async fn lost<A>(pool: &NodePool, current: &Current, reason: String) -> Attempt<A> {
    pool.mark_failed(current.generation).await;
    Attempt::Lost(Failure::NoAnswer { node: current.node.clone(), reason })
}

/// Opens a raw bi-stream on `pool`'s current connection, reporting failures to the pool
/// so the next call fails over.
async fn open_stream(
    pool: &NodePool,
    deadline: Instant,
) -> Result<(iroh::endpoint::SendStream, iroh::endpoint::RecvStream, Current), ClientError> {
    let current = pool.connection(deadline).await.map_err(|f| match f {
        ConnectFailure::Unreachable { tried } => ClientError::Unreachable { tried },
        ConnectFailure::Refused(e) => ClientError::Aspen(e),
        ConnectFailure::Deadline => ClientError::Aspen(AspenError::Timeout { what: "waiting for a connection".into() }),
    })?;
    match tokio::time::timeout_at(deadline, current.conn.open_bi()).await {
        Ok(Ok((send, recv))) => Ok((send, recv, current)),
        Ok(Err(e)) => {
            pool.mark_failed(current.generation).await;
            Err(ClientError::Connection { node: current.node, reason: format!("cannot open a stream: {e}") })
        }
        Err(_) => Err(ClientError::Aspen(AspenError::Timeout { what: "opening a stream".into() })),
    }
}

impl Failure {
    fn describe(&self) -> String {
        match self {
            Failure::Unreachable { tried } => format!("no node is reachable (tried {tried})"),
            Failure::Connection { node, reason } => format!("the connection to node {node} failed: {reason}"),
            Failure::NoAnswer { node, reason } => format!("node {node} did not answer: {reason}"),
            Failure::Cluster(e) => e.to_string(),
            Failure::Deadline => "the request ran out of time".into(),
        }
    }

    fn into_error(self, name: &str, timeout: std::time::Duration) -> ClientError {
        match self {
            Failure::Unreachable { tried } => ClientError::Unreachable { tried },
            Failure::Connection { node, reason } => ClientError::Connection { node, reason },
            Failure::Cluster(e) => ClientError::Aspen(e),
            Failure::NoAnswer { node, reason } => ClientError::Aspen(AspenError::Timeout {
                what: format!("{name} got no answer within {timeout:?} (last from node {node}: {reason})"),
            }),
            Failure::Deadline => {
                ClientError::Aspen(AspenError::Timeout { what: format!("{name} got no answer within {timeout:?}") })
            }
        }
    }
}
