//! Collaborative objects ("cobs"): issues and patches kept as DAGs of signed changes, and the
//! deterministic fold that turns a set of changes into an object's current state.
//!
//! A [`Change`] is postcard-encoded and signed by its author (ed25519); the pair is a
//! [`SignedChange`], stored as a blob. Its id ([`ChangeId`]) is the BLAKE3 hash of the encoded
//! `SignedChange`, which is also the blob's hash. The root change opens the object, and its id is
//! the object's id. Every later change names the heads its author saw as parents, so concurrent
//! changes become branches of the DAG, and [`fold`] merges them: it orders the changes
//! topologically, breaking ties by `(time_ms, id)`, and applies their actions in that order. The
//! same set of changes therefore gives the same state on every node, whatever order they
//! arrived in: concurrent comments are all kept, labels combine, and the last state change in
//! that order wins (except that a merged patch stays merged).
//!
//! This module only encodes, verifies and folds; storing changes and finding an object's
//! changes is the store's business.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::fmt;
use std::str::FromStr;

use aspen_core::AspenError;
use iroh::{PublicKey, SecretKey, Signature};
use serde::{Deserialize, Serialize};

use crate::names::{branch_ref, validate_ref_name};
use crate::records::ObjectId;

/// The id of a change: the BLAKE3 hash of its encoded [`SignedChange`] (and so the hash of the
/// blob that holds it). The id of an object is the id of its root change.
pub type ChangeId = [u8; 32];

/// Most actions one change may carry.
pub const MAX_ACTIONS: usize = 64;
/// Most parents one change may name.
pub const MAX_PARENTS: usize = 64;
/// Longest title, in bytes.
pub const MAX_TITLE_BYTES: usize = 256;
/// Longest body (issue body, patch description, comment, review, revision note), in bytes.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Longest label, in bytes.
pub const MAX_LABEL_BYTES: usize = 64;
/// Most labels one `Label` action may add and remove together.
pub const MAX_LABELS_PER_ACTION: usize = 32;
/// Largest encoded [`SignedChange`], in bytes. Every field is bounded above; this bounds the
/// whole before anything is parsed.
pub const MAX_SIGNED_CHANGE_BYTES: usize = 1024 * 1024;

/// Prepended to the encoded change before signing, so a change signature cannot be mistaken
/// for a signature over anything else the same key signs.
const SIGNING_CONTEXT: &[u8] = b"aspen-forge/cob/change/1\0";

/// What kind of object a change belongs to.
///
/// Frozen: variants are only ever appended at the end (postcard encodes the variant index).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum CobKind {
    /// An issue: a title, a body, comments, labels, open or closed.
    Issue,
    /// A patch: a proposal to merge commits into a branch, with revisions and reviews.
    Patch,
}

impl CobKind {
    /// The kind's name as users type it: `issue` or `patch`.
    pub fn name(self) -> &'static str {
        match self {
            CobKind::Issue => "issue",
            CobKind::Patch => "patch",
        }
    }
}

impl fmt::Display for CobKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for CobKind {
    type Err = AspenError;

    fn from_str(text: &str) -> Result<Self, AspenError> {
        match text {
            "issue" => Ok(CobKind::Issue),
            "patch" => Ok(CobKind::Patch),
            _ => Err(AspenError::invalid(format!("{text:?} is not an object kind; expected issue or patch"))),
        }
    }
}

/// A review's verdict on a revision.
///
/// Frozen: variants are only ever appended at the end (postcard encodes the variant index).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Verdict {
    /// The reviewer would merge the revision.
    Accept,
    /// The reviewer would not merge the revision.
    Reject,
    /// A review without a verdict.
    Comment,
}

/// One thing a change does to its object.
///
/// Frozen: variants are only ever appended at the end (postcard encodes the variant index).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    /// Opens an issue; only as the first action of an issue's root change.
    OpenIssue {
        /// The issue's title.
        title: String,
        /// The issue's body.
        body: String,
    },
    /// Opens a patch and its first revision; only as the first action of a patch's root change.
    OpenPatch {
        /// The patch's title.
        title: String,
        /// The patch's description.
        description: String,
        /// The branch the patch asks to be merged into (a branch name, not a ref).
        target: String,
        /// The commit the first revision is based on.
        base: ObjectId,
        /// The first revision's head commit.
        head: ObjectId,
    },
    /// A comment; its id is the id of the change that carries it.
    Comment {
        /// The comment's text.
        body: String,
        /// The comment this one answers, if any.
        reply_to: Option<ChangeId>,
    },
    /// Replaces the title.
    EditTitle {
        /// The new title.
        title: String,
    },
    /// Adds labels, then removes labels.
    Label {
        /// Labels to add.
        add: Vec<String>,
        /// Labels to remove.
        remove: Vec<String>,
    },
    /// Closes the object (no effect on a merged patch).
    Close,
    /// Reopens the object (no effect on a merged patch).
    Reopen,
    /// A new revision of a patch; its id is the id of the change that carries it.
    Revise {
        /// The commit the revision is based on.
        base: ObjectId,
        /// The revision's head commit.
        head: ObjectId,
        /// What changed since the last revision.
        note: String,
    },
    /// A review of one revision of a patch.
    Review {
        /// The change (root `OpenPatch` or `Revise`) that introduced the revision reviewed.
        revision: ChangeId,
        /// The verdict.
        verdict: Verdict,
        /// The review's text.
        body: String,
    },
    /// Records that a revision of a patch was merged; a merged patch stays merged.
    Merged {
        /// The change (root `OpenPatch` or `Revise`) that introduced the revision merged.
        revision: ChangeId,
        /// The commit the target branch points at after the merge.
        commit: ObjectId,
    },
}

