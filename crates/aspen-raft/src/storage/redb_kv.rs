//! [`KvStore`] over an open redb write transaction: the state machine's tables.

use aspen_core::error::AspenError;
use aspen_core::store::KvStore;
use aspen_core::types::{KvEntry, LeaseId, LeaseRecord};
use redb::{ReadableTable, ReadableTableMetadata, Table, WriteTransaction};

use super::tables::{self, KV, LEASE_EXPIRY, LEASE_KEYS, LEASES, REVOKED, SM_META};

pub struct RedbKv<'txn> {
    kv: Table<'txn, &'static [u8], &'static [u8]>,
    leases: Table<'txn, u64, &'static [u8]>,
    lease_keys: Table<'txn, &'static [u8], ()>,
    lease_expiry: Table<'txn, &'static [u8], ()>,
    revoked: Table<'txn, &'static [u8], ()>,
    revision: u64,
    next_lease_id: u64,
    cluster_root: Option<[u8; 32]>,
    cluster_root_set: bool,
    /// What this transaction changed that the node's security view must learn.
    pub changes: SecurityChanges,
}

/// Security state an apply changed.
#[derive(Debug, Default, Clone)]
pub struct SecurityChanges {
    pub cluster_root: Option<[u8; 32]>,
    pub revoked: Vec<[u8; 32]>,
}

/// The cluster root key recorded in a state machine meta table.
pub fn read_cluster_root(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
) -> Result<Option<[u8; 32]>, AspenError> {
    match table.get(tables::SM_CLUSTER_ROOT).map_err(st)? {
        Some(v) => Ok(Some(v.value().try_into().map_err(|_| AspenError::storage("bad cluster root key"))?)),
        None => Ok(None),
    }
}

fn st(e: impl std::fmt::Display) -> AspenError {
    AspenError::storage(e)
}

impl<'txn> RedbKv<'txn> {
    pub fn open(txn: &'txn WriteTransaction) -> Result<Self, AspenError> {
        let meta = txn.open_table(SM_META).map_err(st)?;
        let revision = read_u64(&meta, tables::SM_REVISION)?.unwrap_or(0);
        let next_lease_id = read_u64(&meta, tables::SM_NEXT_LEASE)?.unwrap_or(1);
        let cluster_root = read_cluster_root(&meta)?;
        drop(meta);
        Ok(RedbKv {
            kv: txn.open_table(KV).map_err(st)?,
            leases: txn.open_table(LEASES).map_err(st)?,
            lease_keys: txn.open_table(LEASE_KEYS).map_err(st)?,
            lease_expiry: txn.open_table(LEASE_EXPIRY).map_err(st)?,
            revoked: txn.open_table(REVOKED).map_err(st)?,
            revision,
            next_lease_id,
            cluster_root,
            cluster_root_set: false,
            changes: SecurityChanges::default(),
        })
    }

    /// Writes the counters back; call before committing. Returns the security changes.
    pub fn finish(self, txn: &'txn WriteTransaction) -> Result<SecurityChanges, AspenError> {
        let RedbKv { kv, leases, lease_keys, lease_expiry, revoked, .. } = self;
        drop((kv, leases, lease_keys, lease_expiry, revoked));
        let mut meta = txn.open_table(SM_META).map_err(st)?;
        meta.insert(tables::SM_REVISION, self.revision.to_be_bytes().as_slice()).map_err(st)?;
        meta.insert(tables::SM_NEXT_LEASE, self.next_lease_id.to_be_bytes().as_slice()).map_err(st)?;
        if self.cluster_root_set
            && let Some(root) = self.cluster_root
        {
            meta.insert(tables::SM_CLUSTER_ROOT, root.as_slice()).map_err(st)?;
        }
        Ok(self.changes)
    }
}

pub fn read_u64(table: &impl ReadableTable<&'static str, &'static [u8]>, key: &str) -> Result<Option<u64>, AspenError> {
    match table.get(key).map_err(st)? {
        Some(v) => {
            let arr: [u8; 8] = v.value().try_into().map_err(|_| AspenError::storage(format!("bad {key} counter")))?;
            Ok(Some(u64::from_be_bytes(arr)))
        }
        None => Ok(None),
    }
}

