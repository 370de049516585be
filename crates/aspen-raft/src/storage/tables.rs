//! The redb tables and how their values are encoded.

use redb::{Database, TableDefinition};

/// Log index -> postcard(Entry).
pub const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
/// "vote" | "committed" | "purged" -> postcard.
pub const RAFT_META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");
/// Key -> postcard(KvEntry).
pub const KV: TableDefinition<&[u8], &[u8]> = TableDefinition::new("kv");
/// Lease id -> postcard(LeaseRecord).
pub const LEASES: TableDefinition<u64, &[u8]> = TableDefinition::new("leases");
/// lease id (8 bytes, big endian) ++ key -> ().
pub const LEASE_KEYS: TableDefinition<&[u8], ()> = TableDefinition::new("lease_keys");
/// expiry (ms, 8 bytes big endian) ++ lease id (8 bytes big endian) -> (): the leases in
/// the order they run out, so the leader's reaper reads only the expired ones. Derived from
/// `leases` (rebuilt when it disagrees, e.g. in a data dir from before it existed).
pub const LEASE_EXPIRY: TableDefinition<&[u8], ()> = TableDefinition::new("lease_expiry");
/// Hashes of revoked token links -> ().
pub const REVOKED: TableDefinition<&[u8], ()> = TableDefinition::new("revoked_tokens");
/// "applied" | "membership" | "revision" | "next_lease" | "cluster_root" -> postcard or raw.
pub const SM_META: TableDefinition<&str, &[u8]> = TableDefinition::new("sm_meta");

pub const META_VOTE: &str = "vote";
pub const META_COMMITTED: &str = "committed";
pub const META_PURGED: &str = "purged";
pub const SM_APPLIED: &str = "applied";
pub const SM_MEMBERSHIP: &str = "membership";
pub const SM_REVISION: &str = "revision";
pub const SM_NEXT_LEASE: &str = "next_lease";
pub const SM_CLUSTER_ROOT: &str = "cluster_root";

/// Creates the log file's tables.
pub fn ensure_log_tables(db: &Database) -> Result<(), redb::Error> {
    let txn = db.begin_write()?;
    txn.open_table(LOG)?;
    txn.open_table(RAFT_META)?;
    txn.commit()?;
    Ok(())
}

/// Creates the state machine file's tables.
pub fn ensure_state_tables(db: &Database) -> Result<(), redb::Error> {
    let txn = db.begin_write()?;
    txn.open_table(KV)?;
    txn.open_table(LEASES)?;
    txn.open_table(LEASE_KEYS)?;
    txn.open_table(REVOKED)?;
    txn.open_table(LEASE_EXPIRY)?;
    txn.open_table(SM_META)?;
    txn.commit()?;
    Ok(())
}

pub fn lease_key(id: u64, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + key.len());
    k.extend_from_slice(&id.to_be_bytes());
    k.extend_from_slice(key);
    k
}

/// The [`LEASE_EXPIRY`] key of a lease.
pub fn expiry_key(expires_at_ms: u64, id: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&expires_at_ms.to_be_bytes());
    k[8..].copy_from_slice(&id.to_be_bytes());
    k
}

/// Rebuilds [`LEASE_EXPIRY`] from the leases when the two disagree in size (a data dir
/// written before the index existed, or a snapshot just installed).
pub fn ensure_lease_expiry_index(db: &Database) -> Result<(), redb::Error> {
    use redb::ReadableTableMetadata;
    let txn = db.begin_write()?;
    {
        let leases = txn.open_table(LEASES)?;
        let mut index = txn.open_table(LEASE_EXPIRY)?;
        if leases.len()? != index.len()? {
            rebuild_lease_expiry(&leases, &mut index)?;
        }
    }
    txn.commit()?;
    Ok(())
}

/// Refills the expiry index from the lease table.
pub fn rebuild_lease_expiry(
    leases: &impl redb::ReadableTable<u64, &'static [u8]>,
    index: &mut redb::Table<&'static [u8], ()>,
) -> Result<(), redb::Error> {
    index.retain(|_, _| false)?;
    for item in leases.iter()? {
        let (id, value) = item?;
        let record: aspen_core::types::LeaseRecord =
            postcard::from_bytes(value.value()).map_err(|e| redb::Error::Corrupted(e.to_string()))?;
        index.insert(expiry_key(record.expires_at_ms, id.value()).as_slice(), ())?;
    }
    Ok(())
}

pub fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, std::io::Error> {
    postcard::to_allocvec(value).map_err(super::io_err)
}

pub fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, std::io::Error> {
    postcard::from_bytes(bytes).map_err(super::io_err)
}
