//! The two coordination operations the state machine runs itself: work-queue commands and
//! token-bucket takes. `aspen-coord` wraps them in friendlier types.

use aspen_core::api::{ClientRequest, ClientResponse};
use aspen_core::command::WriteResult;
use aspen_core::queue::{QueueCommand, QueueResult};
use aspen_core::ratelimit::{RateLimitResult, RateLimitTake};

use crate::client::Client;
use crate::error::ClientError;

impl Client {
    /// Runs one work-queue command, atomically, through the log.
    pub async fn queue(&self, command: QueueCommand) -> Result<QueueResult, ClientError> {
        match self.request(ClientRequest::Queue(command)).await? {
            ClientResponse::Write(WriteResult::Queue(result)) => Ok(result),
            other => Err(ClientError::unexpected("queue", &other)),
        }
    }

    /// Takes tokens from a cluster-wide token bucket.
    pub async fn rate_limit(&self, take: RateLimitTake) -> Result<RateLimitResult, ClientError> {
        match self.request(ClientRequest::RateLimit(take)).await? {
            ClientResponse::Write(WriteResult::RateLimit(result)) => Ok(result),
            other => Err(ClientError::unexpected("rate_limit", &other)),
        }
    }
}
