//! Golden bytes of every aspen-core format that outlives a process: the client protocol's
//! requests, responses and watch frames (`aspen/client/1`), the Raft log payload and its
//! results, the records the state machine stores, capabilities and errors.
//!
//! The fixtures in `tests/golden/` were recorded by the code of the day each line was
//! added. An enum may only grow at its end; see `aspen_core::golden`. Each `variant_*`
//! function below matches exhaustively, so a new variant does not compile until it has a
//! sample here.

use std::path::PathBuf;

use aspen_core::api::*;
use aspen_core::capability::Capability;
use aspen_core::command::*;
use aspen_core::error::AspenError;
use aspen_core::golden::{Sample, check_file, sample};
use aspen_core::queue::*;
use aspen_core::ratelimit::{RateLimitResult, RateLimitTake};
use aspen_core::types::*;

fn fixture(name: &str) -> PathBuf {
    aspen_core::golden::crate_dir(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(name)
}

fn kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.as_bytes().to_vec(),
        value: value.as_bytes().to_vec(),
        create_revision: 3,
        mod_revision: 7,
        version: 2,
        lease: Some(LeaseId(9)),
    }
}

fn node_addr() -> NodeAddr {
    NodeAddr { endpoint_id: [0xab; 32], addrs: vec!["127.0.0.1:7701".parse().unwrap(), "[::1]:7702".parse().unwrap()] }
}

fn txn() -> Txn {
    Txn {
        compare: vec![
            Compare { key: b"a".to_vec(), op: CompareOp::Equal, target: CompareTarget::Value(b"v".to_vec()) },
            Compare { key: b"b".to_vec(), op: CompareOp::NotEqual, target: CompareTarget::Version(1) },
            Compare { key: b"c".to_vec(), op: CompareOp::Less, target: CompareTarget::CreateRevision(2) },
            Compare { key: b"d".to_vec(), op: CompareOp::Greater, target: CompareTarget::ModRevision(3) },
            Compare { key: b"e".to_vec(), op: CompareOp::Equal, target: CompareTarget::Lease(4) },
        ],
        success: vec![
            TxnOp::Put { key: b"a".to_vec(), value: b"w".to_vec(), lease: Some(LeaseId(5)) },
            TxnOp::Delete { key: b"b".to_vec() },
        ],
        failure: vec![TxnOp::Get { key: b"a".to_vec() }],
    }
}

fn receipt() -> Receipt {
    Receipt { seq: 41, delivery: 2 }
}

fn queue_commands() -> Vec<QueueCommand> {
    vec![
        QueueCommand::Configure {
            queue: "jobs".into(),
            config: QueueConfig {
                visibility_ms: 30_000,
                max_deliveries: 5,
                dead_letter: Some("jobs.dead".into()),
                dedup_window_ms: 60_000,
            },
        },
        QueueCommand::Enqueue {
            queue: "jobs".into(),
            items: vec![
                NewItem { payload: b"build 1".to_vec(), dedup_id: Some("d1".into()) },
                NewItem { payload: b"build 2".to_vec(), dedup_id: None },
            ],
        },
        QueueCommand::Dequeue { queue: "jobs".into(), max: 10, visibility_ms: Some(5_000) },
        QueueCommand::Ack { queue: "jobs".into(), receipts: vec![receipt()] },
        QueueCommand::Nack { queue: "jobs".into(), receipt: receipt(), delay_ms: 100 },
        QueueCommand::Extend { queue: "jobs".into(), receipt: receipt(), visibility_ms: 9_000 },
        QueueCommand::Redrive { from: "jobs.dead".into(), to: "jobs".into(), max: 3 },
    ]
}

fn variant_queue_command(c: &QueueCommand) -> &'static str {
    match c {
        QueueCommand::Configure { .. } => "Configure",
        QueueCommand::Enqueue { .. } => "Enqueue",
        QueueCommand::Dequeue { .. } => "Dequeue",
        QueueCommand::Ack { .. } => "Ack",
        QueueCommand::Nack { .. } => "Nack",
        QueueCommand::Extend { .. } => "Extend",
        QueueCommand::Redrive { .. } => "Redrive",
    }
}