impl Action {
    /// The action's name, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Action::OpenIssue { .. } => "OpenIssue",
            Action::OpenPatch { .. } => "OpenPatch",
            Action::Comment { .. } => "Comment",
            Action::EditTitle { .. } => "EditTitle",
            Action::Label { .. } => "Label",
            Action::Close => "Close",
            Action::Reopen => "Reopen",
            Action::Revise { .. } => "Revise",
            Action::Review { .. } => "Review",
            Action::Merged { .. } => "Merged",
        }
    }

    fn is_open(&self) -> bool {
        matches!(self, Action::OpenIssue { .. } | Action::OpenPatch { .. })
    }

    /// Whether the action introduces a patch revision (whose id is then the change's id).
    fn introduces_revision(&self) -> bool {
        matches!(self, Action::OpenPatch { .. } | Action::Revise { .. })
    }

    /// Checks that the action may appear on an object of `kind`.
    fn check_kind(&self, kind: CobKind) -> Result<(), AspenError> {
        match (self, kind) {
            (Action::OpenIssue { .. }, CobKind::Patch) => {
                Err(AspenError::invalid("a patch change cannot carry an issue's Open action"))
            }
            (Action::OpenPatch { .. }, CobKind::Issue) => {
                Err(AspenError::invalid("an issue change cannot carry a patch's Open action"))
            }
            (Action::Revise { .. } | Action::Review { .. } | Action::Merged { .. }, CobKind::Issue) => {
                Err(AspenError::invalid(format!("an issue change cannot carry a {} action", self.name())))
            }
            _ => Ok(()),
        }
    }

    /// Checks the action's own fields against their limits.
    fn check_fields(&self) -> Result<(), AspenError> {
        match self {
            Action::OpenIssue { title, body } => {
                check_title(title)?;
                check_body("issue body", body)
            }
            Action::OpenPatch { title, description, target, .. } => {
                check_title(title)?;
                check_body("patch description", description)?;
                validate_ref_name(&branch_ref(target)).map_err(|e| {
                    AspenError::invalid(format!("patch target {target:?} is not a valid branch name: {}", reason(&e)))
                })
            }
            Action::Comment { body, .. } => {
                if body.trim().is_empty() {
                    return Err(AspenError::invalid("a comment's body is empty"));
                }
                check_body("comment", body)
            }
            Action::EditTitle { title } => check_title(title),
            Action::Label { add, remove } => {
                let count = add.len() + remove.len();
                if count == 0 {
                    return Err(AspenError::invalid("a Label action adds and removes nothing"));
                }
                if count > MAX_LABELS_PER_ACTION {
                    return Err(AspenError::invalid(format!(
                        "a Label action names {count} labels, over the limit MAX_LABELS_PER_ACTION = \
                         {MAX_LABELS_PER_ACTION}"
                    )));
                }
                add.iter().chain(remove).try_for_each(|label| check_label(label))
            }
            Action::Close | Action::Reopen | Action::Merged { .. } => Ok(()),
            Action::Revise { note, .. } => check_body("revision note", note),
            Action::Review { body, .. } => check_body("review", body),
        }
    }
}

fn check_title(title: &str) -> Result<(), AspenError> {
    if title.trim().is_empty() {
        return Err(AspenError::invalid("title is empty"));
    }
    if title.len() > MAX_TITLE_BYTES {
        return Err(AspenError::invalid(format!(
            "title is {} bytes, over the limit MAX_TITLE_BYTES = {MAX_TITLE_BYTES}",
            title.len()
        )));
    }
    Ok(())
}

fn check_body(what: &str, body: &str) -> Result<(), AspenError> {
    if body.len() > MAX_BODY_BYTES {
        return Err(AspenError::invalid(format!(
            "{what} is {} bytes, over the limit MAX_BODY_BYTES = {MAX_BODY_BYTES}",
            body.len()
        )));
    }
    Ok(())
}

fn check_label(label: &str) -> Result<(), AspenError> {
    if label.is_empty() {
        return Err(AspenError::invalid("a label is empty"));
    }
    if label.len() > MAX_LABEL_BYTES {
        return Err(AspenError::invalid(format!(
            "label {label:?} is {} bytes, over the limit MAX_LABEL_BYTES = {MAX_LABEL_BYTES}",
            label.len()
        )));
    }
    if label.chars().any(char::is_control) {
        return Err(AspenError::invalid(format!("label {label:?} contains a control character")));
    }
    Ok(())
}

/// The reason inside an `InvalidRequest`, so nested messages do not repeat "invalid request".
fn reason(e: &AspenError) -> String {
    match e {
        AspenError::InvalidRequest { reason } => reason.clone(),
        other => other.to_string(),
    }
}

/// Prefixes an error with the change it concerns.
fn in_change(id: &ChangeId, e: AspenError) -> AspenError {
    AspenError::invalid(format!("change {}: {}", hex(id), reason(&e)))
}

/// One change to one object: who, when, on top of what, and what it does.
///
/// Frozen: the encoding is signed and hashed, so fields are never added, removed or reordered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// The kind of object changed.
    pub kind: CobKind,
    /// The object changed (its root change's id); `None` only for the root change, which
    /// creates the object.
    pub object: Option<ChangeId>,
    /// The heads of the object's DAG the author saw; empty only for the root change.
    pub parents: Vec<ChangeId>,
    /// The author's ed25519 public key; the change is signed with its secret key.
    pub author: [u8; 32],
    /// When the author made the change, by the author's clock (ms since the Unix epoch). Only
    /// breaks ties between concurrent changes; it may go backwards.
    pub time_ms: u64,
    /// What the change does, applied in order.
    pub actions: Vec<Action>,
}

impl Change {
    /// The root change of a new object of `kind`, opened by `open` (an `OpenIssue` or
    /// `OpenPatch` action matching `kind`).
    pub fn root(kind: CobKind, author: &PublicKey, time_ms: u64, open: Action) -> Change {
        Change { kind, object: None, parents: Vec::new(), author: *author.as_bytes(), time_ms, actions: vec![open] }
    }

    /// A change to the existing object `object` (its root change's id), made on top of
    /// `parents` (the heads the author saw).
    pub fn child(
        kind: CobKind,
        object: ChangeId,
        parents: Vec<ChangeId>,
        author: &PublicKey,
        time_ms: u64,
        actions: Vec<Action>,
    ) -> Change {
        Change { kind, object: Some(object), parents, author: *author.as_bytes(), time_ms, actions }
    }

