//! Where issues and patches live in the KV (see [`crate::records`] for the whole layout):
//! their summaries, the index of their changes, and the pins of the changes' blobs.

use serde::{Deserialize, Serialize};

use crate::cob::{ChangeId, CobKind, CobState, CobStatus, hex};
use crate::records::{CHANGE_PREFIX, COB_PREFIX, ObjectId, PIN_SCOPE};

/// An issue or patch as lists show it: its state folded from every change it has. Frozen
/// like [`RepoRecord`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CobSummary {
    pub id: ChangeId,
    pub kind: CobKind,
    pub title: String,
    pub status: CobStatus,
    pub labels: Vec<String>,
    /// The opening change's author (ed25519 public key).
    pub author: [u8; 32],
    pub created_ms: u64,
    pub updated_ms: u64,
    /// Changes in its DAG.
    pub changes: u32,
    /// For a patch: its target branch and latest revision's head.
    pub target: Option<String>,
    pub head: Option<ObjectId>,
}

impl CobSummary {
    /// The summary of a folded state of `changes` changes.
    pub fn of(state: &CobState, changes: usize) -> Self {
        CobSummary {
            id: state.id,
            kind: state.kind,
            title: state.title.clone(),
            status: state.state.clone(),
            labels: state.labels.iter().cloned().collect(),
            author: state.author,
            created_ms: state.created_ms,
            updated_ms: state.updated_ms,
            changes: changes as u32,
            target: state.target.clone(),
            head: state.revisions.last().map(|r| r.head),
        }
    }
}

/// The key of the summary of issue or patch `id` of `repo`.
pub fn cob_key(repo: &str, kind: CobKind, id: &ChangeId) -> Vec<u8> {
    format!("{COB_PREFIX}{repo}:{}/{}", kind.name(), hex(id)).into_bytes()
}

/// The prefix of the summaries of `repo`'s issues (or patches) whose ids start with
/// `id_prefix` (hex).
pub fn cobs_prefix(repo: &str, kind: CobKind, id_prefix: &str) -> Vec<u8> {
    format!("{COB_PREFIX}{repo}:{}/{id_prefix}", kind.name()).into_bytes()
}

/// The key of change `change` of issue or patch `id` of `repo`.
pub fn change_key(repo: &str, kind: CobKind, id: &ChangeId, change: &ChangeId) -> Vec<u8> {
    format!("{CHANGE_PREFIX}{repo}:{}/{}/{}", kind.name(), hex(id), hex(change)).into_bytes()
}

/// The prefix of the changes of issue or patch `id` of `repo`.
pub fn changes_prefix(repo: &str, kind: CobKind, id: &ChangeId) -> Vec<u8> {
    format!("{CHANGE_PREFIX}{repo}:{}/{}/", kind.name(), hex(id)).into_bytes()
}

/// The blob pin that keeps change `change` of `repo`.
pub fn change_pin(repo: &str, change: &ChangeId) -> String {
    format!("{PIN_SCOPE}{repo}/cob/{}", hex(change))
}
