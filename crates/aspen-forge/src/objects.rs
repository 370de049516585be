//! Git objects as a repository holds them: its packs, opened from this node's pack cache
//! ([`PackSet`]), and what a received pack must pass before any ref may point into it
//! ([`receive_pack`]).
//!
//! The invariant kept: every object in a stored pack has everything it names (a commit's
//! tree and parents, a tree's entries, a tag's target) stored too, in the same pack or an
//! earlier one of the repository or its ancestors. A new pack is checked against that one
//! object at a time, so the check costs the size of the pack, not of the history.

use std::collections::{HashSet, VecDeque};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use aspen_core::AspenError;
use gix_hash::{ObjectId as Oid, oid};
use gix_object::Kind;

use crate::records::ObjectId;

/// Most commits an ancestry walk visits before it gives up.
pub const MAX_ANCESTRY_WALK: usize = 2_000_000;

/// Packs opened for reading, searched in order.
#[derive(Default)]
pub struct PackSet {
    bundles: Vec<gix_pack::Bundle>,
}

impl std::fmt::Debug for PackSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackSet").field("packs", &self.bundles.len()).finish()
    }
}

fn gix_failure(what: &str, e: impl std::fmt::Display) -> AspenError {
    AspenError::internal(format!("{what}: {e:#}"))
}

impl PackSet {
    /// Opens the packs whose index files are `indexes` (each beside its `.pack`).
    pub fn open(indexes: &[PathBuf]) -> Result<Self, AspenError> {
        let bundles = indexes
            .iter()
            .map(|idx| {
                gix_pack::Bundle::at(idx, gix_hash::Kind::Sha1)
                    .map_err(|e| gix_failure(&format!("cannot open the pack {}", idx.display()), e))
            })
            .collect::<Result<_, _>>()?;
        Ok(PackSet { bundles })
    }

    /// Adds one more pack, searched last.
    pub fn push(&mut self, bundle: gix_pack::Bundle) {
        self.bundles.push(bundle);
    }

    pub fn contains(&self, id: &oid) -> bool {
        self.bundles.iter().any(|b| b.index.lookup(id).is_some())
    }

    /// The object's kind and bytes, if a pack holds it.
    pub fn read<'b>(&self, id: &oid, buf: &'b mut Vec<u8>) -> Result<Option<(Kind, &'b [u8])>, AspenError> {
        use gix_object::Find;
        match self.try_find(id, buf) {
            Ok(Some(data)) => Ok(Some((data.kind, data.data))),
            Ok(None) => Ok(None),
            Err(e) => Err(gix_failure(&format!("cannot read object {id}"), e)),
        }
    }

    /// The kind of an object, if a pack holds it.
    pub fn kind(&self, id: &ObjectId) -> Result<Option<Kind>, AspenError> {
        let mut buf = Vec::new();
        Ok(self.read(&Oid::from_bytes_or_panic(id), &mut buf)?.map(|(kind, _)| kind))
    }

    /// Whether commit `ancestor` is reachable from commit `descendant` through parents.
    pub fn is_ancestor(&self, ancestor: &ObjectId, descendant: &ObjectId) -> Result<bool, AspenError> {
        let target = Oid::from_bytes_or_panic(ancestor);
        let mut queue = VecDeque::from([Oid::from_bytes_or_panic(descendant)]);
        let mut seen = HashSet::new();
        let mut buf = Vec::new();
        while let Some(id) = queue.pop_front() {
            if id == target {
                return Ok(true);
            }
            if !seen.insert(id) {
                continue;
            }
            if seen.len() > MAX_ANCESTRY_WALK {
                return Err(AspenError::invalid(format!(
                    "the history is over {MAX_ANCESTRY_WALK} commits deep; cannot tell whether the update is a fast-forward"
                )));
            }
            let Some((kind, data)) = self.read(&id, &mut buf)? else { continue };
            if kind != Kind::Commit {
                continue;
            }
            let commit = gix_object::CommitRef::from_bytes(data, gix_hash::Kind::Sha1)
                .map_err(|e| gix_failure(&format!("commit {id} does not parse"), e))?;
            queue.extend(commit.parents());
        }
        Ok(false)
    }
}

impl gix_object::Find for PackSet {
    fn try_find<'a>(&self, id: &oid, buffer: &'a mut Vec<u8>) -> gix_error::Result<Option<gix_object::Data<'a>>> {
        for bundle in &self.bundles {
            if bundle.index.lookup(id).is_some() {
                let mut inflate = gix_zlib::Inflate::default();
                let found = bundle.find(id, buffer, &mut inflate, &mut gix_pack::cache::Never)?;
                return Ok(found.map(|(data, _)| data));
            }
        }
        Ok(None)
    }
}

/// A pack that passed [`receive_pack`], written with its index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// Git's name of the pack: the hex SHA-1 of its contents.
    pub name: String,
    pub pack: PathBuf,
    pub index: PathBuf,
    pub objects: u32,
    pub bytes: u64,
}

/// Why a pack was refused: what the client is told.
fn refused(why: impl std::fmt::Display) -> AspenError {
    AspenError::invalid(format!("pack refused: {why}"))
}

/// A gix error with its causes, one line: `what failed: why: deeper why`.
fn chain(e: &gix_error::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        let line = cause.to_string();
        if !text.contains(&line) {
            text.push_str(": ");
            text.push_str(&line);
        }
        source = cause.source();
    }
    text
}