    /// Checks the structural rules every change must follow: the root has no parents and
    /// begins with its kind's Open action; any other change names its object and at least one
    /// parent and carries no Open action; actions fit the kind; every field is within its limit;
    /// a change introduces at most one comment, one review and one revision, since their ids are
    /// the change's id.
    pub fn validate(&self) -> Result<(), AspenError> {
        if self.actions.len() > MAX_ACTIONS {
            return Err(AspenError::invalid(format!(
                "change carries {} actions, over the limit MAX_ACTIONS = {MAX_ACTIONS}",
                self.actions.len()
            )));
        }
        if self.parents.len() > MAX_PARENTS {
            return Err(AspenError::invalid(format!(
                "change names {} parents, over the limit MAX_PARENTS = {MAX_PARENTS}",
                self.parents.len()
            )));
        }
        let mut seen = BTreeSet::new();
        for parent in &self.parents {
            if !seen.insert(parent) {
                return Err(AspenError::invalid(format!("change names parent {} twice", hex(parent))));
            }
        }
        for action in &self.actions {
            action.check_kind(self.kind)?;
            action.check_fields()?;
        }
        for (what, count) in [
            ("Comment", self.actions.iter().filter(|a| matches!(a, Action::Comment { .. })).count()),
            ("Review", self.actions.iter().filter(|a| matches!(a, Action::Review { .. })).count()),
            ("revision (OpenPatch or Revise)", self.actions.iter().filter(|a| a.introduces_revision()).count()),
        ] {
            if count > 1 {
                return Err(AspenError::invalid(format!(
                    "change carries {count} {what} actions; the change's id names what it introduces, so \
                     at most one is allowed per change"
                )));
            }
        }
        match self.object {
            None => {
                if !self.parents.is_empty() {
                    return Err(AspenError::invalid(format!(
                        "a root change (object None) cannot have parents, and this one names {}",
                        self.parents.len()
                    )));
                }
                let expected = match self.kind {
                    CobKind::Issue => "OpenIssue",
                    CobKind::Patch => "OpenPatch",
                };
                match self.actions.first() {
                    Some(first) if first.is_open() => {}
                    Some(first) => {
                        return Err(AspenError::invalid(format!(
                            "a root {} change must begin with {expected}, not {}",
                            self.kind,
                            first.name()
                        )));
                    }
                    None => {
                        return Err(AspenError::invalid(format!(
                            "a root {} change carries no actions; it must begin with {expected}",
                            self.kind
                        )));
                    }
                }
                if self.actions.iter().skip(1).any(Action::is_open) {
                    return Err(AspenError::invalid("a root change carries more than one Open action"));
                }
            }
            Some(object) => {
                if self.parents.is_empty() {
                    return Err(AspenError::invalid(format!(
                        "a change to object {} names no parents; only the root change has none",
                        hex(&object)
                    )));
                }
                if let Some(open) = self.actions.iter().find(|a| a.is_open()) {
                    return Err(AspenError::invalid(format!(
                        "only the root change may carry an Open action, and this change to object {} carries {}",
                        hex(&object),
                        open.name()
                    )));
                }
            }
        }
        Ok(())
    }

    /// Signs the change with `key`, which must be the author's key. Does not check the
    /// structural rules; [`SignedChange::verify`] does, so call [`Change::validate`] first to
    /// refuse a bad change before it is sent.
    pub fn sign(&self, key: &SecretKey) -> Result<SignedChange, AspenError> {
        let signer = key.public();
        if signer.as_bytes() != &self.author {
            return Err(AspenError::invalid(format!(
                "change author {} is not the signing key {}; a change is signed by its author",
                hex(&self.author),
                hex(signer.as_bytes())
            )));
        }
        let change =
            postcard::to_allocvec(self).map_err(|e| AspenError::internal(format!("change does not encode: {e}")))?;
        let signature = key.sign(&signing_message(&change)).to_bytes();
        let signed = SignedChange { change, signature };
        let len = signed.encode().len();
        if len > MAX_SIGNED_CHANGE_BYTES {
            return Err(AspenError::invalid(format!(
                "signed change is {len} bytes, over the limit MAX_SIGNED_CHANGE_BYTES = {MAX_SIGNED_CHANGE_BYTES}"
            )));
        }
        Ok(signed)
    }
}

fn signing_message(change: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(SIGNING_CONTEXT.len() + change.len());
    message.extend_from_slice(SIGNING_CONTEXT);
    message.extend_from_slice(change);
    message
}

/// A change as stored and sent: the encoded [`Change`] and its author's signature over it.
///
/// Frozen: the encoding is hashed into the change's id, so fields are never added, removed or
/// reordered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedChange {
    /// The postcard encoding of the [`Change`].
    #[serde(with = "serde_bytes")]
    pub change: Vec<u8>,
    /// The author's ed25519 signature over a fixed context string followed by `change`.
    #[serde(with = "serde_bytes")]
    pub signature: [u8; 64],
}

impl SignedChange {
    /// The stored form: its BLAKE3 hash is the change's id.
    pub fn encode(&self) -> Vec<u8> {
        // Writing two byte strings into a growable buffer has no failure mode.
        postcard::to_allocvec(self).expect("a SignedChange holds only byte strings, which always encode")
    }

    /// Reads the stored form. Refuses anything but the canonical encoding (no trailing bytes,
    /// no overlong lengths), so one change has exactly one id.
    pub fn decode(bytes: &[u8]) -> Result<SignedChange, AspenError> {
        if bytes.len() > MAX_SIGNED_CHANGE_BYTES {
            return Err(AspenError::invalid(format!(
                "signed change is {} bytes, over the limit MAX_SIGNED_CHANGE_BYTES = {MAX_SIGNED_CHANGE_BYTES}",
                bytes.len()
            )));
        }
        let signed: SignedChange = postcard::from_bytes(bytes)
            .map_err(|e| AspenError::invalid(format!("signed change does not decode: {e}")))?;
        if signed.encode() != bytes {
            return Err(AspenError::invalid(
                "signed change is not in canonical encoding (trailing bytes or overlong lengths)",
            ));
        }
        Ok(signed)
    }

    /// The change's id: the BLAKE3 hash of [`SignedChange::encode`].
    pub fn id(&self) -> ChangeId {
        blake3::hash(&self.encode()).into()
    }

