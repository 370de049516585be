//! What the node does with a client request, wherever it came from (the client protocol,
//! a member forwarding it, or the node-local KV): where it runs (here or on the leader),
//! and serving it, by operation family in the files beside this one.

mod admin;
mod kv;

use aspen_core::api::{ClientRequest, ClientResponse};
use aspen_core::error::AspenError;
use iroh::endpoint::SendStream;

use crate::state::{NodeState, Route};

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

/// Where a request runs, or `None` for requests that are not dispatched (watches,
/// authentication, forwarding wrappers and the blob requests of the first version).
pub fn placement(request: &ClientRequest) -> Option<Placement> {
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
