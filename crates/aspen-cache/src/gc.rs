//! What garbage collection keeps: a pure decision over a cache's paths and pins.
//!
//! Roots are the pinned paths and the paths pushed within the retention time; everything a
//! root references, directly or not, is kept with it, so a kept path's closure is whole.
//! The rest goes. The I/O around it (a consistent read, deletes fenced against pushes) is in
//! the service.

use std::collections::{BTreeMap, BTreeSet};

use crate::records::PathRecord;

/// The hash part of a store path's base name.
pub fn hash_part(base: &str) -> &str {
    base.get(..crate::narinfo::HASH_PART_LEN).unwrap_or(base)
}

/// The hash parts of the paths to keep: the roots (pinned, or pushed after `now_ms -
/// retention_ms`; every path when `retention_ms` is 0) and their closures.
pub fn keep(
    paths: &BTreeMap<String, PathRecord>,
    pinned: &BTreeSet<String>,
    now_ms: u64,
    retention_ms: u64,
) -> BTreeSet<String> {
    let recent = |r: &PathRecord| retention_ms == 0 || r.pushed_ms.saturating_add(retention_ms) > now_ms;
    let mut todo: Vec<&str> = paths
        .iter()
        .filter(|(hash, record)| pinned.contains(*hash) || recent(record))
        .map(|(hash, _)| hash.as_str())
        .collect();
    let mut kept = BTreeSet::new();
    while let Some(hash) = todo.pop() {
        if !kept.insert(hash.to_string()) {
            continue;
        }
        if let Some(record) = paths.get(hash) {
            todo.extend(record.references.iter().map(|r| hash_part(r)).filter(|h| !kept.contains(*h)));
        }
    }
    kept.retain(|h| paths.contains_key(h));
    kept
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn record(name: &str, refs: &[String], pushed_ms: u64) -> PathRecord {
        PathRecord {
            store_path: name.to_string(),
            nar_blob: [0; 32],
            nar_hash: [0; 32],
            nar_size: 1,
            references: refs.to_vec(),
            deriver: None,
            ca: None,
            sigs: Vec::new(),
            pushed_ms,
        }
    }

    fn name(i: usize) -> String {
        format!("{:0>32}-p{i}", i)
    }

    #[test]
    fn an_old_path_a_recent_one_references_is_kept() {
        let mut paths = BTreeMap::new();
        paths.insert(hash_part(&name(1)).to_string(), record(&name(1), &[], 0));
        paths.insert(hash_part(&name(2)).to_string(), record(&name(2), &[name(1)], 1_000));
        paths.insert(hash_part(&name(3)).to_string(), record(&name(3), &[], 0));
        let kept = keep(&paths, &BTreeSet::new(), 1_500, 1_000);
        assert_eq!(kept, [name(1), name(2)].iter().map(|n| hash_part(n).to_string()).collect());
        let pinned = [hash_part(&name(3)).to_string()].into();
        assert_eq!(keep(&paths, &pinned, 1_500, 1_000).len(), 3);
        assert_eq!(keep(&paths, &BTreeSet::new(), 1_500, 0).len(), 3, "retention 0 keeps all");
    }

    proptest! {
        /// Whatever the graph, ages and pins: roots are kept, and every reference of a kept
        /// path that the cache holds is kept.
        #[test]
        fn kept_sets_are_closed_under_references(
            edges in proptest::collection::vec((0usize..30, 0usize..30), 0..80),
            ages in proptest::collection::vec(0u64..2_000, 30),
            pins in proptest::collection::btree_set(0usize..30, 0..4),
            absent in proptest::collection::btree_set(0usize..30, 0..5),
        ) {
            let mut refs: BTreeMap<usize, Vec<String>> = BTreeMap::new();
            for (a, b) in edges {
                refs.entry(a).or_default().push(name(b));
            }
            let mut paths = BTreeMap::new();
            for i in (0..30).filter(|i| !absent.contains(i)) {
                paths.insert(hash_part(&name(i)).to_string(), record(&name(i), refs.get(&i).map(Vec::as_slice).unwrap_or(&[]), ages[i]));
            }
            let pinned: BTreeSet<String> = pins.iter().map(|i| hash_part(&name(*i)).to_string()).collect();
            let kept = keep(&paths, &pinned, 2_000, 500);
            for (hash, r) in &paths {
                if pinned.contains(hash) || r.pushed_ms + 500 > 2_000 {
                    prop_assert!(kept.contains(hash));
                }
                if kept.contains(hash) {
                    for reference in &r.references {
                        let h = hash_part(reference);
                        prop_assert!(!paths.contains_key(h) || kept.contains(h));
                    }
                }
            }
            prop_assert!(kept.iter().all(|h| paths.contains_key(h)));
        }
    }
}
