//! The members-only protocol (`aspen_app::MEMBER_ALPN`): client requests forwarded to the
//! leader, and streams an app on one member opens to the same app on another. Every stream
//! is checked against the current membership before its first frame is read, so a client
//! (whatever its token) never gets in, and a removed node loses access at once.

use std::sync::Arc;

use aspen_app::wire::{MemberReply, MemberRequest, write_member_reply};
use aspen_core::api::ClientResponse;
use aspen_core::error::AspenError;
use iroh::endpoint::{Connection, RecvStream, SendStream};
use iroh::protocol::{AcceptError, ProtocolHandler};
use tracing::Instrument;

use crate::apps::AppRegistry;
use crate::state::NodeState;

#[derive(Clone)]
pub struct MemberService {
    state: Arc<NodeState>,
    apps: Arc<AppRegistry>,
}

impl std::fmt::Debug for MemberService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemberService").finish_non_exhaustive()
    }
}

impl MemberService {
    pub fn new(state: Arc<NodeState>, apps: Arc<AppRegistry>) -> Self {
        MemberService { state, apps }
    }

    async fn serve_stream(&self, remote: [u8; 32], mut send: SendStream, mut recv: RecvStream) {
        let request = match aspen_net::read_frame::<MemberRequest>(&mut recv).await {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(e) => {
                let refused = AspenError::UnknownRequest { detail: format!("member request: {e}") };
                let _ = write_member_reply(&mut send, MemberReply::Refused(refused)).await;
                return;
            }
        };
        // Checked per stream, against the membership as applied now.
        let from = self.state.member_with_key(&remote);
        let Some(from) = from else {
            tracing::debug!("refused a member stream from a key that is not a member's");
            let refused = AspenError::PermissionDenied {
                reason: "the members-only protocol is accepted only from member nodes of this cluster".into(),
            };
            match request {
                MemberRequest::Forward(request) => {
                    crate::ops::respond(&mut send, ClientResponse::Error(refused), request.name(), false).await
                }
                MemberRequest::App { .. } => {
                    let _ = write_member_reply(&mut send, MemberReply::Refused(refused)).await;
                }
            }
            return;
        };
        match request {
            MemberRequest::Forward(request) => {
                let name = request.name();
                let is_write = !aspen_client_retry_safe(&request);
                let span = tracing::debug_span!("forwarded", op = name, from);
                let response = match request {
                    // Not started: the forwarding node's client sends it elsewhere.
                    _ if self.state.drain.is_stopping() => ClientResponse::Error(crate::drain::Drain::refusal()),
                    aspen_core::api::ClientRequest::Watch { .. }
                    | aspen_core::api::ClientRequest::Forwarded(_)
                    | aspen_core::api::ClientRequest::Authenticate { .. } => {
                        ClientResponse::Error(AspenError::invalid(
                            "a forwarded request may not be a watch, an authentication or another forward",
                        ))
                    }
                    request => crate::ops::dispatch(&self.state, request, true).instrument(span).await,
                };
                crate::ops::respond(&mut send, response, name, is_write).await;
            }
            MemberRequest::App { app } => match self.apps.handler(&app) {
                Ok(handler) => {
                    if write_member_reply(&mut send, MemberReply::Routed).await.is_ok() {
                        handler.serve_member(from, send, recv).await;
                    }
                }
                Err(e) => {
                    let _ = write_member_reply(&mut send, MemberReply::Refused(e)).await;
                }
            },
        }
    }
}

/// Whether losing the answer to `request` leaves its outcome known (reads): only for the
/// wording of an answer too large to send.
fn aspen_client_retry_safe(request: &aspen_core::api::ClientRequest) -> bool {
    use aspen_core::api::ClientRequest as R;
    matches!(request, R::Get { .. } | R::Scan { .. } | R::ScanWith(_) | R::LeaseList | R::Status | R::Ticket | R::Apps)
}

impl ProtocolHandler for MemberService {
    async fn accept(&self, connection: Connection) -> Result<(), AcceptError> {
        let remote = *connection.remote_id().as_bytes();
        loop {
            let (send, recv) = match connection.accept_bi().await {
                Ok(s) => s,
                Err(_) => return Ok(()),
            };
            let this = self.clone();
            self.state.drain.spawn(async move { this.serve_stream(remote, send, recv).await });
        }
    }
}
