//! The forge's client protocol, [`FORGE_ALPN`]: one request frame and one answer frame per
//! bi-stream. Every enum here is frozen: variants are only appended (`tests/golden.rs`).

use aspen_core::AspenError;
use serde::{Deserialize, Serialize};

use crate::cob::{CobKind, CobState};
use crate::records::ObjectId;
use crate::status::{StatusEntry, StatusState};

/// ALPN of the forge's protocol.
pub const FORGE_ALPN: &[u8] = b"aspen/forge/1";

/// Most repositories one list answer names.
pub const MAX_LIST: u32 = 1_000;

/// A request on [`FORGE_ALPN`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ForgeRequest {
    /// Creates an empty repository. Needs `admin` over its name. Answered with `Repo`.
    CreateRepo { name: String, description: String, default_branch: String },
    /// Repositories whose names start with `prefix`, after `after`. Needs `read` over the
    /// prefix. Answered with `Repos`.
    ListRepos { prefix: String, after: Option<String>, limit: u32 },
    /// A repository and its refs. Needs `read`. Answered with `Repo`.
    ShowRepo { name: String },
    /// Deletes a repository and its refs. Needs `admin`. Answered with `Done`.
    DeleteRepo { name: String },
    /// Protects a branch (no force push, no delete) or lifts the protection. Needs
    /// `admin`. Answered with `Repo`.
    Protect { repo: String, branch: String, protected: bool },
    /// Turns the stream into a git service on `repo`: after the `Connected` answer, the
    /// stream carries git's own pack protocol both ways (what `git-remote-aspen` bridges
    /// for `git`). `UploadPack` (fetch, clone, ls-remote) needs `read`; `ReceivePack`
    /// (push) needs `push`. `protocol` is the client's `GIT_PROTOCOL` (`version=2`), or
    /// empty.
    Connect { repo: String, service: GitService, protocol: String },
    /// Creates `name` as a fork of `source`: the same refs, and `source`'s packs shared, not
    /// copied. Needs `read` over `source` and `admin` over `name`. Answered with `Repo`.
    ForkRepo { source: String, name: String },
    /// Collects `repo`'s garbage: its packs older than `grace_ms` are repacked into one
    /// holding only what the refs of the repository and of its forks reach. `None` takes
    /// the node's configured grace. Needs `admin`. Answered with `Collected`.
    CollectGarbage { repo: String, grace_ms: Option<u64> },
    /// Push events of repositories whose names start with `prefix`, from KV revision
    /// `from_revision` on (0: from the oldest kept). With `follow`, the stream stays open
    /// and carries one `Events` answer per batch as pushes happen, until the client goes;
    /// otherwise one page of at most `limit`. Needs `read` over `prefix`.
    Events { prefix: String, from_revision: u64, limit: u32, follow: bool },
    /// Adds one signed change (`cob::SignedChange`, encoded) to an issue or patch of
    /// `repo`, or opens a new one with a root change. Needs `read` (anyone who may read a
    /// repository may file issues and patches; every change is signed by its author). A
    /// `Merged` action is refused here: see `MergePatch`. Answered with `Cob`.
    AppendChange {
        repo: String,
        kind: CobKind,
        #[serde(with = "serde_bytes")]
        change: Vec<u8>,
    },
    /// An issue or patch, named by its id or a unique prefix of it (at least 6 hex
    /// digits): its folded state and every signed change. Needs `read`. Answered with
    /// `CobDetail`.
    ShowCob { repo: String, kind: CobKind, id: String },
    /// Summaries of `repo`'s issues (or patches), after id `after`. Needs `read`. Answered
    /// with `Cobs`.
    ListCobs { repo: String, kind: CobKind, after: Option<String>, limit: u32 },
    /// Merges a patch: `change` is a signed change of the patch carrying one `Merged`
    /// action. The target branch moves to the revision's head through the same
    /// compare-and-swap and rules as a push (fast-forward only; the event is written in the
    /// same transaction). Needs `push`. Answered with `Cob`.
    MergePatch {
        repo: String,
        #[serde(with = "serde_bytes")]
        change: Vec<u8>,
    },
    /// Reports `context`'s status of `commit` (which the repository must hold), replacing
    /// the context's earlier report unless that one has a higher `seq`. Needs `push`.
    /// Answered with `Statuses` (every context's status of the commit after it).
    SetStatus {
        repo: String,
        commit: ObjectId,
        context: String,
        state: StatusState,
        description: String,
        target: String,
        seq: u64,
    },
    /// Every context's status of `commit`. Needs `read`. Answered with `Statuses`.
    ListStatuses { repo: String, commit: ObjectId },
}

/// A git service a [`ForgeRequest::Connect`] asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum GitService {
    /// `git-upload-pack`: the server side of fetch and clone.
    UploadPack,
    /// `git-receive-pack`: the server side of push.
    ReceivePack,
}

