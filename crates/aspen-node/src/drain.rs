//! A stopping node's requests: those in flight finish before the node closes its
//! connections, and a client request that arrives after the stop began is told the node is
//! stopping (`Unavailable`: it had no effect), so the client sends it to another node. A
//! rolling upgrade then cuts no acknowledged or in-flight request short.

use std::future::Future;
use std::time::Duration;

use aspen_core::error::AspenError;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tokio_util::task::task_tracker::TaskTrackerToken;

#[derive(Clone, Default)]
pub struct Drain {
    stopping: CancellationToken,
    in_flight: TaskTracker,
}

impl Drain {
    /// Serves one stream, counted until it ends.
    pub fn spawn<F>(&self, serve: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.in_flight.spawn(serve);
    }

    /// Counts the caller as one more stream in flight until the token drops.
    pub fn token(&self) -> TaskTrackerToken {
        self.in_flight.token()
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.is_cancelled()
    }

    /// What a request arriving after the stop began is answered.
    pub fn refusal() -> AspenError {
        AspenError::Unavailable { reason: "this node is stopping; another node serves the request".into() }
    }

    /// Begins the stop and waits, at most `limit`, for the streams in flight to end; false
    /// when some were still running.
    pub async fn stop(&self, limit: Duration) -> bool {
        self.stopping.cancel();
        self.in_flight.close();
        tokio::time::timeout(limit, self.in_flight.wait()).await.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stop_waits_for_streams_in_flight_and_no_longer_than_the_limit() {
        let drain = Drain::default();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        drain.spawn(async move {
            let _ = rx.await;
        });
        assert!(!drain.is_stopping());
        assert!(!drain.stop(Duration::from_millis(50)).await, "one stream is still in flight");
        assert!(drain.is_stopping());
        tx.send(()).unwrap();
        assert!(drain.stop(Duration::from_secs(30)).await, "the stream ended");
        let held = drain.token();
        assert!(!drain.stop(Duration::from_millis(50)).await, "a token counts as a stream");
        drop(held);
        assert!(drain.stop(Duration::from_secs(30)).await);
    }
}