fn queue_results() -> Vec<QueueResult> {
    vec![
        QueueResult::Configured,
        QueueResult::Enqueued {
            items: vec![Enqueued { seq: 7, duplicate: false }, Enqueued { seq: 3, duplicate: true }],
        },
        QueueResult::Delivered {
            items: vec![Delivery {
                receipt: receipt(),
                payload: b"build 1".to_vec(),
                enqueued_ms: 1_700_000_000_000,
                dedup_id: Some("d1".into()),
            }],
            dead_lettered: 1,
            next_visible_in_ms: Some(250),
        },
        QueueResult::Acked { acked: vec![true, false] },
        QueueResult::Rescheduled { visible_in_ms: 1_000 },
        QueueResult::Redriven { moved: 12 },
    ]
}

fn variant_queue_result(r: &QueueResult) -> &'static str {
    match r {
        QueueResult::Configured => "Configured",
        QueueResult::Enqueued { .. } => "Enqueued",
        QueueResult::Delivered { .. } => "Delivered",
        QueueResult::Acked { .. } => "Acked",
        QueueResult::Rescheduled { .. } => "Rescheduled",
        QueueResult::Redriven { .. } => "Redriven",
    }
}

fn take() -> RateLimitTake {
    RateLimitTake { name: "api".into(), capacity: 100, refill: 10, per_ms: 1_000, tokens: 2 }
}

fn errors() -> Vec<AspenError> {
    vec![
        AspenError::KeyTooLarge { len: 5000, max: 4096 },
        AspenError::ValueTooLarge { len: 2_000_000, max: 1_048_576 },
        AspenError::EmptyKey,
        AspenError::TooManyTxnOps { what: "compares".into(), count: 200, max: 128 },
        AspenError::ScanLimitTooLarge { requested: 20_000, max: 10_000 },
        AspenError::BatchTooLarge { detail: "too big".into() },
        AspenError::RangeTooLarge { max: 100_000 },
        AspenError::InvalidLeaseTtl { ttl_ms: 1, min_ms: 1_000, max_ms: 2_000 },
        AspenError::LeaseNotFound { id: 77 },
        AspenError::TooManyLeases { max: 1_000_000 },
        AspenError::Compacted { requested: 3, compacted: 10 },
        AspenError::NotInitialized,
        AspenError::AlreadyInitialized,
        AspenError::NotLeader { leader: Some(2) },
        AspenError::Unavailable { reason: "no leader".into() },
        AspenError::Timeout { what: "get".into() },
        AspenError::OutcomeUnknown { reason: "lost".into() },
        AspenError::InvalidRequest { reason: "bad".into() },
        AspenError::UnknownRequest { detail: "tag 99".into() },
        AspenError::FrameTooLarge { len: 9_000_000, max: 8_388_608 },
        AspenError::Membership { reason: "not a voter".into() },
        AspenError::Storage { reason: "disk".into() },
        AspenError::Internal { reason: "bug".into() },
        AspenError::Unauthenticated { reason: "no token".into() },
        AspenError::PermissionDenied { reason: "read x".into() },
        AspenError::StaleReceipt { queue: "jobs".into(), receipt: "41.2".into() },
        AspenError::RevisionUnavailable { revision: 12, reason: "expired".into() },
        AspenError::ResponseTooLarge { what: "txn".into(), len: 9_000_000, max: 8_388_608 },
    ]
}