    /// Decodes the change, checks the signature against its author and checks the structural
    /// rules ([`Change::validate`]). Returns the change only if all hold.
    pub fn verify(&self) -> Result<Change, AspenError> {
        let change: Change = postcard::from_bytes(&self.change)
            .map_err(|e| AspenError::invalid(format!("change does not decode: {e}")))?;
        let canonical = postcard::to_allocvec(&change)
            .map_err(|e| AspenError::internal(format!("change does not encode again: {e}")))?;
        if canonical != self.change {
            return Err(AspenError::invalid(
                "change is not in canonical encoding (trailing bytes or overlong lengths)",
            ));
        }
        let author = PublicKey::from_bytes(&change.author).map_err(|_| {
            AspenError::invalid(format!("change author {} is not a valid ed25519 public key", hex(&change.author)))
        })?;
        author.verify(&signing_message(&self.change), &Signature::from_bytes(&self.signature)).map_err(|_| {
            AspenError::invalid(format!(
                "change signature does not verify against its author {}: the change or its signature was altered",
                hex(&change.author)
            ))
        })?;
        change.validate()?;
        Ok(change)
    }
}

/// Where an object stands.
///
/// Frozen: variants are only ever appended at the end (postcard encodes the variant index).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CobStatus {
    /// Open (the state after opening and after a reopen).
    Open,
    /// Closed without being merged.
    Closed,
    /// A patch whose revision `revision` was merged as `commit`; final.
    Merged {
        /// The change that introduced the merged revision.
        revision: ChangeId,
        /// The commit the target branch points at after the merge.
        commit: ObjectId,
    },
}

/// A comment on an object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Comment {
    /// The id of the change that carries the comment.
    pub id: ChangeId,
    /// Its author's public key.
    pub author: [u8; 32],
    /// When it was written, by the author's clock.
    pub time_ms: u64,
    /// Its text.
    pub body: String,
    /// The comment it answers; may name a change this object does not know.
    pub reply_to: Option<ChangeId>,
}

/// A revision of a patch: one proposed head.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revision {
    /// The id of the change that introduced it (the root for the first revision).
    pub id: ChangeId,
    /// The commit it is based on.
    pub base: ObjectId,
    /// Its head commit.
    pub head: ObjectId,
    /// What changed since the previous revision (empty for the first).
    pub note: String,
    /// Its author's public key.
    pub author: [u8; 32],
    /// When it was made, by the author's clock.
    pub time_ms: u64,
}

/// A review of one revision of a patch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Review {
    /// The id of the change that carries the review.
    pub id: ChangeId,
    /// The id of the revision reviewed.
    pub revision: ChangeId,
    /// The reviewer's public key.
    pub author: [u8; 32],
    /// The verdict.
    pub verdict: Verdict,
    /// The review's text.
    pub body: String,
    /// When it was written, by the reviewer's clock.
    pub time_ms: u64,
}

/// The state of one object: the result of [`fold`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CobState {
    /// The object's id (its root change's id).
    pub id: ChangeId,
    /// Issue or patch.
    pub kind: CobKind,
    /// The current title.
    pub title: String,
    /// The issue's body or the patch's description.
    pub body: String,
    /// The public key of whoever opened it.
    pub author: [u8; 32],
    /// When it was opened, by the opener's clock.
    pub created_ms: u64,
    /// The latest `time_ms` of any of its changes.
    pub updated_ms: u64,
    /// Open, closed or merged.
    pub state: CobStatus,
    /// Its labels.
    pub labels: BTreeSet<String>,
    /// Its comments, in the fold's order.
    pub comments: Vec<Comment>,
    /// For a patch, the branch it targets; `None` for an issue.
    pub target: Option<String>,
    /// For a patch, its revisions in the fold's order (the first is the root's); empty for
    /// an issue.
    pub revisions: Vec<Revision>,
    /// For a patch, its reviews in the fold's order; empty for an issue.
    pub reviews: Vec<Review>,
    /// The DAG's current heads, sorted: a new change names these as its parents.
    pub heads: Vec<ChangeId>,
}

impl CobState {
    /// The state right after the root change's Open action.
    fn opened(id: ChangeId, root: &Change) -> Result<CobState, AspenError> {
        let mut state = CobState {
            id,
            kind: root.kind,
            title: String::new(),
            body: String::new(),
            author: root.author,
            created_ms: root.time_ms,
            updated_ms: root.time_ms,
            state: CobStatus::Open,
            labels: BTreeSet::new(),
            comments: Vec::new(),
            target: None,
            revisions: Vec::new(),
            reviews: Vec::new(),
            heads: Vec::new(),
        };
        match root.actions.first() {
            Some(Action::OpenIssue { title, body }) => {
                state.title = title.clone();
                state.body = body.clone();
            }
            Some(Action::OpenPatch { title, description, target, base, head }) => {
                state.title = title.clone();
                state.body = description.clone();
                state.target = Some(target.clone());
                state.revisions.push(Revision {
                    id,
                    base: *base,
                    head: *head,
                    note: String::new(),
                    author: root.author,
                    time_ms: root.time_ms,
                });
            }
            _ => return Err(in_change(&id, AspenError::invalid("the root change does not begin with an Open action"))),
        }
        Ok(state)
    }

    fn knows_revision(&self, revision: &ChangeId) -> bool {
        self.revisions.iter().any(|r| &r.id == revision)
    }

