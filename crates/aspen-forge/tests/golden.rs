//! Golden bytes of the forge's formats: its protocol (`aspen/forge/1`) and the records it
//! keeps in the KV. See `aspen_core::golden`.

use std::path::PathBuf;

use aspen_core::AspenError;
use aspen_core::golden::{check_file, recorded_text, sample};
use aspen_forge::cob::{self, Action, Change, CobKind, CobState, CobStatus, Verdict};
use aspen_forge::cob_index::{self, CobSummary};
use aspen_forge::protocol::{
    EventEntry, ForgeRequest, ForgeResponse, GcReport, GitService, RefEntry, RepoInfo, RepoSummary,
};
use aspen_forge::records::{self, PackRecord, PushEvent, RepoRecord, RevisionEvent};
use aspen_forge::status::{self, CommitStatus, StatusEntry, StatusState};

fn fixture(name: &str) -> PathBuf {
    aspen_core::golden::crate_dir(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(name)
}

fn requests() -> Vec<ForgeRequest> {
    vec![
        ForgeRequest::CreateRepo { name: "repos/a".into(), description: "d".into(), default_branch: "main".into() },
        ForgeRequest::ListRepos { prefix: "repos/".into(), after: Some("repos/a".into()), limit: 10 },
        ForgeRequest::ShowRepo { name: "repos/a".into() },
        ForgeRequest::DeleteRepo { name: "repos/a".into() },
        ForgeRequest::Protect { repo: "repos/a".into(), branch: "main".into(), protected: true },
        ForgeRequest::Connect { repo: "repos/a".into(), service: GitService::UploadPack, protocol: "version=2".into() },
        ForgeRequest::Connect { repo: "repos/a".into(), service: GitService::ReceivePack, protocol: String::new() },
        ForgeRequest::ForkRepo { source: "repos/a".into(), name: "repos/b".into() },
        ForgeRequest::CollectGarbage { repo: "repos/a".into(), grace_ms: Some(60_000) },
        ForgeRequest::Events { prefix: "repos/".into(), from_revision: 42, limit: 100, follow: true },
        ForgeRequest::AppendChange { repo: "repos/a".into(), kind: CobKind::Issue, change: vec![1, 2, 3] },
        ForgeRequest::ShowCob { repo: "repos/a".into(), kind: CobKind::Patch, id: "abcdef".into() },
        ForgeRequest::ListCobs { repo: "repos/a".into(), kind: CobKind::Issue, after: None, limit: 10 },
        ForgeRequest::MergePatch { repo: "repos/a".into(), change: vec![4, 5] },
        ForgeRequest::SetStatus {
            repo: "repos/a".into(),
            commit: [7; 20],
            context: "ci".into(),
            state: StatusState::Running,
            description: "1 of 2 jobs over".into(),
            target: "aspen ci show 3".into(),
            seq: 3,
        },
        ForgeRequest::ListStatuses { repo: "repos/a".into(), commit: [7; 20] },
    ]
}

fn variant_request(r: &ForgeRequest) -> &'static str {
    match r {
        ForgeRequest::CreateRepo { .. } => "CreateRepo",
        ForgeRequest::ListRepos { .. } => "ListRepos",
        ForgeRequest::ShowRepo { .. } => "ShowRepo",
        ForgeRequest::DeleteRepo { .. } => "DeleteRepo",
        ForgeRequest::Protect { .. } => "Protect",
        ForgeRequest::Connect { service: GitService::UploadPack, .. } => "Connect.UploadPack",
        ForgeRequest::Connect { service: GitService::ReceivePack, .. } => "Connect.ReceivePack",
        ForgeRequest::ForkRepo { .. } => "ForkRepo",
        ForgeRequest::CollectGarbage { .. } => "CollectGarbage",
        ForgeRequest::Events { .. } => "Events",
        ForgeRequest::AppendChange { .. } => "AppendChange",
        ForgeRequest::ShowCob { .. } => "ShowCob",
        ForgeRequest::ListCobs { .. } => "ListCobs",
        ForgeRequest::MergePatch { .. } => "MergePatch",
        ForgeRequest::SetStatus { .. } => "SetStatus",
        ForgeRequest::ListStatuses { .. } => "ListStatuses",
    }
}

fn issue_state() -> CobState {
    let key = iroh::SecretKey::from_bytes(&[7; 32]);
    let root = Change::root(
        CobKind::Issue,
        &key.public(),
        1_700_000_000_000,
        Action::OpenIssue { title: "t".into(), body: "b".into() },
    );
    let id = root.sign(&key).unwrap().id();
    cob::fold(&[(id, root)]).unwrap()
}

