//! The client protocol (ALPN `aspen/client/1`): one request per bi-stream, dispatched
//! by operation family to the files beside this one.

mod admin;
mod blob;
mod kv;
mod watch;

use std::sync::Arc;

use aspen_core::api::{ClientRequest, ClientResponse};
use aspen_core::error::AspenError;
use iroh::endpoint::{Connection, RecvStream, SendStream};
use iroh::protocol::{AcceptError, ProtocolHandler};
use tracing::Instrument;

use crate::auth::ConnAuth;
use crate::state::{NodeState, Route};

#[derive(Clone)]
pub struct ClientService {
    state: Arc<NodeState>,
}

impl std::fmt::Debug for ClientService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientService").finish_non_exhaustive()
    }
}

impl ClientService {
    pub fn new(state: Arc<NodeState>) -> Self {
        ClientService { state }
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
                let _ = aspen_net::write_frame(&mut send, &ClientResponse::Error(err)).await;
                let _ = send.finish();
                return;
            }
        };
        if let ClientRequest::Authenticate { token } = &request {
            let response = match auth.present(&self.state, token) {
                Ok(()) => ClientResponse::Done,
                Err(e) => ClientResponse::Error(e),
            };
            let _ = aspen_net::write_frame(&mut send, &response).await;
            let _ = send.finish();
            return;
        }
        if let Err(e) = auth.authorize(&self.state, &request) {
            tracing::debug!(op = request.name(), "refused: {e}");
            let _ = aspen_net::write_frame(&mut send, &ClientResponse::Error(e)).await;
            let _ = send.finish();
            return;
        }
        if let ClientRequest::Watch { prefix, start_revision } = request {
            watch::serve(&self.state, send, recv, prefix, start_revision).await;
            return;
        }
        if blob::is_blob_request(&request) {
            let span = tracing::debug_span!("request", op = request.name());
            blob::serve(&self.state, &request, send, recv).instrument(span).await;
            return;
        }
        let span = tracing::debug_span!("request", op = request.name());
        let response = dispatch(&self.state, request).instrument(span).await;
        let _ = aspen_net::write_frame(&mut send, &response).await;
        let _ = send.finish();
    }
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

/// Serves `request` here or forwards it to the leader.
pub async fn dispatch(state: &NodeState, request: ClientRequest) -> ClientResponse {
    let (request, forwarded) = match request {
        ClientRequest::Forwarded(inner) => (*inner, true),
        other => (other, false),
    };
    if matches!(request, ClientRequest::Forwarded(_) | ClientRequest::Watch { .. }) {
        return ClientResponse::Error(AspenError::invalid("a forwarded request may not be forwarded or be a watch"));
    }
    match kv::placement(&request).or_else(|| admin::placement(&request)) {
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
