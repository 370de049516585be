//! The KV state machine's apply step: a pure function of the store and one committed
//! entry. Raft calls it for committed entries only; nothing here reads a clock, a
//! random source or the network, so every replica reaches the same state.

use crate::command::{
    BatchResult, Compare, CompareOp, CompareTarget, Txn, TxnOp, TxnOpResult, WriteBatch, WriteCommand, WriteResult,
};
use crate::error::AspenError;
use crate::limits::{MAX_DELETE_RANGE_KEYS, MAX_LEASES};
use crate::store::{KvStore, delete, put};
use crate::types::{Event, KvEntry, LeaseId, LeaseRecord};
use crate::validate;

/// Applies every command of one entry in order. A command that fails changes nothing;
/// the others still apply. Returns per-command results and the events to publish.
///
/// An `Err` means the store itself failed (I/O): the caller must not commit.
pub fn apply_batch<S: KvStore>(store: &mut S, batch: &WriteBatch) -> Result<(BatchResult, Vec<Event>), StoreFailure> {
    let mut results = Vec::with_capacity(batch.commands.len());
    let mut events = Vec::new();
    for command in &batch.commands {
        let result = apply_command(store, batch.leader_time_ms, command, &mut events);
        match result {
            Err(AspenError::Storage { reason }) => return Err(StoreFailure(reason)),
            other => results.push(other),
        }
    }
    Ok((BatchResult { results }, events))
}

/// The underlying store failed; the entry must be retried, not half-applied.
#[derive(Debug, Clone, thiserror::Error)]
#[error("state machine storage failed: {0}")]
pub struct StoreFailure(pub String);

fn apply_command<S: KvStore>(
    store: &mut S,
    now_ms: u64,
    command: &WriteCommand,
    events: &mut Vec<Event>,
) -> Result<WriteResult, AspenError> {
    validate::command(command)?;
    match command {
        WriteCommand::Put { key, value, lease } => {
            check_lease(store, *lease)?;
            let revision = store.revision() + 1;
            let prev = put(store, key, value, *lease, revision, events)?;
            store.set_revision(revision);
            Ok(WriteResult::Put { revision, prev })
        }
        WriteCommand::Delete { key } => {
            let revision = store.revision() + 1;
            let deleted = u64::from(delete(store, key, revision, events)?);
            if deleted > 0 {
                store.set_revision(revision);
            }
            Ok(WriteResult::Delete { revision: store.revision(), deleted })
        }
        WriteCommand::DeleteRange { start, end } => {
            let limit = MAX_DELETE_RANGE_KEYS as usize + 1;
            let keys = store.range_keys(start, end, limit)?;
            if keys.len() as u64 > MAX_DELETE_RANGE_KEYS {
                return Err(AspenError::RangeTooLarge { max: MAX_DELETE_RANGE_KEYS });
            }
            let revision = store.revision() + 1;
            for key in &keys {
                delete(store, key, revision, events)?;
            }
            if !keys.is_empty() {
                store.set_revision(revision);
            }
            Ok(WriteResult::Delete { revision: store.revision(), deleted: keys.len() as u64 })
        }
        WriteCommand::Txn(txn) => apply_txn(store, txn, events),
        WriteCommand::LeaseGrant { ttl_ms } => {
            if store.lease_count()? >= MAX_LEASES {
                return Err(AspenError::TooManyLeases { max: MAX_LEASES });
            }
            let id = LeaseId(store.next_lease_id());
            store.set_next_lease_id(id.0 + 1);
            let lease = LeaseRecord { id, ttl_ms: *ttl_ms, expires_at_ms: now_ms.saturating_add(*ttl_ms) };
            store.put_lease(&lease)?;
            Ok(WriteResult::Lease { id, ttl_ms: lease.ttl_ms, expires_at_ms: lease.expires_at_ms })
        }
        WriteCommand::LeaseKeepAlive { id } => {
            let mut lease = store.lease(*id)?.ok_or(AspenError::LeaseNotFound { id: id.0 })?;
            lease.expires_at_ms = lease.expires_at_ms.max(now_ms.saturating_add(lease.ttl_ms));
            store.put_lease(&lease)?;
            Ok(WriteResult::Lease { id: *id, ttl_ms: lease.ttl_ms, expires_at_ms: lease.expires_at_ms })
        }
        WriteCommand::LeaseRevoke { id } => {
            if store.lease(*id)?.is_none() {
                return Err(AspenError::LeaseNotFound { id: id.0 });
            }
            let revision = store.revision() + 1;
            let deleted_keys = drop_lease(store, *id, revision, events)?;
            if deleted_keys > 0 {
                store.set_revision(revision);
            }
            Ok(WriteResult::LeaseRevoked { revision: store.revision(), deleted_keys })
        }
        WriteCommand::LeaseExpire { ids } => {
            let revision = store.revision() + 1;
            let mut expired = 0;
            let mut deleted = 0;
            for id in ids {
                // Re-checked here: a keepalive may have been applied after the leader
                // decided to expire this lease.
                match store.lease(*id)? {
                    Some(lease) if lease.expires_at_ms <= now_ms => {
                        deleted += drop_lease(store, *id, revision, events)?;
                        expired += 1;
                    }
                    _ => {}
                }
            }
            if deleted > 0 {
                store.set_revision(revision);
            }
            Ok(WriteResult::LeasesExpired { revision: store.revision(), expired })
        }
        WriteCommand::SetClusterRoot { public_key } => match store.cluster_root()? {
            None => {
                store.set_cluster_root(*public_key)?;
                Ok(WriteResult::Done)
            }
            Some(existing) if existing == *public_key => Ok(WriteResult::Done),
            Some(_) => Err(AspenError::AlreadyInitialized),
        },
        WriteCommand::RevokeToken { id } => {
            store.revoke(*id)?;
            Ok(WriteResult::Done)
        }
        WriteCommand::LeaseRefreshAll => {
            for mut lease in store.leases()? {
                let floor = now_ms.saturating_add(lease.ttl_ms);
                if lease.expires_at_ms < floor {
                    lease.expires_at_ms = floor;
                    store.put_lease(&lease)?;
                }
            }
            Ok(WriteResult::Done)
        }
        WriteCommand::Queue(command) => crate::queue::apply(store, now_ms, command, events).map(WriteResult::Queue),
        WriteCommand::RateLimit(take) => {
            crate::ratelimit::apply(store, now_ms, take, events).map(WriteResult::RateLimit)
        }
    }
}

