//! The forge's client protocol, [`FORGE_ALPN`]: one request frame and one answer frame per
//! bi-stream. Every enum here is frozen: variants are only appended (`tests/golden.rs`).

use aspen_core::AspenError;
use serde::{Deserialize, Serialize};

use crate::records::ObjectId;

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
        }
    }

    /// True when sending it twice has the same effect as once.
    pub fn is_repeatable(&self) -> bool {
        matches!(self, ForgeRequest::ListRepos { .. } | ForgeRequest::ShowRepo { .. } | ForgeRequest::Protect { .. })
    }
}

/// An answer on [`FORGE_ALPN`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ForgeResponse {
    Repo(RepoInfo),
    Repos { repos: Vec<RepoSummary>, more: bool },
    Done,
    Error(AspenError),
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
