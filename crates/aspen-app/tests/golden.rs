//! Golden bytes of the frames the node speaks around apps: the token an app connection
//! presents, and the members-only protocol. See `aspen_core::golden`.

use std::path::PathBuf;

use aspen_app::wire::{Hello, HelloReply, MemberReply, MemberRequest};
use aspen_core::AspenError;
use aspen_core::api::ClientRequest;
use aspen_core::golden::{check_file, sample};

fn fixture(name: &str) -> PathBuf {
    aspen_core::golden::crate_dir(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(name)
}

fn variant_hello(h: &Hello) -> &'static str {
    match h {
        Hello::Token(_) => "Hello.Token",
    }
}

fn variant_hello_reply(r: &HelloReply) -> &'static str {
    match r {
        HelloReply::Accepted => "HelloReply.Accepted",
        HelloReply::Refused(_) => "HelloReply.Refused",
    }
}

fn variant_member_request(r: &MemberRequest) -> &'static str {
    match r {
        MemberRequest::Forward(_) => "MemberRequest.Forward",
        MemberRequest::App { .. } => "MemberRequest.App",
    }
}

fn variant_member_reply(r: &MemberReply) -> &'static str {
    match r {
        MemberReply::Routed => "MemberReply.Routed",
        MemberReply::Refused(_) => "MemberReply.Refused",
    }
}

#[test]
fn app_and_member_frames_keep_their_bytes() {
    let denied = AspenError::PermissionDenied { reason: "not a member".into() };
    let hello = Hello::Token(vec![1, 2, 3]);
    let replies = [HelloReply::Accepted, HelloReply::Refused(denied.clone())];
    let put = ClientRequest::Put { key: b"k".to_vec(), value: b"v".to_vec(), lease: None };
    let requests = [MemberRequest::Forward(put), MemberRequest::App { app: "blob".into() }];
    let member_replies = [MemberReply::Routed, MemberReply::Refused(denied)];
    let mut samples = vec![sample(variant_hello(&hello), &hello)];
    samples.extend(replies.iter().map(|r| sample(variant_hello_reply(r), r)));
    samples.extend(requests.iter().map(|r| sample(variant_member_request(r), r)));
    samples.extend(member_replies.iter().map(|r| sample(variant_member_reply(r), r)));
    check_file(&fixture("wire.txt"), &samples);
}