impl KvStore for RedbKv<'_> {
    fn get(&self, key: &[u8]) -> Result<Option<KvEntry>, AspenError> {
        match self.kv.get(key).map_err(st)? {
            Some(v) => Ok(Some(tables::decode(v.value()).map_err(st)?)),
            None => Ok(None),
        }
    }
    fn put(&mut self, key: &[u8], entry: &KvEntry) -> Result<(), AspenError> {
        let bytes = tables::encode(entry).map_err(st)?;
        self.kv.insert(key, bytes.as_slice()).map_err(st)?;
        Ok(())
    }
    fn remove(&mut self, key: &[u8]) -> Result<Option<KvEntry>, AspenError> {
        match self.kv.remove(key).map_err(st)? {
            Some(v) => Ok(Some(tables::decode(v.value()).map_err(st)?)),
            None => Ok(None),
        }
    }
    fn range_keys(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Vec<Vec<u8>>, AspenError> {
        if !end.is_empty() && end <= start {
            return Ok(Vec::new());
        }
        let iter = if end.is_empty() { self.kv.range::<&[u8]>(start..) } else { self.kv.range::<&[u8]>(start..end) };
        let mut out = Vec::new();
        for item in iter.map_err(st)?.take(limit) {
            let (k, _) = item.map_err(st)?;
            out.push(k.value().to_vec());
        }
        Ok(out)
    }
    fn lease(&self, id: LeaseId) -> Result<Option<LeaseRecord>, AspenError> {
        match self.leases.get(id.0).map_err(st)? {
            Some(v) => Ok(Some(tables::decode(v.value()).map_err(st)?)),
            None => Ok(None),
        }
    }
    fn put_lease(&mut self, lease: &LeaseRecord) -> Result<(), AspenError> {
        if let Some(old) = self.lease(lease.id)? {
            self.lease_expiry.remove(tables::expiry_key(old.expires_at_ms, old.id.0).as_slice()).map_err(st)?;
        }
        let bytes = tables::encode(lease).map_err(st)?;
        self.leases.insert(lease.id.0, bytes.as_slice()).map_err(st)?;
        self.lease_expiry.insert(tables::expiry_key(lease.expires_at_ms, lease.id.0).as_slice(), ()).map_err(st)?;
        Ok(())
    }
    fn remove_lease(&mut self, id: LeaseId) -> Result<(), AspenError> {
        if let Some(old) = self.lease(id)? {
            self.lease_expiry.remove(tables::expiry_key(old.expires_at_ms, old.id.0).as_slice()).map_err(st)?;
        }
        self.leases.remove(id.0).map_err(st)?;
        Ok(())
    }
    fn leases(&self) -> Result<Vec<LeaseRecord>, AspenError> {
        let mut out = Vec::new();
        for item in self.leases.iter().map_err(st)? {
            let (_, v) = item.map_err(st)?;
            out.push(tables::decode(v.value()).map_err(st)?);
        }
        Ok(out)
    }
    fn lease_count(&self) -> Result<u64, AspenError> {
        self.leases.len().map_err(st)
    }
    fn attach(&mut self, id: LeaseId, key: &[u8]) -> Result<(), AspenError> {
        self.lease_keys.insert(tables::lease_key(id.0, key).as_slice(), ()).map_err(st)?;
        Ok(())
    }
    fn detach(&mut self, id: LeaseId, key: &[u8]) -> Result<(), AspenError> {
        self.lease_keys.remove(tables::lease_key(id.0, key).as_slice()).map_err(st)?;
        Ok(())
    }
    fn attached_keys(&self, id: LeaseId) -> Result<Vec<Vec<u8>>, AspenError> {
        let start = id.0.to_be_bytes();
        let mut out = Vec::new();
        for item in self.lease_keys.range::<&[u8]>(start.as_slice()..).map_err(st)? {
            let (k, _) = item.map_err(st)?;
            let k = k.value();
            if k.len() < 8 || k[..8] != start {
                break;
            }
            out.push(k[8..].to_vec());
        }
        Ok(out)
    }
    fn revision(&self) -> u64 {
        self.revision
    }
    fn set_revision(&mut self, revision: u64) {
        self.revision = revision;
    }
    fn next_lease_id(&self) -> u64 {
        self.next_lease_id
    }
    fn set_next_lease_id(&mut self, next: u64) {
        self.next_lease_id = next;
    }
    fn cluster_root(&self) -> Result<Option<[u8; 32]>, AspenError> {
        Ok(self.cluster_root)
    }
    fn set_cluster_root(&mut self, key: [u8; 32]) -> Result<(), AspenError> {
        self.cluster_root = Some(key);
        self.cluster_root_set = true;
        self.changes.cluster_root = Some(key);
        Ok(())
    }
    fn revoke(&mut self, id: [u8; 32]) -> Result<(), AspenError> {
        self.revoked.insert(id.as_slice(), ()).map_err(st)?;
        self.changes.revoked.push(id);
        Ok(())
    }
}