    /// Applies one action of change `id`. The Open action was applied by [`CobState::opened`].
    fn apply(&mut self, id: &ChangeId, change: &Change, action: &Action) {
        let merged = matches!(self.state, CobStatus::Merged { .. });
        match action {
            Action::OpenIssue { .. } | Action::OpenPatch { .. } => {}
            Action::Comment { body, reply_to } => self.comments.push(Comment {
                id: *id,
                author: change.author,
                time_ms: change.time_ms,
                body: body.clone(),
                reply_to: *reply_to,
            }),
            Action::EditTitle { title } => self.title = title.clone(),
            Action::Label { add, remove } => {
                self.labels.extend(add.iter().cloned());
                for label in remove {
                    self.labels.remove(label);
                }
            }
            Action::Close if !merged => self.state = CobStatus::Closed,
            Action::Reopen if !merged => self.state = CobStatus::Open,
            Action::Close | Action::Reopen => {}
            Action::Revise { base, head, note } => self.revisions.push(Revision {
                id: *id,
                base: *base,
                head: *head,
                note: note.clone(),
                author: change.author,
                time_ms: change.time_ms,
            }),
            // An unknown revision cannot happen when the reviewed revision is an ancestor, but a
            // change may name one it learned of elsewhere: such a review is ignored, not an error.
            Action::Review { revision, verdict, body } if self.knows_revision(revision) => self.reviews.push(Review {
                id: *id,
                revision: *revision,
                author: change.author,
                verdict: *verdict,
                body: body.clone(),
                time_ms: change.time_ms,
            }),
            Action::Review { .. } => {}
            Action::Merged { revision, commit } if !merged && self.knows_revision(revision) => {
                self.state = CobStatus::Merged { revision: *revision, commit: *commit }
            }
            Action::Merged { .. } => {}
        }
    }
}

/// The heads of a set of changes: the ids no change in the set names as a parent, sorted.
pub fn heads(changes: &[(ChangeId, Change)]) -> Vec<ChangeId> {
    let named: BTreeSet<&ChangeId> = changes.iter().flat_map(|(_, c)| &c.parents).collect();
    let heads: BTreeSet<ChangeId> = changes.iter().map(|(id, _)| *id).filter(|id| !named.contains(id)).collect();
    heads.into_iter().collect()
}

/// Folds the verified changes of one object, in any order, into its state. The result
/// depends only on the set: changes are applied in topological order (parents first), and
/// among changes whose parents are all applied, the smallest `(time_ms, id)` goes first.
///
/// Refuses a set without exactly one root, with a change of another object or kind, with a
/// change whose parent is missing, with a cycle, or with a change that breaks the structural
/// rules of [`Change::validate`].
pub fn fold(changes: &[(ChangeId, Change)]) -> Result<CobState, AspenError> {
    let mut by_id: BTreeMap<ChangeId, &Change> = BTreeMap::new();
    for (id, change) in changes {
        if let Some(earlier) = by_id.insert(*id, change)
            && earlier != change
        {
            return Err(AspenError::invalid(format!("change {} appears twice with different contents", hex(id))));
        }
    }
    let mut roots = by_id.iter().filter(|(_, c)| c.object.is_none()).map(|(id, c)| (*id, *c));
    let (root_id, root) = match (roots.next(), roots.next()) {
        (Some(root), None) => root,
        (None, _) => {
            return Err(AspenError::invalid(format!(
                "the {} changes have no root change (one with object None) to open the object",
                by_id.len()
            )));
        }
        (Some((a, _)), Some((b, _))) => {
            return Err(AspenError::invalid(format!(
                "the changes have more than one root change, among them {} and {}; one object has one root",
                hex(&a),
                hex(&b)
            )));
        }
    };

    let mut waiting_on: BTreeMap<ChangeId, usize> = BTreeMap::new();
    let mut children: BTreeMap<ChangeId, Vec<ChangeId>> = BTreeMap::new();
    let mut ready = BinaryHeap::new();
    for (id, change) in &by_id {
        change.validate().map_err(|e| in_change(id, e))?;
        if change.kind != root.kind {
            return Err(in_change(
                id,
                AspenError::invalid(format!(
                    "it is a {} change, but object {} is a {}",
                    change.kind,
                    hex(&root_id),
                    root.kind
                )),
            ));
        }
        if let Some(object) = change.object
            && object != root_id
        {
            return Err(in_change(
                id,
                AspenError::invalid(format!("it belongs to object {}, not {}", hex(&object), hex(&root_id))),
            ));
        }
        for parent in &change.parents {
            if !by_id.contains_key(parent) {
                return Err(in_change(
                    id,
                    AspenError::invalid(format!("its parent {} is missing from the object's changes", hex(parent))),
                ));
            }
            children.entry(*parent).or_default().push(*id);
        }
        // `validate` refused duplicate parents, so this counts distinct edges.
        waiting_on.insert(*id, change.parents.len());
        if change.parents.is_empty() {
            ready.push(Reverse((change.time_ms, *id)));
        }
    }

    let mut state = CobState::opened(root_id, root)?;
    let mut applied = 0usize;
    while let Some(Reverse((_, id))) = ready.pop() {
        applied += 1;
        let Some(change) = by_id.get(&id) else { continue };
        let skip = usize::from(id == root_id);
        for action in change.actions.iter().skip(skip) {
            state.apply(&id, change, action);
        }
        state.updated_ms = state.updated_ms.max(change.time_ms);
        for child in children.get(&id).into_iter().flatten() {
            if let Some(count) = waiting_on.get_mut(child) {
                *count -= 1;
                if *count == 0
                    && let Some(c) = by_id.get(child)
                {
                    ready.push(Reverse((c.time_ms, *child)));
                }
            }
        }
    }
    if applied != by_id.len() {
        return Err(AspenError::invalid(format!(
            "the changes form a cycle: {} of {} changes never had all their parents applied",
            by_id.len() - applied,
            by_id.len()
        )));
    }
    state.heads = heads(changes);
    Ok(state)
}

/// The full 64-digit hex form of a change id.
pub fn hex(id: &ChangeId) -> String {
    data_encoding::HEXLOWER.encode(id)
}

/// The first 12 hex digits of a change id, for display.
pub fn short_id(id: &ChangeId) -> String {
    let mut text = hex(id);
    text.truncate(12);
    text
}