fn variant_error(e: &AspenError) -> &'static str {
    match e {
        AspenError::KeyTooLarge { .. } => "KeyTooLarge",
        AspenError::ValueTooLarge { .. } => "ValueTooLarge",
        AspenError::EmptyKey => "EmptyKey",
        AspenError::TooManyTxnOps { .. } => "TooManyTxnOps",
        AspenError::ScanLimitTooLarge { .. } => "ScanLimitTooLarge",
        AspenError::BatchTooLarge { .. } => "BatchTooLarge",
        AspenError::RangeTooLarge { .. } => "RangeTooLarge",
        AspenError::InvalidLeaseTtl { .. } => "InvalidLeaseTtl",
        AspenError::LeaseNotFound { .. } => "LeaseNotFound",
        AspenError::TooManyLeases { .. } => "TooManyLeases",
        AspenError::Compacted { .. } => "Compacted",
        AspenError::NotInitialized => "NotInitialized",
        AspenError::AlreadyInitialized => "AlreadyInitialized",
        AspenError::NotLeader { .. } => "NotLeader",
        AspenError::Unavailable { .. } => "Unavailable",
        AspenError::Timeout { .. } => "Timeout",
        AspenError::OutcomeUnknown { .. } => "OutcomeUnknown",
        AspenError::InvalidRequest { .. } => "InvalidRequest",
        AspenError::UnknownRequest { .. } => "UnknownRequest",
        AspenError::FrameTooLarge { .. } => "FrameTooLarge",
        AspenError::Membership { .. } => "Membership",
        AspenError::Storage { .. } => "Storage",
        AspenError::Internal { .. } => "Internal",
        AspenError::Unauthenticated { .. } => "Unauthenticated",
        AspenError::PermissionDenied { .. } => "PermissionDenied",
        AspenError::StaleReceipt { .. } => "StaleReceipt",
        AspenError::RevisionUnavailable { .. } => "RevisionUnavailable",
        AspenError::ResponseTooLarge { .. } => "ResponseTooLarge",
    }
}

fn write_commands() -> Vec<WriteCommand> {
    let mut commands = vec![
        WriteCommand::Put { key: b"k".to_vec(), value: b"v".to_vec(), lease: Some(LeaseId(3)) },
        WriteCommand::Delete { key: b"k".to_vec() },
        WriteCommand::DeleteRange { start: b"a".to_vec(), end: b"b".to_vec() },
        WriteCommand::Txn(txn()),
        WriteCommand::LeaseGrant { ttl_ms: 10_000 },
        WriteCommand::LeaseKeepAlive { id: LeaseId(3) },
        WriteCommand::LeaseRevoke { id: LeaseId(3) },
        WriteCommand::LeaseExpire { ids: vec![LeaseId(3), LeaseId(4)] },
        WriteCommand::SetClusterRoot { public_key: [0x11; 32] },
        WriteCommand::RevokeToken { id: [0x22; 32] },
        WriteCommand::LeaseRefreshAll,
        WriteCommand::RateLimit(take()),
    ];
    commands.extend(queue_commands().into_iter().map(WriteCommand::Queue));
    commands
}

fn variant_write_command(c: &WriteCommand) -> String {
    match c {
        WriteCommand::Put { .. } => "Put".into(),
        WriteCommand::Delete { .. } => "Delete".into(),
        WriteCommand::DeleteRange { .. } => "DeleteRange".into(),
        WriteCommand::Txn(_) => "Txn".into(),
        WriteCommand::LeaseGrant { .. } => "LeaseGrant".into(),
        WriteCommand::LeaseKeepAlive { .. } => "LeaseKeepAlive".into(),
        WriteCommand::LeaseRevoke { .. } => "LeaseRevoke".into(),
        WriteCommand::LeaseExpire { .. } => "LeaseExpire".into(),
        WriteCommand::SetClusterRoot { .. } => "SetClusterRoot".into(),
        WriteCommand::RevokeToken { .. } => "RevokeToken".into(),
        WriteCommand::LeaseRefreshAll => "LeaseRefreshAll".into(),
        WriteCommand::Queue(q) => format!("Queue.{}", variant_queue_command(q)),
        WriteCommand::RateLimit(_) => "RateLimit".into(),
    }
}

