//! What the cluster knows about blobs, kept in the KV under the blob app's prefix: named
//! pins, the index from a blob to the pins that name it, and the records that keep a
//! freshly added blob alive through its grace period. Also the pure decisions made from
//! them: how many replicas a blob needs, and which nodes a repair round copies to.
//!
//! The blob bytes themselves live in each node's iroh-blobs store, never in the KV.
//!
//! - A pin is the key `_aspen/blob/pin/<name>` whose value is the 32-byte BLAKE3 hash.
//! - Its index entry is the key `_aspen/blob/by-hash/<hex hash>/<name>` (empty value),
//!   written in the same transaction: a token scoped to pins under `S` may read a blob that a
//!   pin under `S` names.
//! - A fresh record is the key `_aspen/blob/fresh/<hex hash>`, attached to a lease whose
//!   TTL is the grace period: the leader's clock ends it, through the log, like any lease.
//!
//! A blob is live while a pin names it or its fresh record exists. Garbage collection
//! removes blobs that are not live; repair copies live blobs to more nodes.

use std::collections::{BTreeMap, BTreeSet};

use aspen_core::AspenError;
use aspen_core::capability::Capability;
use aspen_core::command::TxnOp;

/// Prefix of every key the blob store keeps in the KV (the blob app's own prefix).
pub const BLOB_PREFIX: &str = "_aspen/blob/";
/// Prefix of named pins.
pub const PIN_PREFIX: &str = "_aspen/blob/pin/";
/// Prefix of the index from a hash to the pins naming it.
pub const BY_HASH_PREFIX: &str = "_aspen/blob/by-hash/";
/// Prefix of the lease-backed records that protect a fresh blob.
pub const FRESH_PREFIX: &str = "_aspen/blob/fresh/";
/// Longest pin name, in bytes.
pub const MAX_PIN_NAME_BYTES: usize = 256;

/// A blob's name.
pub type BlobHash = [u8; 32];

fn hex(hash: &BlobHash) -> String {
    data_encoding::HEXLOWER.encode(hash)
}

/// The key of pin `name`.
pub fn pin_key(name: &str) -> Vec<u8> {
    format!("{PIN_PREFIX}{name}").into_bytes()
}

/// The pin name a pin key holds, if it is one.
pub fn pin_name(key: &[u8]) -> Option<&str> {
    std::str::from_utf8(key.strip_prefix(PIN_PREFIX.as_bytes())?).ok()
}

/// The hash a pin's value names, if the value is one.
pub fn pin_hash(value: &[u8]) -> Option<BlobHash> {
    value.try_into().ok()
}

/// The index key recording that pin `name` names `hash`.
pub fn by_hash_key(hash: &BlobHash, name: &str) -> Vec<u8> {
    format!("{BY_HASH_PREFIX}{}/{name}", hex(hash)).into_bytes()
}

/// The prefix of the index keys of `hash`'s pins whose names start with `scope`.
pub fn by_hash_prefix(hash: &BlobHash, scope: &[u8]) -> Vec<u8> {
    let mut key = format!("{BY_HASH_PREFIX}{}/", hex(hash)).into_bytes();
    key.extend_from_slice(scope);
    key
}

/// The key of `hash`'s fresh record.
pub fn fresh_key(hash: &BlobHash) -> Vec<u8> {
    format!("{FRESH_PREFIX}{}", hex(hash)).into_bytes()
}

/// The hash a fresh record's key names, if it is one.
pub fn fresh_hash(key: &[u8]) -> Option<BlobHash> {
    let hex = key.strip_prefix(FRESH_PREFIX.as_bytes())?;
    data_encoding::HEXLOWER.decode(hex).ok()?.try_into().ok()
}