/// Parses a change (or object) id written as 64 hex digits.
pub fn parse_id(text: &str) -> Result<ChangeId, AspenError> {
    if text.len() != 64 {
        return Err(AspenError::invalid(format!("id {text:?} is not 64 hex digits")));
    }
    let bytes = data_encoding::HEXLOWER_PERMISSIVE
        .decode(text.as_bytes())
        .map_err(|_| AspenError::invalid(format!("id {text:?} is not hex")))?;
    bytes.try_into().map_err(|_| AspenError::invalid(format!("id {text:?} is not 64 hex digits")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(n: u8) -> SecretKey {
        SecretKey::from_bytes(&[n; 32])
    }

    /// Signs, stores and reads back a change the way a node does, returning its id and the
    /// verified change.
    fn signed(change: &Change, key: &SecretKey) -> (ChangeId, Change) {
        let bytes = change.sign(key).unwrap().encode();
        let stored = SignedChange::decode(&bytes).unwrap();
        let id: ChangeId = blake3::hash(&bytes).into();
        assert_eq!(stored.id(), id, "the id is the hash of the stored bytes");
        let verified = stored.verify().unwrap();
        assert_eq!(&verified, change);
        (id, verified)
    }

    fn open_issue(title: &str) -> Action {
        Action::OpenIssue { title: title.into(), body: "it breaks".into() }
    }

    fn open_patch() -> Action {
        Action::OpenPatch {
            title: "fix it".into(),
            description: "a fix".into(),
            target: "main".into(),
            base: [1; 20],
            head: [2; 20],
        }
    }

    fn comment(body: &str) -> Action {
        Action::Comment { body: body.into(), reply_to: None }
    }

    fn label(add: &[&str], remove: &[&str]) -> Action {
        Action::Label {
            add: add.iter().map(|s| s.to_string()).collect(),
            remove: remove.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn verify_error(change: &Change, key: &SecretKey) -> String {
        change.sign(key).unwrap().verify().unwrap_err().to_string()
    }

    #[test]
    fn a_signed_change_round_trips_through_its_stored_form() {
        let alice = key(1);
        let change = Change::root(CobKind::Issue, &alice.public(), 7, open_issue("crash"));
        let (id, verified) = signed(&change, &alice);
        assert_eq!(verified, change);
        assert_eq!(parse_id(&hex(&id)).unwrap(), id);
        assert_eq!(short_id(&id), hex(&id)[..12]);
    }

    #[test]
    fn a_flipped_byte_in_the_change_or_the_signature_is_refused() {
        let alice = key(1);
        let change = Change::root(CobKind::Issue, &alice.public(), 7, open_issue("crash"));
        let good = change.sign(&alice).unwrap();

        let mut altered = good.clone();
        let last = altered.change.len() - 1;
        altered.change[last] ^= 1; // the last byte of the body text
        let err = altered.verify().unwrap_err().to_string();
        assert!(err.contains("change signature does not verify against its author"), "{err}");

        let mut altered = good.clone();
        altered.signature[10] ^= 1;
        let err = altered.verify().unwrap_err().to_string();
        assert!(err.contains("change signature does not verify against its author"), "{err}");

        let mut bytes = good.encode();
        bytes.push(0);
        let err = SignedChange::decode(&bytes).unwrap_err().to_string();
        assert!(err.contains("canonical"), "{err}");
    }

    #[test]
    fn only_the_author_can_sign_a_change() {
        let change = Change::root(CobKind::Issue, &key(1).public(), 7, open_issue("crash"));
        let err = change.sign(&key(2)).unwrap_err().to_string();
        assert!(err.contains("is not the signing key"), "{err}");
    }

    #[test]
    fn verify_refuses_changes_that_break_the_structural_rules() {
        let alice = key(1);
        let me = alice.public();

        let mut root_with_parents = Change::root(CobKind::Issue, &me, 1, open_issue("crash"));
        root_with_parents.parents = vec![[9; 32]];
        let err = verify_error(&root_with_parents, &alice);
        assert!(err.contains("a root change (object None) cannot have parents"), "{err}");

        let reopen = Change::child(CobKind::Issue, [9; 32], vec![[9; 32]], &me, 1, vec![open_issue("again")]);
        let err = verify_error(&reopen, &alice);
        assert!(err.contains("only the root change may carry an Open action"), "{err}");

        let issue_on_patch = Change::root(CobKind::Patch, &me, 1, open_issue("crash"));
        let err = verify_error(&issue_on_patch, &alice);
        assert!(err.contains("a patch change cannot carry an issue's Open action"), "{err}");

        let revise_on_issue = Change::child(
            CobKind::Issue,
            [9; 32],
            vec![[9; 32]],
            &me,
            1,
            vec![Action::Revise { base: [0; 20], head: [0; 20], note: String::new() }],
        );
        let err = verify_error(&revise_on_issue, &alice);
        assert!(err.contains("an issue change cannot carry a Revise action"), "{err}");

        let long_title = Change::root(CobKind::Issue, &me, 1, open_issue(&"x".repeat(MAX_TITLE_BYTES + 1)));
        let err = verify_error(&long_title, &alice);
        assert!(err.contains("title is 257 bytes, over the limit MAX_TITLE_BYTES = 256"), "{err}");

        let orphan = Change::child(CobKind::Issue, [9; 32], vec![], &me, 1, vec![Action::Close]);
        let err = verify_error(&orphan, &alice);
        assert!(err.contains("names no parents"), "{err}");

        let too_many =
            Change::child(CobKind::Issue, [9; 32], vec![[9; 32]], &me, 1, vec![Action::Close; MAX_ACTIONS + 1]);
        let err = verify_error(&too_many, &alice);
        assert!(err.contains("over the limit MAX_ACTIONS"), "{err}");

        let labels = Change::child(CobKind::Issue, [9; 32], vec![[9; 32]], &me, 1, vec![label(&["x"; 33], &[])]);
        let err = verify_error(&labels, &alice);
        assert!(err.contains("over the limit MAX_LABELS_PER_ACTION"), "{err}");

        let bad_target = Change::root(
            CobKind::Patch,
            &me,
            1,
            Action::OpenPatch {
                title: "t".into(),
                description: String::new(),
                target: "a..b".into(),
                base: [0; 20],
                head: [0; 20],
            },
        );
        let err = verify_error(&bad_target, &alice);
        assert!(err.contains("patch target \"a..b\" is not a valid branch name"), "{err}");
    }

    #[test]
    fn concurrent_issue_changes_merge_without_loss() {
        let (alice, bob) = (key(1), key(2));
        let root = signed(&Change::root(CobKind::Issue, &alice.public(), 100, open_issue("crash")), &alice);
        let object = root.0;
        // Two changes made concurrently on top of the root.
        let from_alice = signed(
            &Change::child(
                CobKind::Issue,
                object,
                vec![object],
                &alice.public(),
                200,
                vec![comment("I see it too"), label(&["bug", "ui"], &[]), Action::Close],
            ),
            &alice,
        );
        let from_bob = signed(
            &Change::child(
                CobKind::Issue,
                object,
                vec![object],
                &bob.public(),
                300,
                vec![
                    Action::Comment { body: "not for me".into(), reply_to: Some(object) },
                    label(&["needs-info"], &["ui"]),
                    Action::Reopen,
                ],
            ),
            &bob,
        );
        let mut both = vec![from_alice.0, from_bob.0];
        both.sort();
        let merge = signed(
            &Change::child(
                CobKind::Issue,
                object,
                both.clone(),
                &alice.public(),
                250,
                vec![Action::EditTitle { title: "crash on start".into() }],
            ),
            &alice,
        );
        let before_merge = vec![from_bob.clone(), root.clone(), from_alice.clone()];
        assert_eq!(heads(&before_merge), both);
        assert_eq!(fold(&before_merge).unwrap().heads, both);

        let changes = vec![merge.clone(), from_bob.clone(), root.clone(), from_alice.clone()];
        let state = fold(&changes).unwrap();
        let expected = CobState {
            id: object,
            kind: CobKind::Issue,
            title: "crash on start".into(),
            body: "it breaks".into(),
            author: *alice.public().as_bytes(),
            created_ms: 100,
            updated_ms: 300,
            // Bob's reopen (time 300) comes after Alice's close (time 200).
            state: CobStatus::Open,
            labels: ["bug".to_string(), "needs-info".to_string()].into_iter().collect(),
            comments: vec![
                Comment {
                    id: from_alice.0,
                    author: *alice.public().as_bytes(),
                    time_ms: 200,
                    body: "I see it too".into(),
                    reply_to: None,
                },
                Comment {
                    id: from_bob.0,
                    author: *bob.public().as_bytes(),
                    time_ms: 300,
                    body: "not for me".into(),
                    reply_to: Some(object),
                },
            ],
            target: None,
            revisions: vec![],
            reviews: vec![],
            heads: vec![merge.0],
        };
        assert_eq!(state, expected);
        let mut reversed = changes.clone();
        reversed.reverse();
        assert_eq!(fold(&reversed).unwrap(), expected);
    }

    #[test]
    fn a_patch_folds_revisions_reviews_and_its_merge() {
        let (alice, bob) = (key(1), key(2));
        let root = signed(&Change::root(CobKind::Patch, &alice.public(), 10, open_patch()), &alice);
        let object = root.0;
        let revise = signed(
            &Change::child(
                CobKind::Patch,
                object,
                vec![object],
                &alice.public(),
                20,
                vec![Action::Revise { base: [1; 20], head: [3; 20], note: "address review".into() }],
            ),
            &alice,
        );
        let review = signed(
            &Change::child(
                CobKind::Patch,
                object,
                vec![revise.0],
                &bob.public(),
                30,
                vec![Action::Review { revision: revise.0, verdict: Verdict::Accept, body: "good".into() }],
            ),
            &bob,
        );
        let stray = signed(
            &Change::child(
                CobKind::Patch,
                object,
                vec![review.0],
                &bob.public(),
                35,
                vec![Action::Review { revision: [7; 32], verdict: Verdict::Reject, body: "which one?".into() }],
            ),
            &bob,
        );
        let merged = signed(
            &Change::child(
                CobKind::Patch,
                object,
                vec![stray.0],
                &bob.public(),
                40,
                vec![Action::Merged { revision: revise.0, commit: [4; 20] }, Action::Reopen],
            ),
            &bob,
        );
        let closed_later = signed(
            &Change::child(CobKind::Patch, object, vec![merged.0], &alice.public(), 50, vec![Action::Close]),
            &alice,
        );
        let state = fold(&[closed_later.clone(), merged, stray, review.clone(), revise.clone(), root]).unwrap();
        assert_eq!(state.kind, CobKind::Patch);
        assert_eq!(state.title, "fix it");
        assert_eq!(state.body, "a fix");
        assert_eq!(state.target.as_deref(), Some("main"));
        assert_eq!(
            state.revisions,
            vec![
                Revision {
                    id: object,
                    base: [1; 20],
                    head: [2; 20],
                    note: String::new(),
                    author: *alice.public().as_bytes(),
                    time_ms: 10
                },
                Revision {
                    id: revise.0,
                    base: [1; 20],
                    head: [3; 20],
                    note: "address review".into(),
                    author: *alice.public().as_bytes(),
                    time_ms: 20
                },
            ]
        );
        // The review of an unknown revision is ignored.
        assert_eq!(
            state.reviews,
            vec![Review {
                id: review.0,
                revision: revise.0,
                author: *bob.public().as_bytes(),
                verdict: Verdict::Accept,
                body: "good".into(),
                time_ms: 30
            }]
        );
        // Merged is final: neither the reopen nor the later close undo it.
        assert_eq!(state.state, CobStatus::Merged { revision: revise.0, commit: [4; 20] });
        assert_eq!(state.heads, vec![closed_later.0]);
        assert_eq!(state.updated_ms, 50);
    }

    #[test]
    fn fold_refuses_a_missing_parent_naming_it() {
        let alice = key(1);
        let root = signed(&Change::root(CobKind::Issue, &alice.public(), 1, open_issue("crash")), &alice);
        let middle = signed(
            &Change::child(CobKind::Issue, root.0, vec![root.0], &alice.public(), 2, vec![comment("one")]),
            &alice,
        );
        let last = signed(
            &Change::child(CobKind::Issue, root.0, vec![middle.0], &alice.public(), 3, vec![comment("two")]),
            &alice,
        );
        let err = fold(&[root, last]).unwrap_err().to_string();
        assert!(err.contains(&format!("its parent {} is missing", hex(&middle.0))), "{err}");
    }

    #[test]
    fn fold_refuses_two_roots_and_no_root() {
        let alice = key(1);
        let one = signed(&Change::root(CobKind::Issue, &alice.public(), 1, open_issue("one")), &alice);
        let two = signed(&Change::root(CobKind::Issue, &alice.public(), 1, open_issue("two")), &alice);
        let err = fold(&[one.clone(), two]).unwrap_err().to_string();
        assert!(err.contains("more than one root change"), "{err}");
        let err = fold(&[]).unwrap_err().to_string();
        assert!(err.contains("no root change"), "{err}");
    }

    #[test]
    fn fold_refuses_a_change_of_another_object() {
        let alice = key(1);
        let one = signed(&Change::root(CobKind::Issue, &alice.public(), 1, open_issue("one")), &alice);
        let stranger = signed(
            &Change::child(CobKind::Issue, [5; 32], vec![one.0], &alice.public(), 2, vec![Action::Close]),
            &alice,
        );
        let err = fold(&[one, stranger]).unwrap_err().to_string();
        assert!(err.contains("belongs to object"), "{err}");
    }

    #[test]
    fn kinds_and_ids_parse_from_text() {
        assert_eq!("issue".parse::<CobKind>().unwrap(), CobKind::Issue);
        assert_eq!(CobKind::Patch.name().parse::<CobKind>().unwrap(), CobKind::Patch);
        assert!("pr".parse::<CobKind>().is_err());
        assert!(parse_id("abc").unwrap_err().to_string().contains("not 64 hex digits"));
        assert!(parse_id(&"g".repeat(64)).unwrap_err().to_string().contains("not hex"));
        assert_eq!(parse_id(&"AB".repeat(32)).unwrap(), [0xab; 32]);
    }

    /// One generated change after the root: how it picks parents, its author, clock and actions.
    #[derive(Debug, Clone)]
    struct Step {
        parent_seed: u64,
        author: usize,
        time_ms: u64,
        actions: Vec<(u8, u8)>,
    }

    fn step() -> impl Strategy<Value = Step> {
        (any::<u64>(), 0usize..3, 0u64..8, prop::collection::vec((0u8..8, any::<u8>()), 0..4))
            .prop_map(|(parent_seed, author, time_ms, actions)| Step { parent_seed, author, time_ms, actions })
    }

    /// A random DAG (patch or issue, 2 or 3 authors, 1..40 changes) and two orders of it.
    fn dag_and_two_orders() -> impl Strategy<Value = (bool, usize, Vec<Step>, Vec<usize>, Vec<usize>)> {
        (any::<bool>(), 2usize..=3, prop::collection::vec(step(), 1..40)).prop_flat_map(|(patch, authors, steps)| {
            let order: Vec<usize> = (0..steps.len()).collect();
            (Just(patch), Just(authors), Just(steps), Just(order.clone()).prop_shuffle(), Just(order).prop_shuffle())
        })
    }

    const LABELS: [&str; 4] = ["bug", "ui", "perf", "docs"];

    fn build(patch: bool, authors: usize, steps: &[Step]) -> Vec<(ChangeId, Change)> {
        let keys: Vec<SecretKey> = (1..=authors as u8).map(key).collect();
        let kind = if patch { CobKind::Patch } else { CobKind::Issue };
        let first = &steps[0];
        let author = &keys[first.author % authors];
        let open = if patch { open_patch() } else { open_issue("random") };
        let root = signed(&Change::root(kind, &author.public(), first.time_ms, open), author);
        let object = root.0;
        let mut changes = vec![root];
        let mut revisions = vec![object];
        for (i, step) in steps.iter().enumerate().skip(1) {
            let seed = step.parent_seed;
            let mut parents = BTreeSet::new();
            parents.insert(changes[(seed % i as u64) as usize].0);
            for back in 0..i.min(8) {
                if (seed >> (8 + back)) & 1 == 1 {
                    parents.insert(changes[i - 1 - back].0);
                }
            }
            let mut actions = Vec::new();
            let (mut commented, mut reviewed, mut revised) = (false, false, false);
            for &(code, arg) in &step.actions {
                let pick = |ids: &[ChangeId]| if arg % 5 == 0 { [0xee; 32] } else { ids[arg as usize % ids.len()] };
                let action = match code {
                    0 if !commented => {
                        commented = true;
                        let reply_to = (arg % 2 == 0).then(|| pick(&changes.iter().map(|c| c.0).collect::<Vec<_>>()));
                        Action::Comment { body: format!("comment {i}"), reply_to }
                    }
                    1 => label(&[LABELS[arg as usize % 4]], &[LABELS[arg as usize / 4 % 4]]),
                    2 => Action::Close,
                    3 => Action::Reopen,
                    4 => Action::EditTitle { title: format!("title {i} {arg}") },
                    5 if patch && !revised => {
                        revised = true;
                        Action::Revise { base: [arg; 20], head: [i as u8; 20], note: format!("rev {i}") }
                    }
                    6 if patch && !reviewed => {
                        reviewed = true;
                        Action::Review { revision: pick(&revisions), verdict: Verdict::Accept, body: format!("{i}") }
                    }
                    7 if patch => Action::Merged { revision: pick(&revisions), commit: [arg; 20] },
                    _ => continue,
                };
                actions.push(action);
            }
            let author = &keys[step.author % authors];
            let change =
                Change::child(kind, object, parents.into_iter().collect(), &author.public(), step.time_ms, actions);
            let (id, change) = signed(&change, author);
            if revised {
                revisions.push(id);
            }
            changes.push((id, change));
        }
        changes
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn the_fold_depends_only_on_the_set_of_changes((patch, authors, steps, first, second) in dag_and_two_orders()) {
            let changes = build(patch, authors, &steps);
            let one: Vec<_> = first.iter().map(|&i| changes[i].clone()).collect();
            let two: Vec<_> = second.iter().map(|&i| changes[i].clone()).collect();
            let state = fold(&one).unwrap();
            prop_assert_eq!(&state, &fold(&two).unwrap());
            prop_assert_eq!(&state.heads, &heads(&changes));
            let actions = || changes.iter().flat_map(|(_, c)| &c.actions);
            let comments = actions().filter(|a| matches!(a, Action::Comment { .. })).count();
            prop_assert_eq!(state.comments.len(), comments, "every comment is kept");
            let revises = actions().filter(|a| matches!(a, Action::Revise { .. })).count();
            prop_assert_eq!(state.revisions.len(), if patch { 1 + revises } else { 0 });
        }
    }
}