fn write_results() -> Vec<WriteResult> {
    let mut results = vec![
        WriteResult::Put { revision: 8, prev: Some(kv("k", "old")) },
        WriteResult::Delete { revision: 9, deleted: 2 },
        WriteResult::Txn {
            revision: 10,
            succeeded: true,
            results: vec![
                TxnOpResult::Put { prev: None },
                TxnOpResult::Delete { deleted: 1 },
                TxnOpResult::Get { kv: Some(kv("a", "w")) },
            ],
        },
        WriteResult::Lease { id: LeaseId(3), ttl_ms: 10_000, expires_at_ms: 1_700_000_010_000 },
        WriteResult::LeaseRevoked { revision: 11, deleted_keys: 4 },
        WriteResult::LeasesExpired { revision: 12, expired: 2 },
        WriteResult::RateLimit(RateLimitResult { granted: false, available: 0, retry_after_ms: 100 }),
        WriteResult::Done,
    ];
    results.extend(queue_results().into_iter().map(WriteResult::Queue));
    results
}

fn variant_write_result(r: &WriteResult) -> String {
    match r {
        WriteResult::Put { .. } => "Put".into(),
        WriteResult::Delete { .. } => "Delete".into(),
        WriteResult::Txn { .. } => "Txn".into(),
        WriteResult::Lease { .. } => "Lease".into(),
        WriteResult::LeaseRevoked { .. } => "LeaseRevoked".into(),
        WriteResult::LeasesExpired { .. } => "LeasesExpired".into(),
        WriteResult::Queue(q) => format!("Queue.{}", variant_queue_result(q)),
        WriteResult::RateLimit(_) => "RateLimit".into(),
        WriteResult::Done => "Done".into(),
    }
}

fn client_requests() -> Vec<ClientRequest> {
    let hash = [0x5a; 32];
    let mut requests = vec![
        ClientRequest::Get { key: b"k".to_vec(), consistency: ReadConsistency::Linearizable },
        ClientRequest::Scan {
            start: b"a".to_vec(),
            end: b"b".to_vec(),
            limit: 100,
            consistency: ReadConsistency::Stale,
        },
        ClientRequest::Put { key: b"k".to_vec(), value: b"v".to_vec(), lease: Some(LeaseId(3)) },
        ClientRequest::Delete { key: b"k".to_vec() },
        ClientRequest::DeleteRange { start: b"a".to_vec(), end: Vec::new() },
        ClientRequest::Txn(txn()),
        ClientRequest::LeaseGrant { ttl_ms: 10_000 },
        ClientRequest::LeaseKeepAlive { id: LeaseId(3) },
        ClientRequest::LeaseRevoke { id: LeaseId(3) },
        ClientRequest::LeaseList,
        ClientRequest::Watch { prefix: b"app/".to_vec(), start_revision: 5 },
        ClientRequest::Init { members: vec![(2, node_addr())] },
        ClientRequest::AddLearner { node_id: 4, addr: node_addr() },
        ClientRequest::Promote { node_id: 4 },
        ClientRequest::Remove { node_id: 4 },
        ClientRequest::TransferLeader { node_id: 2 },
        ClientRequest::TriggerSnapshot,
        ClientRequest::Status,
        ClientRequest::Ticket,
        ClientRequest::NodeInfo,
        ClientRequest::Forwarded(Box::new(ClientRequest::Put {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            lease: None,
        })),
        ClientRequest::Authenticate { token: vec![1, 2, 3] },
        ClientRequest::RevokeToken { id: [0x22; 32] },
        ClientRequest::SetClusterRoot { public_key: [0x11; 32] },
        ClientRequest::RateLimit(take()),
        ClientRequest::BlobAdd,
        ClientRequest::BlobGet { hash },
        ClientRequest::BlobReplicate { hash, from: Some(2) },
        ClientRequest::BlobHas { hash },
        ClientRequest::BlobList { after: Some(hash), limit: 10 },
        ClientRequest::BlobStatus { hash },
        ClientRequest::BlobPin { name: "release/v1".into(), hash },
        ClientRequest::BlobUnpin { name: "release/v1".into() },
        ClientRequest::BlobPins { after: Some("a".into()), limit: 10 },
        ClientRequest::ScanWith(ScanRequest {
            start: b"a".to_vec(),
            end: b"b".to_vec(),
            limit: 5,
            consistency: ReadConsistency::Linearizable,
            keys_only: true,
            at_revision: Some(42),
        }),
        ClientRequest::Apps,
        ClientRequest::NodeBuild,
    ];
    requests.extend(queue_commands().into_iter().map(ClientRequest::Queue));
    requests
}

