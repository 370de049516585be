//! The client protocol (ALPN `aspen/client/1`): one request per bi-stream, authorized
//! against the connection's token, then dispatched (`crate::ops`) or, for a watch, streamed
//! (`watch.rs`). Apps have protocols of their own (`crate::apps`); node-to-node calls have
//! theirs (`crate::member`).

mod watch;

use std::sync::Arc;

use aspen_app::ConnAuth;
use aspen_core::api::{ClientRequest, ClientResponse};
use aspen_core::error::AspenError;
use iroh::endpoint::{Connection, RecvStream, SendStream};
use iroh::protocol::{AcceptError, ProtocolHandler};
use tokio_util::task::task_tracker::TaskTrackerToken;
use tracing::Instrument;

use crate::cluster::NodeCluster;
use crate::drain::Drain;
use crate::ops::{Placement, dispatch, placement, respond};
use crate::state::NodeState;

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

    /// Serves one request; `in_flight` counts it for a stopping node's drain.
    async fn serve_stream(
        &self,
        auth: &ConnAuth,
        in_flight: TaskTrackerToken,
        mut send: SendStream,
        mut recv: RecvStream,
    ) {
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
        if self.state.drain.is_stopping() {
            respond(&mut send, ClientResponse::Error(Drain::refusal()), request.name(), false).await;
            return;
        }
        if let ClientRequest::Authenticate { token } = &request {
            let response = match auth.present(&*self.cluster, token) {
                Ok(()) => ClientResponse::Done,
                Err(e) => ClientResponse::Error(e),
            };
            respond(&mut send, response, "authenticate", false).await;
            return;
        }
        if let Err(e) = crate::auth::authorize(&self.state, &*self.cluster, auth, &request) {
            tracing::debug!(op = request.name(), "refused: {e}");
            respond(&mut send, ClientResponse::Error(e), request.name(), false).await;
            return;
        }
        let name = request.name();
        let is_write = matches!(placement(&request), Some(Placement::Leader { is_write: true }));
        let span = tracing::debug_span!("request", op = name);
        let response = match request {
            ClientRequest::Watch { prefix, start_revision } => {
                // A watch lasts as long as its client wants: no stop waits for it.
                drop(in_flight);
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
            let in_flight = self.state.drain.token();
            tokio::spawn(async move { this.serve_stream(&auth, in_flight, send, recv).await });
        }
    }
}