impl GitService {
    /// The name git gives the service (`connect git-upload-pack`).
    pub fn git_name(self) -> &'static str {
        match self {
            GitService::UploadPack => "git-upload-pack",
            GitService::ReceivePack => "git-receive-pack",
        }
    }

    /// The service git names `name`.
    pub fn from_git_name(name: &str) -> Option<Self> {
        match name {
            "git-upload-pack" => Some(GitService::UploadPack),
            "git-receive-pack" => Some(GitService::ReceivePack),
            _ => None,
        }
    }
}

impl ForgeRequest {
    /// Short name, for logs and errors.
    pub fn name(&self) -> &'static str {
        match self {
            ForgeRequest::CreateRepo { .. } => "repo_create",
            ForgeRequest::ListRepos { .. } => "repo_list",
            ForgeRequest::ShowRepo { .. } => "repo_show",
            ForgeRequest::DeleteRepo { .. } => "repo_delete",
            ForgeRequest::Protect { .. } => "repo_protect",
            ForgeRequest::Connect { .. } => "git_connect",
            ForgeRequest::ForkRepo { .. } => "repo_fork",
            ForgeRequest::CollectGarbage { .. } => "repo_gc",
            ForgeRequest::Events { .. } => "events",
            ForgeRequest::AppendChange { .. } => "cob_append",
            ForgeRequest::ShowCob { .. } => "cob_show",
            ForgeRequest::ListCobs { .. } => "cob_list",
            ForgeRequest::MergePatch { .. } => "patch_merge",
            ForgeRequest::SetStatus { .. } => "status_set",
            ForgeRequest::ListStatuses { .. } => "status_list",
        }
    }

    /// True when sending it twice has the same effect as once.
    pub fn is_repeatable(&self) -> bool {
        matches!(
            self,
            ForgeRequest::ListRepos { .. }
                | ForgeRequest::ShowRepo { .. }
                | ForgeRequest::Protect { .. }
                | ForgeRequest::CollectGarbage { .. }
                | ForgeRequest::Events { follow: false, .. }
                | ForgeRequest::ShowCob { .. }
                | ForgeRequest::ListCobs { .. }
                | ForgeRequest::ListStatuses { .. }
                // The same report twice is stored once (its seq does not go down).
                | ForgeRequest::SetStatus { .. }
                // A change is content-addressed: adding it twice adds it once.
                | ForgeRequest::AppendChange { .. }
        )
    }
}

/// An answer on [`FORGE_ALPN`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ForgeResponse {
    Repo(RepoInfo),
    Repos {
        repos: Vec<RepoSummary>,
        more: bool,
    },
    Done,
    Error(AspenError),
    /// The stream now carries the git service asked for.
    Connected,
    /// What a garbage collection did.
    Collected(GcReport),
    /// Push events in the order they were written, each with the KV revision that wrote
    /// it; `next_revision` is where to continue from.
    Events {
        events: Vec<EventEntry>,
        next_revision: u64,
    },
    /// An issue or patch after the change.
    Cob(CobState),
    /// An issue or patch and its signed changes (encoded `cob::SignedChange`s).
    CobDetail {
        state: CobState,
        changes: Vec<serde_bytes::ByteBuf>,
    },
    Cobs {
        cobs: Vec<crate::cob_index::CobSummary>,
        more: bool,
    },
    /// A commit's statuses, by context.
    Statuses {
        commit: ObjectId,
        statuses: Vec<StatusEntry>,
    },
}

/// What one garbage collection of a repository did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcReport {
    /// Packs of the repository before, and how many were old enough to collect.
    pub packs_before: u32,
    pub packs_collected: u32,
    /// Objects in the collected packs, and how many of them were still reachable and kept.
    pub objects_collected: u64,
    pub objects_kept: u64,
    /// Bytes of the collected packs, and of the pack that replaced them.
    pub bytes_collected: u64,
    pub bytes_written: u64,
    /// Packs of the repository after.
    pub packs_after: u32,
}

/// One push event and the revision that wrote it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventEntry {
    pub revision: u64,
    pub event: crate::records::PushEvent,
}

impl aspen_client::Answer for ForgeResponse {
    fn error(&self) -> Option<&AspenError> {
        match self {
            ForgeResponse::Error(e) => Some(e),
            _ => None,
        }
    }
    fn into_error(self) -> Result<Self, AspenError> {
        match self {
            ForgeResponse::Error(e) => Err(e),
            other => Ok(other),
        }
    }
}

/// A repository and its refs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoInfo {
    pub name: String,
    pub description: String,
    pub default_branch: String,
    pub protected: Vec<String>,
    pub parent: Option<String>,
    pub created_ms: u64,
    pub refs: Vec<RefEntry>,
}

/// One ref and the object it points at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefEntry {
    pub name: String,
    pub id: ObjectId,
}

/// A repository in a list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoSummary {
    pub name: String,
    pub description: String,
}
