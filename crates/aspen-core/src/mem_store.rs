//! An in-memory [`KvStore`] over `BTreeMap`s: the reference the redb store is tested
//! against, and the store of the state machine's unit and property tests.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

use crate::error::AspenError;
use crate::store::KvStore;
use crate::types::{KvEntry, LeaseId, LeaseRecord};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemStore {
    pub kv: BTreeMap<Vec<u8>, KvEntry>,
    pub leases: BTreeMap<LeaseId, LeaseRecord>,
    pub attached: BTreeSet<(LeaseId, Vec<u8>)>,
    pub revision: u64,
    pub next_lease_id: u64,
    pub cluster_root: Option<[u8; 32]>,
    pub revoked: BTreeSet<[u8; 32]>,
}

impl MemStore {
    pub fn new() -> Self {
        MemStore { next_lease_id: 1, ..Default::default() }
    }
}

pub(crate) fn range_bounds<'a>(start: &'a [u8], end: &'a [u8]) -> (Bound<&'a [u8]>, Bound<&'a [u8]>) {
    let upper = if end.is_empty() { Bound::Unbounded } else { Bound::Excluded(end) };
    (Bound::Included(start), upper)
}

impl KvStore for MemStore {
    fn get(&self, key: &[u8]) -> Result<Option<KvEntry>, AspenError> {
        Ok(self.kv.get(key).cloned())
    }
    fn put(&mut self, key: &[u8], entry: &KvEntry) -> Result<(), AspenError> {
        self.kv.insert(key.to_vec(), entry.clone());
        Ok(())
    }
    fn remove(&mut self, key: &[u8]) -> Result<Option<KvEntry>, AspenError> {
        Ok(self.kv.remove(key))
    }
    fn range_keys(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Vec<Vec<u8>>, AspenError> {
        if !end.is_empty() && end <= start {
            return Ok(Vec::new());
        }
        Ok(self.kv.range::<[u8], _>(range_bounds(start, end)).take(limit).map(|(k, _)| k.clone()).collect())
    }
    fn lease(&self, id: LeaseId) -> Result<Option<LeaseRecord>, AspenError> {
        Ok(self.leases.get(&id).cloned())
    }
    fn put_lease(&mut self, lease: &LeaseRecord) -> Result<(), AspenError> {
        self.leases.insert(lease.id, lease.clone());
        Ok(())
    }
    fn remove_lease(&mut self, id: LeaseId) -> Result<(), AspenError> {
        self.leases.remove(&id);
        Ok(())
    }
    fn leases(&self) -> Result<Vec<LeaseRecord>, AspenError> {
        Ok(self.leases.values().cloned().collect())
    }
    fn lease_count(&self) -> Result<u64, AspenError> {
        Ok(self.leases.len() as u64)
    }
    fn attach(&mut self, id: LeaseId, key: &[u8]) -> Result<(), AspenError> {
        self.attached.insert((id, key.to_vec()));
        Ok(())
    }
    fn detach(&mut self, id: LeaseId, key: &[u8]) -> Result<(), AspenError> {
        self.attached.remove(&(id, key.to_vec()));
        Ok(())
    }
    fn attached_keys(&self, id: LeaseId) -> Result<Vec<Vec<u8>>, AspenError> {
        Ok(self.attached.range((id, Vec::new())..).take_while(|(l, _)| *l == id).map(|(_, k)| k.clone()).collect())
    }
    fn revision(&self) -> u64 {
        self.revision
    }
    fn set_revision(&mut self, revision: u64) {
        self.revision = revision;
    }
    fn next_lease_id(&self) -> u64 {
        self.next_lease_id.max(1)
    }
    fn set_next_lease_id(&mut self, next: u64) {
        self.next_lease_id = next;
    }
    fn cluster_root(&self) -> Result<Option<[u8; 32]>, AspenError> {
        Ok(self.cluster_root)
    }
    fn set_cluster_root(&mut self, key: [u8; 32]) -> Result<(), AspenError> {
        self.cluster_root = Some(key);
        Ok(())
    }
    fn revoke(&mut self, id: [u8; 32]) -> Result<(), AspenError> {
        self.revoked.insert(id);
        Ok(())
    }
}
