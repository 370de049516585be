//! Retrying writes that are safe to repeat.
//!
//! The client retries a write only when it certainly had no effect; a write whose answer
//! was lost (a leader change) fails with `outcome_unknown`. The primitives here make every
//! write idempotent (put-if-absent on a key named by its owner, a delete, a transaction
//! whose failure branch reads back what an earlier attempt did), so they can repeat it.

use std::time::Duration;

use aspen_kv::{AspenError, KvError};

use crate::CoordError;

/// Attempts of one idempotent write before its error is returned.
const WRITE_ATTEMPTS: usize = 8;

/// Runs `op` until it succeeds, fails in a way retrying cannot fix, or has been tried
/// [`WRITE_ATTEMPTS`] times. `op` must be idempotent; `what` names it for the logs.
pub(crate) async fn retry<T, F, Fut>(what: &str, mut op: F) -> Result<T, CoordError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, KvError>>,
{
    let mut attempt = 0;
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) if e.is_transient() && attempt + 1 < WRITE_ATTEMPTS => {
                attempt += 1;
                tracing::debug!(what, attempt, "retrying an idempotent write: {e}");
                tokio::time::sleep(Duration::from_millis(50 << attempt.min(4))).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Whether `e` says the lease a write named is gone: the session has ended.
pub(crate) fn is_lease_gone(e: &CoordError) -> bool {
    matches!(e, CoordError::Kv(KvError::Aspen(AspenError::LeaseNotFound { .. })))
}
