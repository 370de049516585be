//! Commit statuses: what a CI system (Aspen's own, or any holder of `forge:push`) says about a
//! commit, shown by `aspen forge show` and, for a patch's revisions, by `aspen patch show`.
//!
//! One record per repository, commit and *context* (the name of what reports, such as `ci`):
//! `_aspen/forge/status/<repo>:<commit hex>/<context>`, a [`CommitStatus`]. A context's newer
//! report replaces its older one; `seq` says which is newer (CI uses the run number), so a
//! slow writer of an old run cannot overwrite the status of a newer one: [`status_step`] gives
//! the compare and the write to put in the writer's own transaction, or nothing when the
//! stored status is newer.

use aspen_core::AspenError;
use aspen_core::command::{Compare, CompareOp, CompareTarget, TxnOp};
use serde::{Deserialize, Serialize};

use crate::records::{self, ObjectId};

/// Prefix of commit statuses.
pub const STATUS_PREFIX: &str = "_aspen/forge/status/";
/// Longest context name, in bytes.
pub const MAX_CONTEXT: usize = 100;
/// Longest description, in bytes; longer ones are cut (at a character boundary) with `…`.
pub const MAX_DESCRIPTION: usize = 2_048;
/// Longest target (where to look: a command or a URL), in bytes.
pub const MAX_TARGET: usize = 512;

/// Where a commit stands for one context. Frozen: new states only at the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StatusState {
    /// Accepted, not started (CI: the pipeline is being evaluated).
    Pending,
    Running,
    Success,
    Failure,
    /// Something other than the commit's code failed (CI: a pipeline that does not
    /// evaluate, a checkout that failed).
    Error,
    Cancelled,
    /// Nothing was checked (CI: the pipeline's triggers do not take this ref).
    Skipped,
}

impl StatusState {
    pub fn name(self) -> &'static str {
        match self {
            StatusState::Pending => "pending",
            StatusState::Running => "running",
            StatusState::Success => "success",
            StatusState::Failure => "failure",
            StatusState::Error => "error",
            StatusState::Cancelled => "cancelled",
            StatusState::Skipped => "skipped",
        }
    }

    pub fn parse(text: &str) -> Result<StatusState, AspenError> {
        Ok(match text {
            "pending" => StatusState::Pending,
            "running" => StatusState::Running,
            "success" => StatusState::Success,
            "failure" => StatusState::Failure,
            "error" => StatusState::Error,
            "cancelled" => StatusState::Cancelled,
            "skipped" => StatusState::Skipped,
            other => {
                return Err(AspenError::invalid(format!(
                    "unknown status {other:?}: pending, running, success, failure, error, cancelled or skipped"
                )));
            }
        })
    }
}

/// One context's report on a commit, as stored. Frozen like the other records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitStatus {
    pub state: StatusState,
    /// One line or a few (CI: `3 of 4 jobs passed`, or the pipeline's Nickel error).
    pub description: String,
    /// Where to look for more: a command (`aspen ci show 12`) or a URL.
    pub target: String,
    /// Orders a context's reports: a report with a lower `seq` than the stored one is
    /// dropped (CI: the run number).
    pub seq: u64,
    /// Who reported it (the writer's key, hex).
    pub by: String,
    pub updated_ms: u64,
}

/// A status with its context, as answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusEntry {
    pub context: String,
    pub status: CommitStatus,
}

/// The key of `context`'s status of `commit` in `repo`.
pub fn status_key(repo: &str, commit: &ObjectId, context: &str) -> Vec<u8> {
    format!("{STATUS_PREFIX}{repo}:{}/{context}", records::hex(commit)).into_bytes()
}

/// The prefix of every status of `commit` in `repo`.
pub fn commit_prefix(repo: &str, commit: &ObjectId) -> Vec<u8> {
    format!("{STATUS_PREFIX}{repo}:{}/", records::hex(commit)).into_bytes()
}

/// The prefix of every status in `repo` (what deleting it removes).
pub fn repo_prefix(repo: &str) -> Vec<u8> {
    format!("{STATUS_PREFIX}{repo}:").into_bytes()
}

