//! Golden bytes of the Raft layer's formats: the log entries and metadata kept in
//! `raft-log.redb` and `state.redb` (postcard of openraft's types over Aspen's type config),
//! and the `aspen/raft/1` wire messages. An openraft upgrade that changed any of them would
//! fail here before a node misread its own log. See `aspen_core::golden`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use aspen_core::api::NodeAddr;
use aspen_core::command::{WriteBatch, WriteCommand};
use aspen_core::golden::{check_file, sample};
use aspen_raft::TypeConfig;
use aspen_raft::types::{Entry, LogId, RaftRequest, RaftResponse, SnapshotMeta, StoredMembership, StreamAppendReply};
use openraft::Membership;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, StreamAppendError, TransferLeaderRequest,
    VoteRequest, VoteResponse,
};
use openraft::testing::log_id;

fn fixture(name: &str) -> PathBuf {
    aspen_core::golden::crate_dir(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(name)
}

fn addr(n: u8) -> NodeAddr {
    NodeAddr { endpoint_id: [n; 32], addrs: vec![format!("127.0.0.1:77{n:02}").parse().unwrap()] }
}

fn membership() -> Membership<u64, NodeAddr> {
    let voters = BTreeSet::from([1, 2, 3]);
    let nodes = BTreeMap::from([(1, addr(1)), (2, addr(2)), (3, addr(3)), (4, addr(4))]);
    Membership::new(vec![voters], nodes).expect("valid membership")
}

fn lid(index: u64) -> LogId {
    log_id::<TypeConfig>(3, 1, index)
}

fn vote() -> aspen_raft::types::Vote {
    openraft::Vote::new(3, 1)
}

fn normal_entry() -> Entry {
    let batch = WriteBatch {
        leader_time_ms: 1_700_000_000_000,
        commands: vec![WriteCommand::Put { key: b"k".to_vec(), value: b"v".to_vec(), lease: None }],
    };
    Entry { log_id: lid(7), payload: openraft::EntryPayload::Normal(batch) }
}

fn entries() -> Vec<(&'static str, Entry)> {
    vec![
        ("Entry.blank", Entry { log_id: lid(5), payload: openraft::EntryPayload::Blank }),
        ("Entry.normal", normal_entry()),
        ("Entry.membership", Entry { log_id: lid(6), payload: openraft::EntryPayload::Membership(membership()) }),
    ]
}

fn stored_membership() -> StoredMembership {
    StoredMembership::new(Some(lid(6)), membership())
}

fn snapshot_meta() -> SnapshotMeta {
    SnapshotMeta { last_log_id: Some(lid(7)), last_membership: stored_membership() }
}

/// The log table's values and the metadata both files keep.
#[test]
fn stored_raft_records_keep_their_bytes() {
    let mut samples: Vec<_> = entries().iter().map(|(name, e)| sample(*name, e)).collect();
    samples.push(sample("Vote", &vote()));
    samples.push(sample("Vote.committed", &{
        let mut v = vote();
        v.committed = true;
        v
    }));
    samples.push(sample("LogId", &lid(7)));
    samples.push(sample("LogId.option", &Some(lid(7))));
    samples.push(sample("StoredMembership", &stored_membership()));
    samples.push(sample("SnapshotMeta", &snapshot_meta()));
    check_file(&fixture("raft_records.txt"), &samples);
}

fn requests() -> Vec<RaftRequest> {
    let append = AppendEntriesRequest::<TypeConfig> {
        vote: vote(),
        prev_log_id: Some(lid(6)),
        leader_commit: Some(lid(6)),
        entries: vec![normal_entry()],
    };
    vec![
        RaftRequest::Append(append),
        RaftRequest::Vote(VoteRequest::new(vote(), Some(lid(7)))),
        RaftRequest::PreVote(VoteRequest::new(vote(), None)),
        RaftRequest::Snapshot { vote: vote(), meta: snapshot_meta() },
        RaftRequest::TransferLeader(TransferLeaderRequest::new(vote(), 2, Some(lid(7)))),
        RaftRequest::StreamAppend,
    ]
}

fn variant_request(r: &RaftRequest) -> &'static str {
    match r {
        RaftRequest::Append(_) => "Append",
        RaftRequest::Vote(_) => "Vote",
        RaftRequest::PreVote(_) => "PreVote",
        RaftRequest::Snapshot { .. } => "Snapshot",
        RaftRequest::TransferLeader(_) => "TransferLeader",
        RaftRequest::StreamAppend => "StreamAppend",
    }
}

fn responses() -> Vec<(&'static str, RaftResponse)> {
    vec![
        ("Append.success", RaftResponse::Append(AppendEntriesResponse::Success)),
        ("Append.partial", RaftResponse::Append(AppendEntriesResponse::PartialSuccess(Some(lid(7))))),
        ("Append.conflict", RaftResponse::Append(AppendEntriesResponse::Conflict)),
        ("Append.higher_vote", RaftResponse::Append(AppendEntriesResponse::HigherVote(vote()))),
        ("Vote", RaftResponse::Vote(VoteResponse::new(vote(), Some(lid(7)), true))),
        ("Snapshot", RaftResponse::Snapshot(SnapshotResponse::new(vote()))),
        ("TransferLeader", RaftResponse::TransferLeader(Ok(()))),
        ("Error", RaftResponse::Error("not a member".into())),
    ]
}

fn variant_response(r: &RaftResponse) -> &'static str {
    match r {
        RaftResponse::Append(_) => "Append",
        RaftResponse::Vote(_) => "Vote",
        RaftResponse::Snapshot(_) => "Snapshot",
        RaftResponse::TransferLeader(_) => "TransferLeader",
        RaftResponse::Error(_) => "Error",
    }
}

#[test]
fn raft_wire_messages_keep_their_bytes() {
    let mut samples: Vec<_> = requests().iter().map(|r| sample(format!("Request.{}", variant_request(r)), r)).collect();
    for (name, r) in responses() {
        assert!(name.starts_with(variant_response(&r)));
        samples.push(sample(format!("Response.{name}"), &r));
    }
    let replies = [
        ("Reply.ok", StreamAppendReply::Result(Ok(Some(lid(7))))),
        ("Reply.conflict", StreamAppendReply::Result(Err(StreamAppendError::Conflict(lid(6))))),
        ("Reply.higher_vote", StreamAppendReply::Result(Err(StreamAppendError::HigherVote(vote())))),
        ("Reply.fatal", StreamAppendReply::Fatal("stopped".into())),
    ];
    for (name, r) in &replies {
        match r {
            StreamAppendReply::Result(_) | StreamAppendReply::Fatal(_) => samples.push(sample(*name, r)),
        }
    }
    check_file(&fixture("raft_wire.txt"), &samples);
}
