//! [`KvWatch`]: a stream of events under a prefix.

use std::pin::Pin;
use std::task::{Context, Poll};

use aspen_core::Event;
use futures::{Stream, StreamExt};

use crate::KvError;

/// Events of a watch, each once and in revision order; ends after yielding an error.
/// Dropping it cancels the watch.
pub struct KvWatch {
    inner: Pin<Box<dyn Stream<Item = Result<Event, KvError>> + Send>>,
}

impl std::fmt::Debug for KvWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvWatch").finish_non_exhaustive()
    }
}

impl KvWatch {
    /// Wraps any stream of events.
    pub fn new(stream: impl Stream<Item = Result<Event, KvError>> + Send + 'static) -> Self {
        KvWatch { inner: Box::pin(stream) }
    }

    /// A watch that fails at once with `error`.
    pub fn failed(error: KvError) -> Self {
        KvWatch::new(futures::stream::once(async move { Err(error) }))
    }

    /// The next event, or `None` once the watch has ended.
    pub async fn next(&mut self) -> Option<Result<Event, KvError>> {
        self.inner.next().await
    }
}

impl Stream for KvWatch {
    type Item = Result<Event, KvError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}