fn summary() -> CobSummary {
    CobSummary {
        id: [5; 32],
        kind: CobKind::Patch,
        title: "t".into(),
        status: CobStatus::Merged { revision: [6; 32], commit: [7; 20] },
        labels: vec!["bug".into()],
        author: [8; 32],
        created_ms: 1_700_000_000_000,
        updated_ms: 1_700_000_000_001,
        changes: 3,
        target: Some("main".into()),
        head: Some([7; 20]),
    }
}

fn commit_status(state: StatusState) -> CommitStatus {
    CommitStatus {
        state,
        description: "all 2 jobs passed".into(),
        target: "aspen ci show 3".into(),
        seq: 3,
        by: "ci".into(),
        updated_ms: 1_700_000_000_000,
    }
}

/// One change of every action, signed by a fixed key (ed25519 signatures are deterministic).
#[test]
fn signed_changes_keep_their_bytes_and_ids() {
    let key = iroh::SecretKey::from_bytes(&[7; 32]);
    let open = Action::OpenPatch {
        title: "t".into(),
        description: "d".into(),
        target: "main".into(),
        base: [1; 20],
        head: [2; 20],
    };
    let root = Change::root(CobKind::Patch, &key.public(), 1_700_000_000_000, open);
    let root_signed = root.sign(&key).unwrap();
    let actions = vec![
        Action::Comment { body: "c".into(), reply_to: Some([3; 32]) },
        Action::EditTitle { title: "t2".into() },
        Action::Label { add: vec!["a".into()], remove: vec!["b".into()] },
        Action::Close,
        Action::Reopen,
        Action::Revise { base: [1; 20], head: [4; 20], note: "n".into() },
        Action::Review { revision: root_signed.id(), verdict: Verdict::Accept, body: "ok".into() },
    ];
    let mut samples = vec![sample("Change.root", &root), sample("SignedChange.root", &root_signed)];
    for (i, action) in actions.into_iter().enumerate() {
        let change = Change::child(
            CobKind::Patch,
            root_signed.id(),
            vec![root_signed.id()],
            &key.public(),
            1_700_000_000_001,
            vec![action],
        );
        samples.push(sample(format!("Change.child.{i}"), &change));
    }
    let merged = Change::child(
        CobKind::Patch,
        root_signed.id(),
        vec![root_signed.id()],
        &key.public(),
        1_700_000_000_002,
        vec![Action::Merged { revision: root_signed.id(), commit: [2; 20] }],
    );
    samples.push(sample("SignedChange.merged", &merged.sign(&key).unwrap()));
    samples.push(sample("Verdict.Reject", &Verdict::Reject));
    samples.push(sample("Verdict.Comment", &Verdict::Comment));
    samples.push(sample("OpenIssue", &Action::OpenIssue { title: "t".into(), body: "b".into() }));
    check_file(&fixture("cob.txt"), &samples);
    // The id is the BLAKE3 hash of the signed bytes, so it is frozen with them.
    let id = cob::hex(&root_signed.id());
    assert_eq!(recorded_text(&fixture("keys.txt"), "root_change_id", || id.clone()), id);
}

fn responses() -> Vec<ForgeResponse> {
    let info = RepoInfo {
        name: "repos/a".into(),
        description: "d".into(),
        default_branch: "main".into(),
        protected: vec!["main".into()],
        parent: Some("repos/base".into()),
        created_ms: 1_700_000_000_000,
        refs: vec![RefEntry { name: "refs/heads/main".into(), id: [7; 20] }],
    };
    vec![
        ForgeResponse::Repo(info),
        ForgeResponse::Repos {
            repos: vec![RepoSummary { name: "repos/a".into(), description: "d".into() }],
            more: true,
        },
        ForgeResponse::Done,
        ForgeResponse::Error(AspenError::PermissionDenied { reason: "forge:push".into() }),
        ForgeResponse::Connected,
        ForgeResponse::Collected(GcReport {
            packs_before: 3,
            packs_collected: 2,
            objects_collected: 100,
            objects_kept: 97,
            bytes_collected: 10_000,
            bytes_written: 9_000,
            packs_after: 2,
        }),
        ForgeResponse::Events {
            events: vec![EventEntry {
                revision: 42,
                event: PushEvent {
                    repo: "repos/a".into(),
                    ref_name: "refs/heads/main".into(),
                    old: None,
                    new: Some([2; 20]),
                    pusher: "abcd".into(),
                    time_ms: 1_700_000_000_000,
                },
            }],
            next_revision: 43,
        },
        ForgeResponse::Cob(issue_state()),
        ForgeResponse::CobDetail { state: issue_state(), changes: vec![serde_bytes::ByteBuf::from(vec![9u8, 9])] },
        ForgeResponse::Cobs { cobs: vec![summary()], more: false },
        ForgeResponse::Statuses {
            commit: [7; 20],
            statuses: vec![StatusEntry { context: "ci".into(), status: commit_status(StatusState::Success) }],
        },
    ]
}