/// Reads one pack from `input` into `dir` with its index, completing a thin pack from
/// `existing` (whose objects the client may delta against), then checks every object in it:
/// it decodes, it parses as its kind, and everything it names is in this pack or in
/// `existing`. A corrupt object, a wrong checksum, a missing delta base or a missing
/// reference is refused with the reason, and nothing is left in `dir`. An empty pack (a
/// push that only points refs at objects already stored) gives `None`.
pub fn receive_pack(
    input: &mut dyn BufRead,
    dir: &Path,
    existing: Arc<PackSet>,
) -> Result<Option<Received>, AspenError> {
    let interrupt = AtomicBool::new(false);
    let options = gix_pack::bundle::write::Options {
        thread_limit: None,
        iteration_mode: gix_pack::data::input::Mode::Verify,
        index_version: gix_pack::index::Version::V2,
        alloc_limit_bytes: None,
        compression: gix_zlib::Compression::BEST_SPEED,
    };
    let outcome = gix_pack::Bundle::write_to_directory(
        input,
        Some(dir),
        &mut gix_utils::progress::Discard,
        &interrupt,
        Some(existing.clone()),
        gix_hash::Kind::Sha1,
        options,
    )
    .map_err(|e| refused(chain(&e)))?;
    let (Some(index), Some(pack)) = (outcome.index_path.clone(), outcome.data_path.clone()) else {
        if outcome.index.num_objects == 0 {
            return Ok(None);
        }
        return Err(AspenError::internal("the pack writer wrote no files"));
    };
    if let Some(keep) = &outcome.keep_path {
        let _ = std::fs::remove_file(keep);
    }
    let remove = || {
        let _ = std::fs::remove_file(&pack);
        let _ = std::fs::remove_file(&index);
    };
    let checked = check_references(&index, existing);
    if let Err(e) = checked {
        remove();
        return Err(e);
    }
    let bytes = std::fs::metadata(&pack).map(|m| m.len()).map_err(AspenError::internal)?;
    Ok(Some(Received {
        name: outcome.index.data_hash.to_hex().to_string(),
        pack,
        index,
        objects: outcome.index.num_objects,
        bytes,
    }))
}

/// Checks that every object of the pack at `index` parses and names only objects present.
fn check_references(index: &Path, existing: Arc<PackSet>) -> Result<(), AspenError> {
    let bundle = gix_pack::Bundle::at(index, gix_hash::Kind::Sha1).map_err(|e| refused(chain(&e)))?;
    let problem: Arc<Mutex<Option<String>>> = Arc::default();
    let interrupt = AtomicBool::new(false);
    let fresh = &bundle.index;
    let present = |id: &oid| fresh.lookup(id).is_some() || existing.contains(id);
    let report = |problem: &Mutex<Option<String>>, text: String| {
        if let Ok(mut p) = problem.lock()
            && p.is_none()
        {
            *p = Some(text);
        }
        gix_error::Error::from(gix_error::Message::new("object check failed"))
    };
    let processor = {
        let problem = problem.clone();
        move |kind: Kind, data: &[u8], entry: &gix_pack::index::Entry, _: &dyn gix_utils::progress::Progress| {
            let id = entry.oid;
            let missing = |named: &oid, what: &str| {
                format!("{kind} {id} names {what} {named}, which is neither in the pack nor stored")
            };
            match kind {
                Kind::Blob => {}
                Kind::Commit => {
                    let commit = gix_object::CommitRef::from_bytes(data, gix_hash::Kind::Sha1)
                        .map_err(|e| report(&problem, format!("commit {id} is malformed: {e}")))?;
                    let tree = commit.tree();
                    if !present(&tree) {
                        return Err(report(&problem, missing(&tree, "tree")));
                    }
                    for parent in commit.parents() {
                        if !present(&parent) {
                            return Err(report(&problem, missing(&parent, "parent")));
                        }
                    }
                }
                Kind::Tree => {
                    let tree = gix_object::TreeRef::from_bytes(data, gix_hash::Kind::Sha1)
                        .map_err(|e| report(&problem, format!("tree {id} is malformed: {e}")))?;
                    for item in &tree.entries {
                        // A submodule's commit lives in another repository.
                        if !item.mode.is_commit() && !present(item.oid) {
                            return Err(report(&problem, missing(item.oid, "entry")));
                        }
                    }
                }
                Kind::Tag => {
                    let tag = gix_object::TagRef::from_bytes(data, gix_hash::Kind::Sha1)
                        .map_err(|e| report(&problem, format!("tag {id} is malformed: {e}")))?;
                    let target = tag.target();
                    if !present(&target) {
                        return Err(report(&problem, missing(&target, "target")));
                    }
                }
            }
            Ok(())
        }
    };
    let options = gix_pack::index::traverse::Options {
        traversal: gix_pack::index::traverse::Algorithm::DeltaTreeLookup,
        thread_limit: None,
        check: gix_pack::index::traverse::SafetyCheck::SkipFileChecksumVerification,
        alloc_limit_bytes: None,
        make_pack_lookup_cache: || gix_pack::cache::Never,
    };
    let traversed =
        bundle.index.traverse(&bundle.pack, &mut gix_utils::progress::Discard, &interrupt, processor, options);
    if let Some(text) = problem.lock().ok().and_then(|mut p| p.take()) {
        return Err(refused(text));
    }
    traversed.map(drop).map_err(|e| refused(chain(&e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_refused_with_a_reason() {
        let dir = tempfile::tempdir().unwrap();
        let mut input: &[u8] = b"PACK\0\0\0\x09garbage";
        let err = receive_pack(&mut input, dir.path(), Arc::default()).unwrap_err();
        assert!(err.to_string().contains("pack refused"), "{err}");
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert!(left.is_empty(), "{left:?}");
    }
}