fn variant_client_request(r: &ClientRequest) -> String {
    let name = match r {
        ClientRequest::Get { .. } => "Get",
        ClientRequest::Scan { .. } => "Scan",
        ClientRequest::Put { .. } => "Put",
        ClientRequest::Delete { .. } => "Delete",
        ClientRequest::DeleteRange { .. } => "DeleteRange",
        ClientRequest::Txn(_) => "Txn",
        ClientRequest::LeaseGrant { .. } => "LeaseGrant",
        ClientRequest::LeaseKeepAlive { .. } => "LeaseKeepAlive",
        ClientRequest::LeaseRevoke { .. } => "LeaseRevoke",
        ClientRequest::LeaseList => "LeaseList",
        ClientRequest::Watch { .. } => "Watch",
        ClientRequest::Init { .. } => "Init",
        ClientRequest::AddLearner { .. } => "AddLearner",
        ClientRequest::Promote { .. } => "Promote",
        ClientRequest::Remove { .. } => "Remove",
        ClientRequest::TransferLeader { .. } => "TransferLeader",
        ClientRequest::TriggerSnapshot => "TriggerSnapshot",
        ClientRequest::Status => "Status",
        ClientRequest::Ticket => "Ticket",
        ClientRequest::NodeInfo => "NodeInfo",
        ClientRequest::Forwarded(_) => "Forwarded",
        ClientRequest::Authenticate { .. } => "Authenticate",
        ClientRequest::RevokeToken { .. } => "RevokeToken",
        ClientRequest::SetClusterRoot { .. } => "SetClusterRoot",
        ClientRequest::Queue(q) => return format!("Queue.{}", variant_queue_command(q)),
        ClientRequest::RateLimit(_) => "RateLimit",
        ClientRequest::BlobAdd => "BlobAdd",
        ClientRequest::BlobGet { .. } => "BlobGet",
        ClientRequest::BlobReplicate { .. } => "BlobReplicate",
        ClientRequest::BlobHas { .. } => "BlobHas",
        ClientRequest::BlobList { .. } => "BlobList",
        ClientRequest::BlobStatus { .. } => "BlobStatus",
        ClientRequest::BlobPin { .. } => "BlobPin",
        ClientRequest::BlobUnpin { .. } => "BlobUnpin",
        ClientRequest::BlobPins { .. } => "BlobPins",
        ClientRequest::ScanWith(_) => "ScanWith",
        ClientRequest::Apps => "Apps",
        ClientRequest::NodeBuild => "NodeBuild",
    };
    name.into()
}

fn status() -> ClusterStatus {
    ClusterStatus {
        node_id: 1,
        initialized: true,
        state: "Leader".into(),
        leader: Some(1),
        term: 4,
        last_log_index: Some(100),
        last_applied: Some(99),
        snapshot_index: Some(50),
        purged_index: None,
        revision: 77,
        members: vec![MemberStatus { node_id: 1, addr: node_addr(), voter: true, matched_index: Some(100) }],
        cluster_id: "c0ffee".into(),
        raft_refused: 3,
    }
}

