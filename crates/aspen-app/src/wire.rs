//! The frames the node itself speaks around apps: the token presented on an app
//! connection ([`Hello`]), and the members-only protocol ([`MEMBER_ALPN`]).
//!
//! Every enum here is frozen: variants are only appended (golden tests in
//! `tests/golden.rs`).
//!
//! On [`MEMBER_ALPN`] each bi-stream starts with one [`MemberRequest`] frame. The node checks
//! that the remote key belongs to a current member before reading it (for every stream, so
//! a removed node loses access at once). `Forward` carries a client request to the leader
//! and is answered with one `ClientResponse` frame. `App` routes the rest of the stream to
//! the named app: the node answers one [`MemberReply`] frame, and then the app's own frames
//! follow both ways.

use aspen_core::AspenError;
use aspen_core::api::ClientRequest;
use iroh::endpoint::{RecvStream, SendStream};
use serde::{Deserialize, Serialize};

/// ALPN of node-to-node calls: accepted only from current members' node keys.
pub const MEMBER_ALPN: &[u8] = b"aspen/member/1";

/// The first frame of an app connection's first stream: the caller's capability token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Hello {
    Token(#[serde(with = "serde_bytes")] Vec<u8>),
}

/// The node's answer to a [`Hello`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HelloReply {
    Accepted,
    Refused(AspenError),
}

/// The first frame of a stream on [`MEMBER_ALPN`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemberRequest {
    /// A client request for the leader, served there and never forwarded again.
    Forward(ClientRequest),
    /// The rest of the stream belongs to app `app` on the receiving node.
    App { app: String },
}

/// The node's answer to `MemberRequest::App`, before the app's own frames.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemberReply {
    Routed,
    Refused(AspenError),
}

/// Writes `reply` and, when it refuses, finishes the stream.
pub async fn write_member_reply(send: &mut SendStream, reply: MemberReply) -> Result<(), aspen_net::FrameError> {
    let refused = matches!(reply, MemberReply::Refused(_));
    aspen_net::write_frame(send, &reply).await?;
    if refused {
        let _ = send.finish();
    }
    Ok(())
}

/// Reads the node's [`MemberReply`] on a freshly opened app member stream.
pub async fn read_member_reply(recv: &mut RecvStream) -> Result<(), AspenError> {
    match aspen_net::read_frame::<MemberReply>(recv).await {
        Ok(Some(MemberReply::Routed)) => Ok(()),
        Ok(Some(MemberReply::Refused(e))) => Err(e),
        Ok(None) => Err(AspenError::Unavailable { reason: "the member closed the stream without answering".into() }),
        Err(e) => Err(AspenError::Unavailable { reason: format!("the member's answer was lost: {e}") }),
    }
}
