//! What the forge keeps in the KV, under its own prefix `_aspen/forge/`:
//!
//! - `repo/<name>`: the repository's [`RepoRecord`];
//! - `ref/<repo>:<ref name>`: a ref, whose value is the 20-byte object id it points at (`:`
//!   cannot appear in a repository name, so one repository's refs are one prefix);
//! - `pack/<repo>:<pack name>`: a [`PackRecord`], one pack of git objects the repository
//!   holds, stored as two blobs (the pack and git's index of it) pinned as
//!   `forge/<repo>/<pack name>.pack` and `.idx`; the pack name is git's (the hex SHA-1 trailer
//!   of the pack);
//! - `activity/<repo>`: rewritten by every transaction that moves a ref of the repository or
//!   adds a pack to it, so garbage collection can tell that nothing moved while it looked;
//! - `fork/<parent>:<fork>`: present while repository `fork` is a fork of `parent` (it
//!   shares the parent's packs, so the parent may not be deleted, and the parent's garbage
//!   collection keeps what the fork's refs reach);
//! - `cob/<repo>:<kind>/<object id hex>`: a [`CobSummary`] of one issue or patch (its
//!   folded state, for lists), rewritten with compare-and-swap by every change to it;
//! - `change/<repo>:<kind>/<object id hex>/<change id hex>`: one change of that object,
//!   whose signed bytes are the blob the change id names, pinned as
//!   `forge/<repo>/cob/<change id hex>`;
//! - `event/<16 hex digits of ms>-<16 hex digits>`: a [`PushEvent`], written in the same
//!   transaction as the ref update it records; watchers read them from a revision;
//! - `revision/<16 hex digits of ms>-<16 hex digits>`: a [`RevisionEvent`], written in the
//!   same transaction as the change that opens a patch or adds a revision to it (what CI
//!   follows to build patches);
//! - `status/<repo>:<commit hex>/<context>`: a commit status ([`crate::status`]).

use aspen_core::AspenError;
use aspen_core::command::TxnOp;
use serde::{Deserialize, Serialize};

/// Prefix of every forge record.
pub const FORGE_PREFIX: &str = "_aspen/forge/";
/// Prefix of repository records.
pub const REPO_PREFIX: &str = "_aspen/forge/repo/";
/// Prefix of refs.
pub const REF_PREFIX: &str = "_aspen/forge/ref/";
/// Prefix of push events.
pub const EVENT_PREFIX: &str = "_aspen/forge/event/";
/// Prefix of pack records.
pub const PACK_PREFIX: &str = "_aspen/forge/pack/";
/// Prefix of repository activity markers.
pub const ACTIVITY_PREFIX: &str = "_aspen/forge/activity/";
/// Prefix of the fork index.
pub const FORK_PREFIX: &str = "_aspen/forge/fork/";
/// Prefix of issue and patch summaries.
pub const COB_PREFIX: &str = "_aspen/forge/cob/";
/// Prefix of the changes of issues and patches.
pub const CHANGE_PREFIX: &str = "_aspen/forge/change/";
/// Prefix of patch revision events.
pub const REVISION_EVENT_PREFIX: &str = "_aspen/forge/revision/";
/// Prefix of the blob pins the forge holds.
pub const PIN_SCOPE: &str = "forge/";

/// A git object id (SHA-1).
pub type ObjectId = [u8; 20];

/// A repository, as stored. Frozen: fields are only ever appended through a new record
/// version (see `tests/golden.rs`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoRecord {
    /// When it was created, by the creating node's clock (ms since the Unix epoch).
    pub created_ms: u64,
    pub description: String,
    /// The branch `HEAD` names.
    pub default_branch: String,
    /// Branches that refuse force pushes and deletes.
    pub protected: Vec<String>,
    /// The repository this one was forked from, whose objects it shares.
    pub parent: Option<String>,
}