fn client_responses() -> Vec<ClientResponse> {
    let hash = [0x5a; 32];
    let mut responses = vec![
        ClientResponse::Get { kv: Some(kv("k", "v")), revision: 7 },
        ClientResponse::Scan { kvs: vec![kv("a", "1"), kv("b", "2")], more: true, revision: 7 },
        ClientResponse::Leases { leases: vec![LeaseInfo { id: LeaseId(3), ttl_ms: 10_000, remaining_ms: -5 }] },
        ClientResponse::Status(status()),
        ClientResponse::Ticket { ticket: "aspenxyz".into() },
        ClientResponse::NodeInfo { node_id: 1, addr: node_addr(), initialized: false },
        ClientResponse::Initialized {
            cluster_id: "c0ffee".into(),
            root_token_file: "/var/lib/aspen/root.token".into(),
        },
        ClientResponse::BlobAdded { hash, size: 1 << 20, replicas: 2 },
        ClientResponse::BlobData { size: 1 << 20 },
        ClientResponse::BlobHas { present: true, size: Some(1 << 20) },
        ClientResponse::BlobList { blobs: vec![BlobEntry { hash, size: 5 }], more: false },
        ClientResponse::BlobStatus {
            holders: vec![
                BlobHolder { node_id: 1, size: Some(5), error: None },
                BlobHolder { node_id: 2, size: None, error: Some("unreachable".into()) },
            ],
        },
        ClientResponse::BlobUnpinned { existed: true },
        ClientResponse::BlobPins { pins: vec![BlobPinEntry { name: "release/v1".into(), hash }], more: true },
        ClientResponse::Done,
        ClientResponse::Apps {
            apps: vec![AppInfo {
                name: "blob".into(),
                alpn: b"aspen/blob/1".to_vec(),
                rights: vec!["read".into(), "write".into()],
            }],
        },
        ClientResponse::Build(NodeBuild {
            node_id: 2,
            version: "0.1.0".into(),
            commit: Some("a1e90d0".into()),
            exe_blake3: Some(hash),
            started_ms: 1_700_000_000_000,
            pid: 4242,
        }),
    ];
    responses.extend(write_results().into_iter().map(ClientResponse::Write));
    responses.extend(errors().into_iter().map(ClientResponse::Error));
    responses
}

fn variant_client_response(r: &ClientResponse) -> String {
    let name = match r {
        ClientResponse::Get { .. } => "Get",
        ClientResponse::Scan { .. } => "Scan",
        ClientResponse::Write(w) => return format!("Write.{}", variant_write_result(w)),
        ClientResponse::Leases { .. } => "Leases",
        ClientResponse::Status(_) => "Status",
        ClientResponse::Ticket { .. } => "Ticket",
        ClientResponse::NodeInfo { .. } => "NodeInfo",
        ClientResponse::Initialized { .. } => "Initialized",
        ClientResponse::BlobAdded { .. } => "BlobAdded",
        ClientResponse::BlobData { .. } => "BlobData",
        ClientResponse::BlobHas { .. } => "BlobHas",
        ClientResponse::BlobList { .. } => "BlobList",
        ClientResponse::BlobStatus { .. } => "BlobStatus",
        ClientResponse::BlobUnpinned { .. } => "BlobUnpinned",
        ClientResponse::BlobPins { .. } => "BlobPins",
        ClientResponse::Done => "Done",
        ClientResponse::Error(e) => return format!("Error.{}", variant_error(e)),
        ClientResponse::Apps { .. } => "Apps",
        ClientResponse::Build(_) => "Build",
    };
    name.into()
}

fn watch_messages() -> Vec<WatchMessage> {
    vec![
        WatchMessage::Started { start_revision: 5 },
        WatchMessage::Events {
            events: vec![
                Event { kind: EventKind::Put, kv: kv("app/a", "1") },
                Event { kind: EventKind::Delete, kv: kv("app/b", "") },
            ],
        },
        WatchMessage::Progress { revision: 9 },
        WatchMessage::Error { error: AspenError::Compacted { requested: 1, compacted: 4 } },
    ]
}

fn variant_watch_message(m: &WatchMessage) -> &'static str {
    match m {
        WatchMessage::Started { .. } => "Started",
        WatchMessage::Events { .. } => "Events",
        WatchMessage::Progress { .. } => "Progress",
        WatchMessage::Error { .. } => "Error",
    }
}

fn capabilities() -> Vec<Capability> {
    vec![
        Capability::All,
        Capability::Read(b"app/".to_vec()),
        Capability::Write(b"app/".to_vec()),
        Capability::Delete(b"app/".to_vec()),
        Capability::Watch(b"app/".to_vec()),
        Capability::ClusterAdmin,
        Capability::BlobRead,
        Capability::BlobWrite,
        Capability::App { app: "forge".into(), right: "push".into(), scope: b"repos/aspen/".to_vec() },
    ]
}

