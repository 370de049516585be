//! Token buckets shared by the whole cluster, applied inside the state machine.
//!
//! A bucket is one key, `_aspen/coord/ratelimit/<name>`, holding its level in
//! thousandths of a token and the leader time of its last refill. A take refills the
//! bucket for the time since then (leader clocks from the log, never a client's), then
//! grants the tokens if the level covers them. The bucket's shape comes with every take,
//! so all users of a name should agree on it; a changed shape applies from that take on.
//! A new bucket starts full.

use serde::{Deserialize, Serialize};

use crate::error::AspenError;
use crate::store::KvStore;
use crate::types::Event;

/// Where bucket keys live (inside the coordination prefix).
pub const RATELIMIT_PREFIX: &str = "_aspen/coord/ratelimit/";
/// Largest bucket capacity, in tokens.
pub const MAX_BUCKET_CAPACITY: u64 = 1_000_000_000_000;
/// Longest refill period (one day).
pub const MAX_REFILL_PERIOD_MS: u64 = 24 * 3600 * 1000;
const MILLI: u128 = 1000;

/// Takes `tokens` from bucket `name`, which holds up to `capacity` tokens and gains
/// `refill` tokens every `per_ms` milliseconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimitTake {
    pub name: String,
    pub capacity: u64,
    pub refill: u64,
    pub per_ms: u64,
    pub tokens: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimitResult {
    pub granted: bool,
    /// Whole tokens left after this take.
    pub available: u64,
    /// When refused: how long until the bucket holds enough, at the current refill rate.
    pub retry_after_ms: u64,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Bucket {
    level_milli: u128,
    last_ms: u64,
}

pub fn bucket_key(name: &str) -> Vec<u8> {
    format!("{RATELIMIT_PREFIX}{name}").into_bytes()
}

pub fn validate(take: &RateLimitTake) -> Result<(), AspenError> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if take.name.is_empty() || take.name.len() > 128 || !take.name.chars().all(ok_char) {
        return Err(AspenError::invalid(format!(
            "rate limiter name {:?} must be 1..=128 bytes of ASCII letters, digits, '.', '_' or '-'",
            take.name
        )));
    }
    if !(1..=MAX_BUCKET_CAPACITY).contains(&take.capacity) {
        return Err(AspenError::invalid(format!(
            "bucket capacity {} is outside [1, {MAX_BUCKET_CAPACITY}]",
            take.capacity
        )));
    }
    if take.refill == 0 || take.refill > MAX_BUCKET_CAPACITY {
        return Err(AspenError::invalid(format!(
            "refill of {} tokens is outside [1, {MAX_BUCKET_CAPACITY}]",
            take.refill
        )));
    }
    if !(1..=MAX_REFILL_PERIOD_MS).contains(&take.per_ms) {
        return Err(AspenError::invalid(format!(
            "refill period {} ms is outside [1, {MAX_REFILL_PERIOD_MS}] ms",
            take.per_ms
        )));
    }
    if take.tokens == 0 || take.tokens > take.capacity {
        return Err(AspenError::invalid(format!(
            "taking {} tokens from a bucket of capacity {}: must be 1..=capacity",
            take.tokens, take.capacity
        )));
    }
    Ok(())
}

pub(crate) fn apply<S: KvStore>(
    store: &mut S,
    now_ms: u64,
    take: &RateLimitTake,
    events: &mut Vec<Event>,
) -> Result<RateLimitResult, AspenError> {
    validate(take)?;
    let key = bucket_key(&take.name);
    let full = u128::from(take.capacity) * MILLI;
    let bucket = store.get(&key)?.and_then(|e| postcard::from_bytes::<Bucket>(&e.value).ok());
    let mut bucket = bucket.unwrap_or(Bucket { level_milli: full, last_ms: now_ms });
    // A new leader's clock may be behind the last one's: time never runs backwards here.
    let elapsed = u128::from(now_ms.saturating_sub(bucket.last_ms));
    let gained = elapsed * u128::from(take.refill) * MILLI / u128::from(take.per_ms);
    bucket.level_milli = (bucket.level_milli + gained).min(full);
    bucket.last_ms = bucket.last_ms.max(now_ms);
    let need = u128::from(take.tokens) * MILLI;
    let granted = bucket.level_milli >= need;
    let available = |level: u128| u64::try_from(level / MILLI).unwrap_or(u64::MAX);
    if !granted {
        // Nothing is written: refilling later from the old state gives the same level.
        let missing = need - bucket.level_milli;
        let per_ms_rate = u128::from(take.refill) * MILLI;
        let retry_after_ms = u64::try_from((missing * u128::from(take.per_ms)).div_ceil(per_ms_rate));
        return Ok(RateLimitResult {
            granted,
            available: available(bucket.level_milli),
            retry_after_ms: retry_after_ms.unwrap_or(u64::MAX),
        });
    }
    bucket.level_milli -= need;
    let revision = store.revision() + 1;
    let value = postcard::to_allocvec(&bucket).map_err(AspenError::internal)?;
    crate::store::put(store, &key, &value, None, revision, events)?;
    store.set_revision(revision);
    Ok(RateLimitResult { granted, available: available(bucket.level_milli), retry_after_ms: 0 })
}

#[cfg(test)]
mod golden {
    use super::Bucket;
    use crate::golden::{check_file, sample};

    /// The bucket record is private to the apply step, but it is stored in the KV.
    #[test]
    fn the_bucket_record_keeps_its_bytes() {
        let path = crate::golden::crate_dir(env!("CARGO_MANIFEST_DIR")).join("tests/golden/ratelimit_private.txt");
        let bucket = Bucket { level_milli: 99_500, last_ms: 1_700_000_000_000 };
        check_file(&path, &[sample("Bucket", &bucket)]);
    }
}