fn check_lease<S: KvStore>(store: &S, lease: Option<LeaseId>) -> Result<(), AspenError> {
    match lease {
        Some(id) if store.lease(id)?.is_none() => Err(AspenError::LeaseNotFound { id: id.0 }),
        _ => Ok(()),
    }
}

/// Deletes every key attached to the lease and the lease itself.
fn drop_lease<S: KvStore>(
    store: &mut S,
    id: LeaseId,
    revision: u64,
    events: &mut Vec<Event>,
) -> Result<u64, AspenError> {
    let keys = store.attached_keys(id)?;
    let mut deleted = 0;
    for key in &keys {
        if delete(store, key, revision, events)? {
            deleted += 1;
        }
    }
    store.remove_lease(id)?;
    Ok(deleted)
}

/// Evaluates one compare. A missing key reads as version/create/mod revision 0, lease 0.
pub fn compare_holds(entry: Option<&KvEntry>, compare: &Compare) -> bool {
    use std::cmp::Ordering;
    let ordering = match (&compare.target, entry) {
        (CompareTarget::Value(_), None) => return false,
        (CompareTarget::Value(v), Some(e)) => e.value.as_slice().cmp(v.as_slice()),
        (CompareTarget::Version(v), e) => e.map_or(0, |e| e.version).cmp(v),
        (CompareTarget::CreateRevision(v), e) => e.map_or(0, |e| e.create_revision).cmp(v),
        (CompareTarget::ModRevision(v), e) => e.map_or(0, |e| e.mod_revision).cmp(v),
        (CompareTarget::Lease(v), e) => e.and_then(|e| e.lease).map_or(0, |l| l.0).cmp(v),
    };
    match compare.op {
        CompareOp::Equal => ordering == Ordering::Equal,
        CompareOp::NotEqual => ordering != Ordering::Equal,
        CompareOp::Less => ordering == Ordering::Less,
        CompareOp::Greater => ordering == Ordering::Greater,
    }
}

fn apply_txn<S: KvStore>(store: &mut S, txn: &Txn, events: &mut Vec<Event>) -> Result<WriteResult, AspenError> {
    let mut succeeded = true;
    for compare in &txn.compare {
        let entry = store.get(&compare.key)?;
        if !compare_holds(entry.as_ref(), compare) {
            succeeded = false;
            break;
        }
    }
    let ops = if succeeded { &txn.success } else { &txn.failure };
    // Check every lease before changing anything, so a txn applies whole or not at all.
    for op in ops {
        if let TxnOp::Put { lease, .. } = op {
            check_lease(store, *lease)?;
        }
    }
    let revision = store.revision() + 1;
    let mut changed = false;
    let mut results = Vec::with_capacity(ops.len());
    for op in ops {
        results.push(match op {
            TxnOp::Put { key, value, lease } => {
                changed = true;
                TxnOpResult::Put { prev: put(store, key, value, *lease, revision, events)? }
            }
            TxnOp::Delete { key } => {
                let deleted = delete(store, key, revision, events)?;
                changed |= deleted;
                TxnOpResult::Delete { deleted: u64::from(deleted) }
            }
            TxnOp::Get { key } => TxnOpResult::Get { kv: store.get(key)?.map(|e| e.into_key_value(key.clone())) },
        });
    }
    if changed {
        store.set_revision(revision);
    }
    Ok(WriteResult::Txn { revision: store.revision(), succeeded, results })
}

/// Leases whose expiry the leader's clock has passed, oldest first, at most `max`.
pub fn expired_leases(leases: &[LeaseRecord], now_ms: u64, max: usize) -> Vec<LeaseId> {
    let mut due: Vec<&LeaseRecord> = leases.iter().filter(|l| l.expires_at_ms <= now_ms).collect();
    due.sort_by_key(|l| (l.expires_at_ms, l.id));
    due.into_iter().take(max).map(|l| l.id).collect()
}