/// One accepted ref update, as watchers read it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushEvent {
    pub repo: String,
    pub ref_name: String,
    /// `None`: the ref was created.
    pub old: Option<ObjectId>,
    /// `None`: the ref was deleted.
    pub new: Option<ObjectId>,
    /// Who pushed: the hex public key of the client that pushed.
    pub pusher: String,
    pub time_ms: u64,
}

/// A patch opened or revised: one new revision, as watchers read it. Frozen like
/// [`RepoRecord`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevisionEvent {
    pub repo: String,
    /// The patch (its root change's id).
    pub patch: [u8; 32],
    /// The change that introduced the revision (the patch's id for the first).
    pub revision: [u8; 32],
    /// 1 for the first revision, counting up in the patch's order.
    pub number: u32,
    /// The branch the patch asks to merge into (no `refs/heads/`).
    pub target: String,
    pub base: ObjectId,
    pub head: ObjectId,
    /// Who signed the change (ed25519 public key).
    pub author: [u8; 32],
    pub time_ms: u64,
}

/// The key of a revision event at `time_ms`, made unique by `nonce`.
pub fn revision_event_key(time_ms: u64, nonce: u64) -> Vec<u8> {
    format!("{REVISION_EVENT_PREFIX}{time_ms:016x}-{nonce:016x}").into_bytes()
}

/// One pack a repository holds. Frozen like [`RepoRecord`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackRecord {
    /// The blob holding the pack file.
    pub pack: [u8; 32],
    /// The blob holding git's index of it (`.idx`, version 2).
    pub index: [u8; 32],
    /// Objects in the pack.
    pub objects: u32,
    /// Size of the pack file.
    pub bytes: u64,
    /// When it was stored, by the storing node's clock (ms since the Unix epoch).
    pub added_ms: u64,
}

/// The key of pack `pack_name` of `repo`.
pub fn pack_key(repo: &str, pack_name: &str) -> Vec<u8> {
    format!("{PACK_PREFIX}{repo}:{pack_name}").into_bytes()
}

/// The prefix of `repo`'s pack records.
pub fn packs_prefix(repo: &str) -> Vec<u8> {
    format!("{PACK_PREFIX}{repo}:").into_bytes()
}

/// The pack name a pack key of `repo` holds.
pub fn pack_name<'k>(repo: &str, key: &'k [u8]) -> Option<&'k str> {
    std::str::from_utf8(key.strip_prefix(packs_prefix(repo).as_slice())?).ok()
}

/// The operations that record pack `name` of `repo` and pin its two blobs, to go in the
/// transaction that makes a ref reach it.
pub fn pack_put_ops(repo: &str, name: &str, record: &PackRecord) -> Result<Vec<TxnOp>, AspenError> {
    let (pack_pin, index_pin) = pack_pins(repo, name);
    let mut ops = vec![TxnOp::Put { key: pack_key(repo, name), value: encode(record)?, lease: None }];
    ops.extend(aspen_blob::records::pin_ops(&pack_pin, &record.pack, None));
    ops.extend(aspen_blob::records::pin_ops(&index_pin, &record.index, None));
    Ok(ops)
}

/// The operations that drop pack `name` of `repo`: its record and its two pins.
pub fn pack_delete_ops(repo: &str, name: &str, record: &PackRecord) -> Vec<TxnOp> {
    let (pack_pin, index_pin) = pack_pins(repo, name);
    let mut ops = vec![TxnOp::Delete { key: pack_key(repo, name) }];
    ops.extend(aspen_blob::records::unpin_ops(&pack_pin, &record.pack));
    ops.extend(aspen_blob::records::unpin_ops(&index_pin, &record.index));
    ops
}

/// The key rewritten by every change to `repo`'s refs or packs.
pub fn activity_key(repo: &str) -> Vec<u8> {
    format!("{ACTIVITY_PREFIX}{repo}").into_bytes()
}

/// The blob pin names that keep pack `pack_name` of `repo`: the pack, then its index.
pub fn pack_pins(repo: &str, pack_name: &str) -> (String, String) {
    (format!("{PIN_SCOPE}{repo}/{pack_name}.pack"), format!("{PIN_SCOPE}{repo}/{pack_name}.idx"))
}

