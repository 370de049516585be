//! [`ClientConfig`]: the time bounds of every client call.

use std::time::Duration;

/// How long the client waits, and for what.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientConfig {
    /// Longest wait for one node to accept a connection.
    pub connect_timeout: Duration,
    /// Longest a request may take in all, retries and failovers included.
    pub request_timeout: Duration,
    /// Longest one attempt of a request that is safe to repeat (a read) waits for its
    /// answer before the client tries the next node. Writes wait for the whole
    /// `request_timeout`, since resending them is not allowed.
    pub read_attempt_timeout: Duration,
    /// How long a watch keeps trying to resume after its stream broke before it gives up
    /// and reports the last failure.
    pub watch_retry_for: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            read_attempt_timeout: Duration::from_secs(3),
            watch_retry_for: Duration::from_secs(60),
        }
    }
}

impl ClientConfig {
    /// The default configuration with `request_timeout` set.
    pub fn with_request_timeout(timeout: Duration) -> Self {
        ClientConfig { request_timeout: timeout, ..ClientConfig::default() }
    }
}
