//! The storage interface the pure apply step runs against.
//!
//! `aspen-raft` implements it over a redb write transaction; [`crate::mem_store`]
//! implements it over `BTreeMap`s for tests. The apply step sees nothing else, so the
//! two cannot drift apart.

use crate::error::AspenError;
use crate::types::{Event, EventKind, KeyValue, KvEntry, LeaseId, LeaseRecord};

pub trait KvStore {
    fn get(&self, key: &[u8]) -> Result<Option<KvEntry>, AspenError>;
    fn put(&mut self, key: &[u8], entry: &KvEntry) -> Result<(), AspenError>;
    fn remove(&mut self, key: &[u8]) -> Result<Option<KvEntry>, AspenError>;
    /// Keys in `[start, end)` in order (empty `end` = unbounded), at most `limit` of them.
    fn range_keys(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Vec<Vec<u8>>, AspenError>;

    fn lease(&self, id: LeaseId) -> Result<Option<LeaseRecord>, AspenError>;
    fn put_lease(&mut self, lease: &LeaseRecord) -> Result<(), AspenError>;
    fn remove_lease(&mut self, id: LeaseId) -> Result<(), AspenError>;
    /// Every live lease; bounded by [`crate::limits::MAX_LEASES`].
    fn leases(&self) -> Result<Vec<LeaseRecord>, AspenError>;
    fn lease_count(&self) -> Result<u64, AspenError>;
    fn attach(&mut self, id: LeaseId, key: &[u8]) -> Result<(), AspenError>;
    fn detach(&mut self, id: LeaseId, key: &[u8]) -> Result<(), AspenError>;
    fn attached_keys(&self, id: LeaseId) -> Result<Vec<Vec<u8>>, AspenError>;

    /// The revision of the last change (0 for an empty store).
    fn revision(&self) -> u64;
    fn set_revision(&mut self, revision: u64);
    /// The id the next granted lease gets; the store persists the counter.
    fn next_lease_id(&self) -> u64;
    fn set_next_lease_id(&mut self, next: u64);

    /// The cluster root public key, once recorded.
    fn cluster_root(&self) -> Result<Option<[u8; 32]>, AspenError>;
    fn set_cluster_root(&mut self, key: [u8; 32]) -> Result<(), AspenError>;
    /// Records a revoked token link hash.
    fn revoke(&mut self, id: [u8; 32]) -> Result<(), AspenError>;
}

/// Writes `key` at `revision`: version and create revision carried over from the previous
/// entry, lease attachments moved, and the put recorded in `events`. Returns the previous
/// entry. Every command that changes a key goes through this or [`delete`].
pub(crate) fn put<S: KvStore>(
    store: &mut S,
    key: &[u8],
    value: &[u8],
    lease: Option<LeaseId>,
    revision: u64,
    events: &mut Vec<Event>,
) -> Result<Option<KeyValue>, AspenError> {
    let prev = store.get(key)?;
    let entry = match &prev {
        Some(p) => KvEntry {
            value: value.to_vec(),
            create_revision: p.create_revision,
            mod_revision: revision,
            version: p.version + 1,
            lease,
        },
        None => KvEntry { value: value.to_vec(), create_revision: revision, mod_revision: revision, version: 1, lease },
    };
    if let Some(old) = prev.as_ref().and_then(|p| p.lease)
        && Some(old) != lease
    {
        store.detach(old, key)?;
    }
    if let Some(new) = lease
        && prev.as_ref().and_then(|p| p.lease) != Some(new)
    {
        store.attach(new, key)?;
    }
    store.put(key, &entry)?;
    events.push(Event { kind: EventKind::Put, kv: entry.into_key_value(key.to_vec()) });
    Ok(prev.map(|p| p.into_key_value(key.to_vec())))
}

/// Removes `key` if present; returns whether it was.
pub(crate) fn delete<S: KvStore>(
    store: &mut S,
    key: &[u8],
    revision: u64,
    events: &mut Vec<Event>,
) -> Result<bool, AspenError> {
    let Some(prev) = store.remove(key)? else {
        return Ok(false);
    };
    if let Some(lease) = prev.lease {
        store.detach(lease, key)?;
    }
    events.push(Event {
        kind: EventKind::Delete,
        kv: KeyValue {
            key: key.to_vec(),
            value: Vec::new(),
            create_revision: prev.create_revision,
            mod_revision: revision,
            version: 0,
            lease: None,
        },
    });
    Ok(true)
}