/// The operations that make pin `name` name `hash`, to put in a transaction: the pin and its
/// index entry, and, when the pin named `replaced` before, the removal of that index entry.
/// An app pins what it stores in the same transaction that records it (the forge: with the
/// ref that reaches a pack).
pub fn pin_ops(name: &str, hash: &BlobHash, replaced: Option<&BlobHash>) -> Vec<TxnOp> {
    let mut ops = vec![
        TxnOp::Put { key: pin_key(name), value: hash.to_vec(), lease: None },
        TxnOp::Put { key: by_hash_key(hash, name), value: Vec::new(), lease: None },
    ];
    if let Some(old) = replaced
        && old != hash
    {
        ops.push(TxnOp::Delete { key: by_hash_key(old, name) });
    }
    ops
}

/// The operations that remove pin `name`, which names `hash`.
pub fn unpin_ops(name: &str, hash: &BlobHash) -> Vec<TxnOp> {
    vec![TxnOp::Delete { key: pin_key(name) }, TxnOp::Delete { key: by_hash_key(hash, name) }]
}

/// The KV rights an app declares (`App::kv_rights`) to pin and unpin under `scope` in its own
/// transactions: its pins, and the pin index (whose keys start with the hash, not the name).
pub fn pin_rights(scope: &str) -> Vec<Capability> {
    let pins = pin_key(scope);
    let index = BY_HASH_PREFIX.as_bytes().to_vec();
    vec![
        Capability::Read(pins.clone()),
        Capability::Write(pins.clone()),
        Capability::Delete(pins),
        Capability::Write(index.clone()),
        Capability::Delete(index),
    ]
}

/// Pin names are 1..=256 bytes of ASCII letters, digits and `.`, `_`, `-`, `/`, `:`.
pub fn validate_pin_name(name: &str) -> Result<(), AspenError> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/' | ':');
    if name.is_empty() || name.len() > MAX_PIN_NAME_BYTES || !name.chars().all(ok_char) {
        return Err(AspenError::invalid(format!(
            "pin name {name:?} must be 1..={MAX_PIN_NAME_BYTES} bytes of ASCII letters, digits, '.', '_', '-', '/' \
             or ':'"
        )));
    }
    Ok(())
}

/// How many nodes must hold a blob: `configured`, or a majority of `voters` when it is 0;
/// never more than the `members` there are, never less than one.
pub fn replica_target(configured: usize, voters: usize, members: usize) -> usize {
    let wanted = if configured == 0 { voters / 2 + 1 } else { configured };
    wanted.min(members).max(1)
}

/// One repair: copy `hash` to each of `to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repair {
    pub hash: BlobHash,
    pub to: Vec<u64>,
}