fn variant_response(r: &ForgeResponse) -> &'static str {
    match r {
        ForgeResponse::Repo(_) => "Repo",
        ForgeResponse::Repos { .. } => "Repos",
        ForgeResponse::Done => "Done",
        ForgeResponse::Error(_) => "Error",
        ForgeResponse::Connected => "Connected",
        ForgeResponse::Collected(_) => "Collected",
        ForgeResponse::Events { .. } => "Events",
        ForgeResponse::Cob(_) => "Cob",
        ForgeResponse::CobDetail { .. } => "CobDetail",
        ForgeResponse::Cobs { .. } => "Cobs",
        ForgeResponse::Statuses { .. } => "Statuses",
    }
}

#[test]
fn forge_protocol_frames_keep_their_bytes() {
    let mut samples: Vec<_> = requests().iter().map(|r| sample(format!("Request.{}", variant_request(r)), r)).collect();
    samples.extend(responses().iter().map(|r| sample(format!("Response.{}", variant_response(r)), r)));
    check_file(&fixture("protocol.txt"), &samples);
}

#[test]
fn forge_records_keep_their_bytes_and_keys_their_shape() {
    let record = RepoRecord {
        created_ms: 1_700_000_000_000,
        description: "d".into(),
        default_branch: "main".into(),
        protected: vec!["main".into()],
        parent: None,
    };
    let event = PushEvent {
        repo: "repos/a".into(),
        ref_name: "refs/heads/main".into(),
        old: Some([1; 20]),
        new: None,
        pusher: "abcd".into(),
        time_ms: 1_700_000_000_000,
    };
    let revision = RevisionEvent {
        repo: "repos/a".into(),
        patch: [1; 32],
        revision: [2; 32],
        number: 2,
        target: "main".into(),
        base: [3; 20],
        head: [4; 20],
        author: [5; 32],
        time_ms: 1_700_000_000_000,
    };
    let pack =
        PackRecord { pack: [3; 32], index: [4; 32], objects: 112_731, bytes: 40_276_958, added_ms: 1_700_000_000_000 };
    check_file(
        &fixture("records.txt"),
        &[
            sample("RepoRecord", &record),
            sample("PushEvent", &event),
            sample("PackRecord", &pack),
            sample("CobSummary", &summary()),
            sample("RevisionEvent", &revision),
        ],
    );
    let states = [
        StatusState::Pending,
        StatusState::Running,
        StatusState::Success,
        StatusState::Failure,
        StatusState::Error,
        StatusState::Cancelled,
        StatusState::Skipped,
    ];
    let mut statuses: Vec<_> =
        states.iter().map(|s| sample(format!("CommitStatus.{}", s.name()), &commit_status(*s))).collect();
    statuses.extend(states.iter().map(|s| sample(format!("StatusState.{}", s.name()), s)));
    check_file(&fixture("status.txt"), &statuses);
    let path = fixture("keys.txt");
    for (name, key) in [
        ("repo_key", records::repo_key("repos/a")),
        ("ref_key", records::ref_key("repos/a", "refs/heads/main")),
        ("event_key", records::event_key(1_700_000_000_000, 42)),
        ("pack_key", records::pack_key("repos/a", "0123abcd")),
        ("activity_key", records::activity_key("repos/a")),
        ("pack_pin", records::pack_pins("repos/a", "0123abcd").0.into_bytes()),
        ("index_pin", records::pack_pins("repos/a", "0123abcd").1.into_bytes()),
        ("fork_key", records::fork_key("repos/a", "repos/b")),
        ("cob_key", cob_index::cob_key("repos/a", CobKind::Issue, &[1; 32])),
        ("change_key", cob_index::change_key("repos/a", CobKind::Patch, &[1; 32], &[2; 32])),
        ("change_pin", cob_index::change_pin("repos/a", &[2; 32]).into_bytes()),
        ("revision_event_key", records::revision_event_key(1_700_000_000_000, 42)),
        ("status_key", status::status_key("repos/a", &[7; 20], "ci/untrusted")),
    ] {
        let text = String::from_utf8(key).unwrap();
        assert_eq!(recorded_text(&path, name, || text.clone()), text, "{name} changed shape");
    }
}
