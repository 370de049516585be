//! Golden bytes of the blob app's formats: its client protocol (`aspen/blob/1`), the calls
//! between members' blob apps, and the KV records it keeps (keys and values). See
//! `aspen_core::golden`.

use std::path::PathBuf;

use aspen_blob::protocol::{
    Added, BlobEntry, BlobHolder, BlobRequest, BlobResponse, ByteRange, MemberAnswer, MemberCall, PinEntry,
};
use aspen_blob::records;
use aspen_core::AspenError;
use aspen_core::golden::{check_file, recorded_text, sample};

fn fixture(name: &str) -> PathBuf {
    aspen_core::golden::crate_dir(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(name)
}

const HASH: [u8; 32] = [0x5a; 32];

fn requests() -> Vec<BlobRequest> {
    vec![
        BlobRequest::Add { expected: Some(HASH) },
        BlobRequest::Get { hash: HASH, range: Some(ByteRange { offset: 10, len: 20 }) },
        BlobRequest::Has { hash: HASH },
        BlobRequest::List { after: Some(HASH), limit: 10 },
        BlobRequest::Status { hash: HASH },
        BlobRequest::Pin { name: "forge/a".into(), hash: HASH },
        BlobRequest::Unpin { name: "forge/a".into() },
        BlobRequest::Pins { prefix: "forge/".into(), after: Some("forge/a".into()), limit: 10 },
        BlobRequest::AddBatch { count: 3 },
    ]
}

fn variant_request(r: &BlobRequest) -> &'static str {
    match r {
        BlobRequest::Add { .. } => "Add",
        BlobRequest::Get { .. } => "Get",
        BlobRequest::Has { .. } => "Has",
        BlobRequest::List { .. } => "List",
        BlobRequest::Status { .. } => "Status",
        BlobRequest::Pin { .. } => "Pin",
        BlobRequest::Unpin { .. } => "Unpin",
        BlobRequest::Pins { .. } => "Pins",
        BlobRequest::AddBatch { .. } => "AddBatch",
    }
}

fn responses() -> Vec<BlobResponse> {
    let added = Added { hash: HASH, size: 5, replicas: 2 };
    vec![
        BlobResponse::Added(added),
        BlobResponse::Data { size: 100, offset: 10, len: 20 },
        BlobResponse::Has { size: Some(5) },
        BlobResponse::List { blobs: vec![BlobEntry { hash: HASH, size: 5 }], more: true },
        BlobResponse::Status {
            holders: vec![
                BlobHolder { node_id: 1, size: Some(5), error: None },
                BlobHolder { node_id: 2, size: None, error: Some("unreachable".into()) },
            ],
        },
        BlobResponse::Unpinned { existed: true },
        BlobResponse::Pins { pins: vec![PinEntry { name: "forge/a".into(), hash: HASH }], more: false },
        BlobResponse::AddedBatch { blobs: vec![added] },
        BlobResponse::Done,
        BlobResponse::Error(AspenError::PermissionDenied { reason: "blob:write".into() }),
    ]
}

fn variant_response(r: &BlobResponse) -> &'static str {
    match r {
        BlobResponse::Added(_) => "Added",
        BlobResponse::Data { .. } => "Data",
        BlobResponse::Has { .. } => "Has",
        BlobResponse::List { .. } => "List",
        BlobResponse::Status { .. } => "Status",
        BlobResponse::Unpinned { .. } => "Unpinned",
        BlobResponse::Pins { .. } => "Pins",
        BlobResponse::AddedBatch { .. } => "AddedBatch",
        BlobResponse::Done => "Done",
        BlobResponse::Error(_) => "Error",
    }
}

fn member_calls() -> Vec<MemberCall> {
    vec![
        MemberCall::Replicate { hash: HASH, from: Some(2) },
        MemberCall::Has { hash: HASH },
        MemberCall::List { after: None, limit: 100 },
    ]
}

fn variant_member_call(c: &MemberCall) -> &'static str {
    match c {
        MemberCall::Replicate { .. } => "Replicate",
        MemberCall::Has { .. } => "Has",
        MemberCall::List { .. } => "List",
    }
}

fn member_answers() -> Vec<MemberAnswer> {
    vec![
        MemberAnswer::Held { size: Some(5) },
        MemberAnswer::List { blobs: vec![BlobEntry { hash: HASH, size: 5 }], more: false },
        MemberAnswer::Error(AspenError::Unavailable { reason: "no member provided it".into() }),
    ]
}

fn variant_member_answer(a: &MemberAnswer) -> &'static str {
    match a {
        MemberAnswer::Held { .. } => "Held",
        MemberAnswer::List { .. } => "List",
        MemberAnswer::Error(_) => "Error",
    }
}

#[test]
fn blob_protocol_frames_keep_their_bytes() {
    let mut samples: Vec<_> = requests().iter().map(|r| sample(format!("Request.{}", variant_request(r)), r)).collect();
    samples.extend(responses().iter().map(|r| sample(format!("Response.{}", variant_response(r)), r)));
    check_file(&fixture("protocol.txt"), &samples);
}

#[test]
fn blob_member_calls_keep_their_bytes() {
    let mut samples: Vec<_> =
        member_calls().iter().map(|c| sample(format!("Call.{}", variant_member_call(c)), c)).collect();
    samples.extend(member_answers().iter().map(|a| sample(format!("Answer.{}", variant_member_answer(a)), a)));
    check_file(&fixture("member.txt"), &samples);
}

/// The keys a node of the previous version wrote (pins and fresh records) and this one
/// added (the pin index) keep their shape: `records.rs` reads them back.
#[test]
fn blob_record_keys_keep_their_shape() {
    let path = fixture("records.txt");
    let hash: [u8; 32] = std::array::from_fn(|i| i as u8);
    for (name, key) in [
        ("pin_key", records::pin_key("release/v1")),
        ("fresh_key", records::fresh_key(&hash)),
        ("by_hash_key", records::by_hash_key(&hash, "forge/repo")),
    ] {
        let text = String::from_utf8(key.clone()).unwrap();
        assert_eq!(recorded_text(&path, name, || text.clone()), text, "{name} changed shape");
    }
    assert_eq!(records::fresh_hash(&records::fresh_key(&hash)), Some(hash));
    assert_eq!(records::pin_name(&records::pin_key("release/v1")), Some("release/v1"));
}