/// The key saying that `fork` is a fork of `parent`.
pub fn fork_key(parent: &str, fork: &str) -> Vec<u8> {
    format!("{FORK_PREFIX}{parent}:{fork}").into_bytes()
}

/// The prefix of the keys naming `parent`'s forks.
pub fn forks_prefix(parent: &str) -> Vec<u8> {
    format!("{FORK_PREFIX}{parent}:").into_bytes()
}

/// The fork a fork key of `parent` names.
pub fn fork_name<'k>(parent: &str, key: &'k [u8]) -> Option<&'k str> {
    std::str::from_utf8(key.strip_prefix(forks_prefix(parent).as_slice())?).ok()
}

/// The key of repository `name`.
pub fn repo_key(name: &str) -> Vec<u8> {
    format!("{REPO_PREFIX}{name}").into_bytes()
}

/// The repository name a repository key holds.
pub fn repo_name(key: &[u8]) -> Option<&str> {
    std::str::from_utf8(key.strip_prefix(REPO_PREFIX.as_bytes())?).ok()
}

/// The prefix of repository `repo`'s refs.
pub fn refs_prefix(repo: &str) -> Vec<u8> {
    format!("{REF_PREFIX}{repo}:").into_bytes()
}

/// The key of ref `ref_name` of repository `repo`.
pub fn ref_key(repo: &str, ref_name: &str) -> Vec<u8> {
    format!("{REF_PREFIX}{repo}:{ref_name}").into_bytes()
}

/// The ref name a ref key of `repo` holds.
pub fn ref_name<'k>(repo: &str, key: &'k [u8]) -> Option<&'k str> {
    std::str::from_utf8(key.strip_prefix(refs_prefix(repo).as_slice())?).ok()
}

/// The object id a ref's value holds.
pub fn object_id(value: &[u8]) -> Result<ObjectId, AspenError> {
    value.try_into().map_err(|_| AspenError::internal(format!("a ref holds {} bytes, not a 20-byte id", value.len())))
}

/// The key of a push event at `time_ms`, made unique by `nonce`.
pub fn event_key(time_ms: u64, nonce: u64) -> Vec<u8> {
    format!("{EVENT_PREFIX}{time_ms:016x}-{nonce:016x}").into_bytes()
}

/// An object id as git prints it.
pub fn hex(id: &ObjectId) -> String {
    data_encoding::HEXLOWER.encode(id)
}

/// Parses a 40-digit hex object id.
pub fn parse_object_id(text: &str) -> Result<ObjectId, AspenError> {
    let bytes = data_encoding::HEXLOWER_PERMISSIVE
        .decode(text.as_bytes())
        .map_err(|_| AspenError::invalid(format!("object id {text:?} is not hex")))?;
    bytes.try_into().map_err(|_| AspenError::invalid(format!("object id {text:?} is not 40 hex digits")))
}

pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, AspenError> {
    postcard::to_allocvec(value).map_err(AspenError::internal)
}

pub(crate) fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, AspenError> {
    postcard::from_bytes(bytes).map_err(|e| AspenError::internal(format!("{what} does not decode: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_repository_s_refs_are_one_prefix() {
        let key = ref_key("team/a", "refs/heads/main");
        assert!(key.starts_with(&refs_prefix("team/a")));
        assert!(!key.starts_with(&refs_prefix("team")), "the repository `team` does not see team/a's refs");
        assert_eq!(ref_name("team/a", &key), Some("refs/heads/main"));
        assert_eq!(repo_name(&repo_key("team/a")), Some("team/a"));
    }

    #[test]
    fn event_keys_sort_by_time_and_object_ids_round_trip() {
        assert!(event_key(1, u64::MAX) < event_key(2, 0));
        let id = [0xab; 20];
        assert_eq!(parse_object_id(&hex(&id)).unwrap(), id);
        assert!(parse_object_id("abc").is_err());
        assert!(object_id(&[1, 2]).is_err());
    }
}
