//! A token bucket shared by every client of the cluster.
//!
//! Each take is one command the state machine applies with the leader's clock from the
//! log (see `aspen_core::ratelimit`): client clocks play no part, so clients on skewed
//! machines still share one rate. A refused take says how long until enough tokens are
//! there; [`RateLimiter::acquire`] sleeps exactly that long before asking again.

use std::time::Duration;

use aspen_core::ratelimit::{RateLimitResult, RateLimitTake, validate};
use aspen_kv::Kv as _;
use aspen_kv::SharedKv;
use tokio::time::Instant;

use crate::CoordError;

#[derive(Debug, Clone)]
pub struct RateLimiter {
    client: SharedKv,
    shape: RateLimitTake,
}

impl RateLimiter {
    /// Bucket `name` holding up to `capacity` tokens and gaining `refill` tokens every
    /// `per`. Every user of a name should use the same shape.
    pub fn new(
        kv: impl aspen_kv::IntoSharedKv,
        name: &str,
        capacity: u64,
        refill: u64,
        per: Duration,
    ) -> Result<Self, CoordError> {
        let shape =
            RateLimitTake { name: name.to_string(), capacity, refill, per_ms: per.as_millis() as u64, tokens: 1 };
        validate(&shape).map_err(|e| CoordError::Invalid(e.to_string()))?;
        Ok(RateLimiter { client: kv.into_shared_kv(), shape })
    }

    /// Takes `tokens` if the bucket holds them now.
    pub async fn try_acquire(&self, tokens: u64) -> Result<RateLimitResult, CoordError> {
        Ok(self.client.rate_limit(RateLimitTake { tokens, ..self.shape.clone() }).await?)
    }

    /// Takes `tokens`, waiting up to `timeout` for the bucket to refill.
    pub async fn acquire(&self, tokens: u64, timeout: Duration) -> Result<RateLimitResult, CoordError> {
        let deadline = Instant::now() + timeout;
        loop {
            let result = self.try_acquire(tokens).await?;
            if result.granted {
                return Ok(result);
            }
            let wake = Instant::now() + Duration::from_millis(result.retry_after_ms.max(1));
            if wake > deadline {
                return Err(CoordError::Timeout(timeout, format!("{tokens} tokens from bucket {}", self.shape.name)));
            }
            tokio::time::sleep_until(wake).await;
        }
    }
}