fn variant_capability(c: &Capability) -> &'static str {
    match c {
        Capability::All => "All",
        Capability::Read(_) => "Read",
        Capability::Write(_) => "Write",
        Capability::Delete(_) => "Delete",
        Capability::Watch(_) => "Watch",
        Capability::ClusterAdmin => "ClusterAdmin",
        Capability::BlobRead => "BlobRead",
        Capability::BlobWrite => "BlobWrite",
        Capability::App { .. } => "App",
    }
}

fn named<T: serde::Serialize + serde::de::DeserializeOwned>(
    values: Vec<T>,
    name: impl Fn(&T) -> String,
) -> Vec<Sample> {
    values.iter().map(|v| sample(name(v), v)).collect()
}

#[test]
fn client_requests_keep_their_bytes() {
    check_file(&fixture("client_request.txt"), &named(client_requests(), variant_client_request));
}

#[test]
fn client_responses_keep_their_bytes() {
    check_file(&fixture("client_response.txt"), &named(client_responses(), variant_client_response));
}

#[test]
fn watch_messages_keep_their_bytes() {
    check_file(&fixture("watch_message.txt"), &named(watch_messages(), |m| variant_watch_message(m).into()));
}

#[test]
fn raft_log_payloads_keep_their_bytes() {
    let mut samples = named(write_commands(), variant_write_command);
    samples.push(sample("WriteBatch", &WriteBatch { leader_time_ms: 1_700_000_000_000, commands: write_commands() }));
    check_file(&fixture("write_command.txt"), &samples);
}

#[test]
fn apply_results_keep_their_bytes() {
    let mut samples = named(write_results(), variant_write_result);
    let results = vec![Ok(WriteResult::Done), Err(AspenError::EmptyKey)];
    samples.push(sample("BatchResult", &BatchResult { results }));
    check_file(&fixture("write_result.txt"), &samples);
}

#[test]
fn errors_keep_their_bytes() {
    check_file(&fixture("error.txt"), &named(errors(), |e| variant_error(e).into()));
}

#[test]
fn capabilities_keep_their_bytes() {
    check_file(&fixture("capability.txt"), &named(capabilities(), |c| variant_capability(c).into()));
}

/// What the state machine keeps in its tables and in snapshots, and the queue records it
/// keeps as KV values.
#[test]
fn stored_records_keep_their_bytes() {
    let entry =
        KvEntry { value: b"v".to_vec(), create_revision: 3, mod_revision: 7, version: 2, lease: Some(LeaseId(9)) };
    let no_lease = KvEntry { lease: None, ..entry.clone() };
    let samples = vec![
        sample("KvEntry", &entry),
        sample("KvEntry.no_lease", &no_lease),
        sample("LeaseRecord", &LeaseRecord { id: LeaseId(9), ttl_ms: 10_000, expires_at_ms: 1_700_000_010_000 }),
        sample(
            "QueueMeta",
            &QueueMeta {
                config: QueueConfig::default(),
                next_seq: 10,
                ready: 3,
                in_flight: 2,
                acked: 5,
                dead_lettered: 1,
            },
        ),
        sample(
            "QueueItem.ready",
            &QueueItem {
                payload: b"build".to_vec(),
                deliveries: 0,
                enqueued_ms: 1_700_000_000_000,
                dedup_id: Some("d".into()),
                state: ItemState::Ready,
            },
        ),
        sample(
            "QueueItem.in_flight",
            &QueueItem {
                payload: b"build".to_vec(),
                deliveries: 2,
                enqueued_ms: 1_700_000_000_000,
                dedup_id: None,
                state: ItemState::InFlight { deadline_ms: 1_700_000_030_000 },
            },
        ),
        sample("Event", &Event { kind: EventKind::Put, kv: kv("k", "v") }),
    ];
    check_file(&fixture("records.txt"), &samples);
}
