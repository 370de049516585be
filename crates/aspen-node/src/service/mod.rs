//! The client protocol (ALPN `aspen/client/1`): one request per bi-stream, dispatched
//! by operation family to the files beside this one. Apps have protocols of their own
//! (`crate::apps`); node-to-node calls have theirs (`crate::member`).

mod admin;
mod kv;
mod watch;

use std::sync::Arc;

use aspen_app::ConnAuth;
use aspen_core::api::{ClientRequest, ClientResponse};
use aspen_core::error::AspenError;
use iroh::endpoint::{Connection, RecvStream, SendStream};
use iroh::protocol::{AcceptError, ProtocolHandler};
use tracing::Instrument;

use crate::cluster::NodeCluster;
use crate::state::{NodeState, Route};

#[derive(Clone)]
pub struct ClientService {
    state: Arc<NodeState>,
    cluster: Arc<NodeCluster>,
}

impl std::fmt::Debug for ClientService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientService").finish_non_exhaustive()
    }
}

impl ClientService {
    pub fn new(state: Arc<NodeState>, cluster: Arc<NodeCluster>) -> Self {
        ClientService { state, cluster }
    }

    async fn serve_stream(&self, auth: &ConnAuth, mut send: SendStream, mut recv: RecvStream) {
        let request = match aspen_net::read_frame::<ClientRequest>(&mut recv).await {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(e) => {
                let err = match e {
                    aspen_net::FrameError::TooLarge { len, max } => AspenError::FrameTooLarge { len, max },
                    aspen_net::FrameError::Decode(d) => AspenError::UnknownRequest { detail: d.to_string() },
                    other => AspenError::invalid(other.to_string()),
                };
                respond(&mut send, ClientResponse::Error(err), "request", false).await;
                return;
            }
        };
        if let ClientRequest::Authenticate { token } = &request {
            let response = match auth.present(&*self.cluster, token) {
                Ok(()) => ClientResponse::Done,
                Err(e) => ClientResponse::Error(e),
            };
            respond(&mut send, response, "authenticate", false).await;
            return;
        }
        if let Err(e) = crate::auth::authorize(&self.state, &self.cluster, auth, &request) {
            tracing::debug!(op = request.name(), "refused: {e}");
            respond(&mut send, ClientResponse::Error(e), request.name(), false).await;
            return;
        }
        let name = request.name();
        let is_write = matches!(placement(&request), Some(Placement::Leader { is_write: true }));
        let span = tracing::debug_span!("request", op = name);
        let response = match request {
            ClientRequest::Watch { prefix, start_revision } => {
                watch::serve(&self.state, send, recv, prefix, start_revision).await;
                return;
            }
            // From a member of the version before the members-only ALPN existed, during a
            // rolling upgrade; `authorize` let it through only from a member's key.
            ClientRequest::Forwarded(inner) => dispatch(&self.state, *inner, true).instrument(span).await,
            request if is_moved_to_blob_app(&request) => ClientResponse::Error(AspenError::UnknownRequest {
                detail: format!(
                    "{name} moved to the blob app's own protocol (ALPN aspen/blob/1); use an aspen client of this \
                     version"
                ),
            }),
            request => dispatch(&self.state, request, false).instrument(span).await,
        };
        respond(&mut send, response, name, is_write).await;
    }
}

/// Blob requests of the first protocol version: blobs are an app with an ALPN of its own now.
fn is_moved_to_blob_app(request: &ClientRequest) -> bool {
    matches!(
        request,
        ClientRequest::BlobAdd
            | ClientRequest::BlobGet { .. }
            | ClientRequest::BlobReplicate { .. }
            | ClientRequest::BlobHas { .. }
            | ClientRequest::BlobList { .. }
            | ClientRequest::BlobStatus { .. }
            | ClientRequest::BlobPin { .. }
            | ClientRequest::BlobUnpin { .. }
            | ClientRequest::BlobPins { .. }
    )
}

/// Writes `response` and finishes the stream. An answer too large for one frame is
/// replaced by an error that says so (and, for a write, that it was applied), never
/// dropped.
pub async fn respond(send: &mut SendStream, response: ClientResponse, name: &str, is_write: bool) {
    let frame = match aspen_net::frame::encode_frame(&response) {
        Ok(frame) => frame,
        Err(aspen_net::FrameError::TooLarge { len, max }) => {
            let what = if is_write { format!("{name} (which was applied)") } else { name.to_string() };
            let error = ClientResponse::Error(AspenError::ResponseTooLarge { what, len, max });
            match aspen_net::frame::encode_frame(&error) {
                Ok(frame) => frame,
                Err(_) => return,
            }
        }
        Err(e) => {
            tracing::warn!(op = name, "cannot encode an answer: {e}");
            let error = ClientResponse::Error(AspenError::internal(format!("cannot encode the answer: {e}")));
            match aspen_net::frame::encode_frame(&error) {
                Ok(frame) => frame,
                Err(_) => return,
            }
        }
    };
    let _ = send.write_all(&frame).await;
    let _ = send.finish();
}

impl ProtocolHandler for ClientService {
    async fn accept(&self, connection: Connection) -> Result<(), AcceptError> {
        let auth = Arc::new(ConnAuth::new(*connection.remote_id().as_bytes()));
        loop {
            let (send, recv) = match connection.accept_bi().await {
                Ok(s) => s,
                Err(_) => return Ok(()),
            };
            let this = self.clone();
            let auth = auth.clone();
            tokio::spawn(async move { this.serve_stream(&auth, send, recv).await });
        }
    }
}

/// Where a request runs, or `None` for requests that are not dispatched (watches,
/// authentication, forwarding wrappers and the blob requests of the first version).
fn placement(request: &ClientRequest) -> Option<Placement> {
    kv::placement(request).or_else(|| admin::placement(request))
}

/// Serves `request` here or forwards it to the leader. A `forwarded` request came from a
/// member that believed this node leads: it is never forwarded again.
pub async fn dispatch(state: &NodeState, request: ClientRequest, forwarded: bool) -> ClientResponse {
    match placement(&request) {
        Some(Placement::Local) => serve_here(state, request).await,
        Some(Placement::Leader { is_write }) => match state.route_to_leader().await {
            Ok(Route::Local) => serve_here(state, request).await,
            Ok(Route::Leader(id, _)) if forwarded => ClientResponse::Error(AspenError::NotLeader { leader: Some(id) }),
            Ok(Route::Leader(_, addr)) => state.forwarder.forward(&addr, request, is_write).await,
            Err(e) => ClientResponse::Error(e),
        },
        None => ClientResponse::Error(AspenError::invalid(format!("request {} is not served here", request.name()))),
    }
}

async fn serve_here(state: &NodeState, request: ClientRequest) -> ClientResponse {
    let result = match kv::serve(state, &request).await {
        Some(r) => r,
        None => admin::serve(state, request).await,
    };
    result.unwrap_or_else(ClientResponse::Error)
}

/// Where a request runs.
pub enum Placement {
    /// On whichever node received it.
    Local,
    /// On the leader; `is_write` says whether losing its answer makes the outcome unknown.
    Leader { is_write: bool },
}
