//! Golden bytes of the forge's formats: its protocol (`aspen/forge/1`) and the records it
//! keeps in the KV. See `aspen_core::golden`.

use std::path::PathBuf;

use aspen_core::AspenError;
use aspen_core::golden::{check_file, recorded_text, sample};
use aspen_forge::protocol::{
    EventEntry, ForgeRequest, ForgeResponse, GcReport, GitService, RefEntry, RepoInfo, RepoSummary,
};
use aspen_forge::records::{self, PackRecord, PushEvent, RepoRecord};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(name)
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
    }
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
    let pack =
        PackRecord { pack: [3; 32], index: [4; 32], objects: 112_731, bytes: 40_276_958, added_ms: 1_700_000_000_000 };
    check_file(
        &fixture("records.txt"),
        &[sample("RepoRecord", &record), sample("PushEvent", &event), sample("PackRecord", &pack)],
    );
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
    ] {
        let text = String::from_utf8(key).unwrap();
        assert_eq!(recorded_text(&path, name, || text.clone()), text, "{name} changed shape");
    }
}