/// The copies that bring every live blob up to `target` holders, given what each node that
/// answered holds (`holdings`; a node that did not answer is absent and counts as holding
/// nothing). Blobs no node holds cannot be repaired and are skipped. At most `max_copies`
/// copies are planned, neediest blobs first; nodes are chosen in id order.
pub fn plan_repairs(
    live: &BTreeSet<BlobHash>,
    holdings: &BTreeMap<u64, BTreeSet<BlobHash>>,
    target: usize,
    max_copies: usize,
) -> Vec<Repair> {
    let target = target.min(holdings.len());
    let mut needy: Vec<(usize, BlobHash)> = live
        .iter()
        .map(|hash| (holdings.values().filter(|held| held.contains(hash)).count(), *hash))
        .filter(|(holders, _)| *holders > 0 && *holders < target)
        .collect();
    needy.sort();
    let mut repairs = Vec::new();
    let mut budget = max_copies;
    for (holders, hash) in needy {
        if budget == 0 {
            break;
        }
        let to: Vec<u64> = holdings
            .iter()
            .filter(|(_, held)| !held.contains(&hash))
            .map(|(node, _)| *node)
            .take((target - holders).min(budget))
            .collect();
        budget -= to.len();
        repairs.push(Repair { hash, to });
    }
    repairs
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn h(n: u8) -> BlobHash {
        [n; 32]
    }

    #[test]
    fn fresh_keys_round_trip_and_reject_other_keys() {
        let hash: BlobHash = std::array::from_fn(|i| (i * 7) as u8);
        assert_eq!(fresh_hash(&fresh_key(&hash)), Some(hash));
        assert!(by_hash_key(&hash, "forge/a").starts_with(&by_hash_prefix(&hash, b"forge/")));
        assert!(!by_hash_key(&hash, "cache/a").starts_with(&by_hash_prefix(&hash, b"forge/")));
        assert_eq!(fresh_hash(b"_aspen/blob/fresh/zz"), None);
        assert_eq!(fresh_hash(&pin_key("x")), None);
        assert_eq!(pin_name(&pin_key("forge/repo:main")), Some("forge/repo:main"));
    }

    #[test]
    fn pin_names_are_checked() {
        assert!(validate_pin_name("release/v1.2_rc-3:x86").is_ok());
        for bad in ["", "has space", "ünïcode", &"x".repeat(MAX_PIN_NAME_BYTES + 1)] {
            let err = validate_pin_name(bad).unwrap_err();
            assert!(err.to_string().contains("pin name"), "{err}");
        }
    }

    #[test]
    fn the_default_target_is_a_majority_of_voters_capped_by_members() {
        assert_eq!(replica_target(0, 3, 3), 2);
        assert_eq!(replica_target(0, 5, 5), 3);
        assert_eq!(replica_target(0, 1, 1), 1);
        assert_eq!(replica_target(3, 3, 4), 3);
        assert_eq!(replica_target(5, 3, 3), 3, "never more than the members");
        assert_eq!(replica_target(0, 0, 0), 1, "never less than one");
    }

    #[test]
    fn repairs_copy_to_nodes_lacking_the_blob_up_to_the_target() {
        let live = BTreeSet::from([h(1), h(2), h(3)]);
        let holdings = BTreeMap::from([
            (1, BTreeSet::from([h(1), h(2), h(9)])),
            (2, BTreeSet::from([h(1)])),
            (4, BTreeSet::new()),
        ]);
        let plan = plan_repairs(&live, &holdings, 3, 100);
        // h(3) is held nowhere: nothing to copy from.
        assert_eq!(plan, vec![Repair { hash: h(2), to: vec![2, 4] }, Repair { hash: h(1), to: vec![4] }]);
        assert_eq!(plan_repairs(&live, &holdings, 3, 1), vec![Repair { hash: h(2), to: vec![2] }]);
        assert!(plan_repairs(&live, &holdings, 1, 100).is_empty());
    }

    proptest! {
        #[test]
        fn a_plan_reaches_the_target_within_its_budget(
            held in proptest::collection::btree_map(0u64..6, proptest::collection::btree_set(0u8..8, 0..8), 1..6),
            target in 1usize..6,
            budget in 0usize..20,
        ) {
            let holdings: BTreeMap<u64, BTreeSet<BlobHash>> =
                held.into_iter().map(|(n, s)| (n, s.into_iter().map(h).collect())).collect();
            let live: BTreeSet<BlobHash> = (0u8..8).map(h).collect();
            let plan = plan_repairs(&live, &holdings, target, budget);
            let copies: usize = plan.iter().map(|r| r.to.len()).sum();
            prop_assert!(copies <= budget);
            for r in &plan {
                let holders = holdings.values().filter(|s| s.contains(&r.hash)).count();
                prop_assert!(holders > 0);
                prop_assert!(holders + r.to.len() <= target.min(holdings.len()));
                for n in &r.to {
                    prop_assert!(!holdings[n].contains(&r.hash), "copies only to nodes lacking it");
                }
            }
            if copies < budget {
                for hash in &live {
                    let holders = holdings.values().filter(|s| s.contains(hash)).count();
                    let planned = plan.iter().find(|r| r.hash == *hash).map_or(0, |r| r.to.len());
                    prop_assert!(holders == 0 || holders + planned >= target.min(holdings.len()));
                }
            }
        }
    }
}
