//! Checks of requests against the limits, done at the node edge before anything is
//! proposed, and again by the apply step so a bad entry can never corrupt state.

use crate::command::{Compare, Txn, TxnOp, WriteCommand};
use crate::error::AspenError;
use crate::limits::*;

pub fn key(key: &[u8]) -> Result<(), AspenError> {
    if key.is_empty() {
        return Err(AspenError::EmptyKey);
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(AspenError::KeyTooLarge { len: key.len(), max: MAX_KEY_BYTES });
    }
    Ok(())
}

/// A range bound may be empty (meaning "unbounded") but never oversize.
pub fn range_bound(bound: &[u8]) -> Result<(), AspenError> {
    if bound.len() > MAX_KEY_BYTES {
        return Err(AspenError::KeyTooLarge { len: bound.len(), max: MAX_KEY_BYTES });
    }
    Ok(())
}

pub fn value(value: &[u8]) -> Result<(), AspenError> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(AspenError::ValueTooLarge { len: value.len(), max: MAX_VALUE_BYTES });
    }
    Ok(())
}

pub fn scan_limit(limit: u32) -> Result<u32, AspenError> {
    match limit {
        0 => Ok(DEFAULT_SCAN_LIMIT),
        l if l > MAX_SCAN_LIMIT => Err(AspenError::ScanLimitTooLarge { requested: l, max: MAX_SCAN_LIMIT }),
        l => Ok(l),
    }
}

pub fn lease_ttl(ttl_ms: u64) -> Result<(), AspenError> {
    if !(MIN_LEASE_TTL_MS..=MAX_LEASE_TTL_MS).contains(&ttl_ms) {
        return Err(AspenError::InvalidLeaseTtl { ttl_ms, min_ms: MIN_LEASE_TTL_MS, max_ms: MAX_LEASE_TTL_MS });
    }
    Ok(())
}

fn compare(c: &Compare) -> Result<(), AspenError> {
    key(&c.key)?;
    if let crate::command::CompareTarget::Value(v) = &c.target {
        value(v)?;
    }
    Ok(())
}

fn txn_ops(ops: &[TxnOp], what: &str) -> Result<(), AspenError> {
    if ops.len() > MAX_TXN_OPS {
        return Err(AspenError::TooManyTxnOps { what: what.to_string(), count: ops.len(), max: MAX_TXN_OPS });
    }
    let mut written: Vec<&[u8]> = Vec::new();
    for op in ops {
        match op {
            TxnOp::Put { key: k, value: v, .. } => {
                key(k)?;
                value(v)?;
                written.push(k);
            }
            TxnOp::Delete { key: k } => {
                key(k)?;
                written.push(k);
            }
            TxnOp::Get { key: k } => key(k)?,
        }
    }
    written.sort_unstable();
    if let Some(w) = written.windows(2).find(|w| w[0] == w[1]) {
        return Err(AspenError::invalid(format!(
            "transaction writes key {:?} more than once in one branch",
            String::from_utf8_lossy(w[0])
        )));
    }
    Ok(())
}

pub fn txn(t: &Txn) -> Result<(), AspenError> {
    if t.compare.len() > MAX_TXN_OPS {
        return Err(AspenError::TooManyTxnOps { what: "compares".into(), count: t.compare.len(), max: MAX_TXN_OPS });
    }
    t.compare.iter().try_for_each(compare)?;
    txn_ops(&t.success, "success ops")?;
    txn_ops(&t.failure, "failure ops")
}

pub fn command(c: &WriteCommand) -> Result<(), AspenError> {
    match c {
        WriteCommand::Put { key: k, value: v, .. } => {
            key(k)?;
            value(v)
        }
        WriteCommand::Delete { key: k } => key(k),
        WriteCommand::DeleteRange { start, end } => {
            range_bound(start)?;
            range_bound(end)
        }
        WriteCommand::Txn(t) => txn(t),
        WriteCommand::LeaseGrant { ttl_ms } => lease_ttl(*ttl_ms),
        WriteCommand::LeaseKeepAlive { .. }
        | WriteCommand::LeaseRevoke { .. }
        | WriteCommand::LeaseRefreshAll
        | WriteCommand::SetClusterRoot { .. }
        | WriteCommand::RevokeToken { .. } => Ok(()),
        WriteCommand::Queue(q) => crate::queue::validate(q),
        WriteCommand::RateLimit(take) => crate::ratelimit::validate(take),
        WriteCommand::LeaseExpire { ids } => {
            if ids.len() > MAX_EXPIRE_PER_ENTRY {
                return Err(AspenError::BatchTooLarge {
                    detail: format!("{} leases to expire in one entry", ids.len()),
                });
            }
            Ok(())
        }
    }
}

/// The bytes a command adds to a batch, for the batch size bound.
pub fn command_bytes(c: &WriteCommand) -> usize {
    let op_bytes = |op: &TxnOp| match op {
        TxnOp::Put { key, value, .. } => key.len() + value.len(),
        TxnOp::Delete { key } | TxnOp::Get { key } => key.len(),
    };
    match c {
        WriteCommand::Put { key, value, .. } => key.len() + value.len(),
        WriteCommand::Delete { key } => key.len(),
        WriteCommand::DeleteRange { start, end } => start.len() + end.len(),
        WriteCommand::Txn(t) => {
            t.compare.iter().map(|c| c.key.len() + 64).sum::<usize>()
                + t.success.iter().map(op_bytes).sum::<usize>()
                + t.failure.iter().map(op_bytes).sum::<usize>()
        }
        WriteCommand::Queue(q) => q.payload_bytes(),
        _ => 16,
    }
}
