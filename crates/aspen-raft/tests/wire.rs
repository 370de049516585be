//! The Raft wire messages decode any bytes to a message or an error: never a panic, and
//! never an allocation past the bounded frame.

use aspen_net::frame::decode_body;
use aspen_raft::TypeConfig;
use aspen_raft::types::{RaftRequest, RaftResponse, StreamAppendReply};
use openraft::raft::AppendEntriesRequest;
use proptest::prelude::*;

proptest! {
    #[test]
    fn arbitrary_raft_frames_never_panic(body in proptest::collection::vec(any::<u8>(), 0..1024)) {
        let _ = decode_body::<RaftRequest>(&body);
        let _ = decode_body::<RaftResponse>(&body);
        let _ = decode_body::<StreamAppendReply>(&body);
        let _ = decode_body::<AppendEntriesRequest<TypeConfig>>(&body);
    }

    /// Valid messages with one byte changed still decode or fail cleanly.
    #[test]
    fn mutated_raft_frames_never_panic(at in any::<usize>(), flip in 1u8..=255) {
        let vote = openraft::Vote::new(3, 1);
        let append = AppendEntriesRequest::<TypeConfig> { vote, prev_log_id: None, leader_commit: None, entries: vec![] };
        for msg in [RaftRequest::StreamAppend, RaftRequest::Append(append)] {
            let mut body = postcard::to_allocvec(&msg).unwrap();
            let i = at % body.len();
            body[i] ^= flip;
            let _ = decode_body::<RaftRequest>(&body);
        }
    }
}