/// Checks a context name: 1 to [`MAX_CONTEXT`] bytes of `[A-Za-z0-9._/-]`.
pub fn validate_context(context: &str) -> Result<(), AspenError> {
    if context.is_empty() || context.len() > MAX_CONTEXT {
        return Err(AspenError::invalid(format!(
            "a status context has 1 to {MAX_CONTEXT} bytes, not {}",
            context.len()
        )));
    }
    if let Some(c) = context.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '/' | '-'))) {
        return Err(AspenError::invalid(format!(
            "status context {context:?} holds {c:?}: only letters, digits, '.', '_', '/' and '-'"
        )));
    }
    Ok(())
}

/// `text` cut to at most `max` bytes at a character boundary, marked with `…` when cut.
pub fn clip(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// What writes `status` for `context` on `commit` of `repo`, given the stored record read
/// at `current` (key, value, mod revision): a compare that the record is still what was read,
/// and the write. `None` when the stored report is newer (a higher `seq`), so nothing is to
/// be written. The description and target are clipped to their limits.
pub fn status_step(
    repo: &str,
    commit: &ObjectId,
    context: &str,
    status: &CommitStatus,
    current: Option<(&[u8], u64)>,
) -> Result<Option<(Compare, TxnOp)>, AspenError> {
    validate_context(context)?;
    let key = status_key(repo, commit, context);
    let compare = match current {
        Some((value, mod_revision)) => {
            let stored: CommitStatus = records::decode(value, "a commit status")?;
            if stored.seq > status.seq {
                return Ok(None);
            }
            Compare { key: key.clone(), op: CompareOp::Equal, target: CompareTarget::ModRevision(mod_revision) }
        }
        None => Compare { key: key.clone(), op: CompareOp::Equal, target: CompareTarget::CreateRevision(0) },
    };
    let mut status = status.clone();
    status.description = clip(&status.description, MAX_DESCRIPTION);
    status.target = clip(&status.target, MAX_TARGET);
    Ok(Some((compare, TxnOp::Put { key, value: records::encode(&status)?, lease: None })))
}

/// The context a status key holds, if it is one of `commit_prefix`'s.
pub fn context_of<'k>(prefix: &[u8], key: &'k [u8]) -> Option<&'k str> {
    std::str::from_utf8(key.strip_prefix(prefix)?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(seq: u64) -> CommitStatus {
        CommitStatus {
            state: StatusState::Running,
            description: "d".into(),
            target: "aspen ci show 1".into(),
            seq,
            by: "k".into(),
            updated_ms: 1,
        }
    }

    #[test]
    fn an_older_report_does_not_replace_a_newer_one() {
        let stored = records::encode(&status(5)).unwrap();
        assert!(status_step("r", &[1; 20], "ci", &status(4), Some((&stored, 9))).unwrap().is_none());
        let (compare, _) = status_step("r", &[1; 20], "ci", &status(5), Some((&stored, 9))).unwrap().unwrap();
        assert_eq!(compare.target, CompareTarget::ModRevision(9));
        let (compare, _) = status_step("r", &[1; 20], "ci", &status(1), None).unwrap().unwrap();
        assert_eq!(compare.target, CompareTarget::CreateRevision(0));
    }

    #[test]
    fn contexts_are_checked_and_text_is_clipped() {
        assert!(validate_context("ci/patch").is_ok());
        assert!(validate_context("").is_err());
        assert!(validate_context("a b").unwrap_err().to_string().contains("' '"));
        assert!(validate_context(&"x".repeat(MAX_CONTEXT + 1)).is_err());
        let long = "é".repeat(MAX_DESCRIPTION);
        let clipped = clip(&long, MAX_DESCRIPTION);
        assert!(clipped.len() <= MAX_DESCRIPTION && clipped.ends_with('…'));
        assert_eq!(clip("short", 10), "short");
        let key = status_key("team/a", &[0xab; 20], "ci");
        assert_eq!(context_of(&commit_prefix("team/a", &[0xab; 20]), &key), Some("ci"));
        assert!(key.starts_with(&repo_prefix("team/a")));
        assert!(!key.starts_with(&repo_prefix("team")));
    }
}
