//! Work queues: FIFO, at-least-once delivery with visibility timeouts, acks, nacks,
//! dead letters and dedup ids.
//!
//! Unlike the other primitives here, a queue is not a recipe of KV transactions: each
//! operation is one queue command that the state machine applies atomically (see
//! `aspen_core::queue` for the key layout and the rules). A dequeue is one Raft write that
//! moves the head item from ready to in flight, so no two workers can take the same item,
//! and its cost does not depend on how deep the queue is.
//!
//! Waiting for an item watches the queue's ready index; when items are only in flight, the
//! leader's answer says how long until the first becomes visible again, and the waiter
//! wakes then too.

use std::time::Duration;

use aspen_core::queue::{
    Enqueued, NewItem, QueueCommand, QueueConfig, QueueItem, QueueMeta, QueueResult, Receipt, queue_prefix,
    validate_name,
};
use aspen_kv::{EventKind, ReadConsistency, SharedKv};
use aspen_kv::{Kv as _, KvExt as _};
use tokio::time::Instant;

use crate::CoordError;

/// Longest a waiting dequeue sleeps without looking again: a safety net for in-flight items
/// delivered with a shorter visibility timeout after it last looked.
const MAX_IDLE_WAIT: Duration = Duration::from_secs(5);

/// One delivered item. Ack it with its receipt before the visibility timeout ends, or it
/// is delivered again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub receipt: Receipt,
    pub payload: Vec<u8>,
    /// The leader's clock at enqueue, in ms since the Unix epoch.
    pub enqueued_ms: u64,
    pub dedup_id: Option<String>,
}

/// A queue's counts and configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueStats {
    pub ready: u64,
    /// Delivered and not yet acked (including items whose visibility timeout has passed
    /// and that the next dequeue will deliver again).
    pub in_flight: u64,
    pub acked: u64,
    pub dead_lettered: u64,
    pub config: QueueConfig,
}

/// One stored item, as [`Queue::list`] shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemInfo {
    pub seq: u64,
    pub item: QueueItem,
}

#[derive(Debug, Clone)]
pub struct Queue {
    client: SharedKv,
    name: String,
}

fn unexpected(what: &str, result: QueueResult) -> CoordError {
    CoordError::Corrupt(format!("{what} answered {result:?}"))
}

impl Queue {
    /// A handle on queue `name` (1..=128 ASCII letters, digits, `.`, `_`, `-`). The queue
    /// is created with the default configuration by its first enqueue or configure.
    pub fn new(kv: impl aspen_kv::IntoSharedKv, name: &str) -> Result<Queue, CoordError> {
        validate_name(name).map_err(|e| CoordError::Invalid(e.to_string()))?;
        Ok(Queue { client: kv.into_shared_kv(), name: name.to_string() })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    async fn run(&self, command: QueueCommand) -> Result<QueueResult, CoordError> {
        Ok(self.client.queue(command).await?)
    }

    /// Creates the queue or changes its configuration.
    pub async fn configure(&self, config: QueueConfig) -> Result<(), CoordError> {
        self.run(QueueCommand::Configure { queue: self.name.clone(), config }).await?;
        Ok(())
    }

    /// Adds one item at the end; returns its sequence number.
    pub async fn enqueue(&self, payload: impl Into<Vec<u8>>) -> Result<u64, CoordError> {
        let item = NewItem { payload: payload.into(), dedup_id: None };
        Ok(self.enqueue_batch(vec![item]).await?[0].seq)
    }

    /// Adds one item unless an item with this dedup id was enqueued within the queue's dedup
    /// window. Safe to retry: the client library resends it by itself across failovers.
    pub async fn enqueue_unique(&self, payload: impl Into<Vec<u8>>, dedup_id: &str) -> Result<Enqueued, CoordError> {
        let item = NewItem { payload: payload.into(), dedup_id: Some(dedup_id.to_string()) };
        Ok(self.enqueue_batch(vec![item]).await?[0])
    }

    /// Adds up to `MAX_QUEUE_BATCH` items in one write, in order.
    pub async fn enqueue_batch(&self, items: Vec<NewItem>) -> Result<Vec<Enqueued>, CoordError> {
        match self.run(QueueCommand::Enqueue { queue: self.name.clone(), items }).await? {
            QueueResult::Enqueued { items } => Ok(items),
            other => Err(unexpected("enqueue", other)),
        }
    }

    /// Takes up to `max` items without waiting. `visibility`: how long they stay hidden
    /// from other dequeues (the queue's default when `None`).
    pub async fn try_dequeue(&self, max: u32, visibility: Option<Duration>) -> Result<Vec<Message>, CoordError> {
        Ok(self.dequeue_once(max, visibility).await?.0)
    }

    async fn dequeue_once(
        &self,
        max: u32,
        visibility: Option<Duration>,
    ) -> Result<(Vec<Message>, Option<Duration>), CoordError> {
        let visibility_ms = visibility.map(|v| (v.as_millis() as u64).max(1));
        match self.run(QueueCommand::Dequeue { queue: self.name.clone(), max, visibility_ms }).await? {
            QueueResult::Delivered { items, next_visible_in_ms, .. } => {
                let messages = items
                    .into_iter()
                    .map(|d| Message {
                        receipt: d.receipt,
                        payload: d.payload,
                        enqueued_ms: d.enqueued_ms,
                        dedup_id: d.dedup_id,
                    })
                    .collect();
                Ok((messages, next_visible_in_ms.map(Duration::from_millis)))
            }
            other => Err(unexpected("dequeue", other)),
        }
    }

    /// Takes up to `max` items, waiting up to `timeout` for one to be available. Returns
    /// an empty list when none came in time.
    pub async fn dequeue(
        &self,
        max: u32,
        visibility: Option<Duration>,
        timeout: Duration,
    ) -> Result<Vec<Message>, CoordError> {
        let deadline = Instant::now() + timeout;
        let (messages, _) = self.dequeue_once(max, visibility).await?;
        if !messages.is_empty() {
            return Ok(messages);
        }
        let ready_prefix = [queue_prefix(&self.name), b"ready/".to_vec()].concat();
        loop {
            // Read a revision first and watch from just after it: an enqueue after this
            // read is either seen by the dequeue below or replayed by the watch.
            let revision =
                self.client.get_with_revision(&self.meta_key(), ReadConsistency::Linearizable).await?.revision;
            let (messages, next_visible) = self.dequeue_once(max, visibility).await?;
            let now = Instant::now();
            if !messages.is_empty() || now >= deadline {
                return Ok(messages);
            }
            let nap = next_visible.unwrap_or(MAX_IDLE_WAIT).min(MAX_IDLE_WAIT).min(deadline - now);
            let mut watch = self.client.watch(&ready_prefix, revision + 1);
            let enqueued = async {
                while let Some(event) = watch.next().await {
                    match event {
                        Ok(e) if e.kind == EventKind::Put => return,
                        Ok(_) => {}
                        Err(_) => return,
                    }
                }
            };
            tokio::select! {
                _ = enqueued => {}
                _ = tokio::time::sleep(nap) => {}
            }
        }
    }

    /// Acks one delivered item: it is gone for good. Fails with
    /// [`CoordError::StaleReceipt`] when this receipt is no longer the item's latest
    /// delivery (it was acked already, or redelivered after its visibility timeout).
    pub async fn ack(&self, receipt: Receipt) -> Result<(), CoordError> {
        match self.ack_many(&[receipt]).await?.first() {
            Some(true) => Ok(()),
            _ => Err(CoordError::StaleReceipt { queue: self.name.clone(), receipt: receipt.to_string() }),
        }
    }

    /// Acks several items in one write; one flag per receipt (false: stale).
    pub async fn ack_many(&self, receipts: &[Receipt]) -> Result<Vec<bool>, CoordError> {
        match self.run(QueueCommand::Ack { queue: self.name.clone(), receipts: receipts.to_vec() }).await? {
            QueueResult::Acked { acked } => Ok(acked),
            other => Err(unexpected("ack", other)),
        }
    }

    /// Gives an item back: deliverable again after `delay` (at once, ahead of newer items,
    /// when zero). Its delivery count stays, so dead-lettering still applies.
    pub async fn nack(&self, receipt: Receipt, delay: Duration) -> Result<(), CoordError> {
        let delay_ms = delay.as_millis() as u64;
        self.reschedule(QueueCommand::Nack { queue: self.name.clone(), receipt, delay_ms }).await
    }

    /// Keeps a delivered item hidden for `visibility` from now (a worker that needs longer).
    pub async fn extend(&self, receipt: Receipt, visibility: Duration) -> Result<(), CoordError> {
        let visibility_ms = (visibility.as_millis() as u64).max(1);
        self.reschedule(QueueCommand::Extend { queue: self.name.clone(), receipt, visibility_ms }).await
    }

    async fn reschedule(&self, command: QueueCommand) -> Result<(), CoordError> {
        match self.client.queue(command).await {
            Ok(_) => Ok(()),
            Err(aspen_kv::KvError::Aspen(aspen_kv::AspenError::StaleReceipt { queue, receipt })) => {
                Err(CoordError::StaleReceipt { queue, receipt })
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Moves up to `max` ready items of queue `from` (usually this queue's dead-letter
    /// queue) to the end of this one, delivery counts reset. Returns how many moved.
    pub async fn redrive_from(&self, from: &str, max: u32) -> Result<u64, CoordError> {
        let command = QueueCommand::Redrive { from: from.to_string(), to: self.name.clone(), max };
        match self.run(command).await? {
            QueueResult::Redriven { moved } => Ok(moved),
            other => Err(unexpected("redrive", other)),
        }
    }

    fn meta_key(&self) -> Vec<u8> {
        [queue_prefix(&self.name), b"meta".to_vec()].concat()
    }

    /// Counts and configuration, read linearizably; `None` if the queue was never created.
    pub async fn stats(&self) -> Result<Option<QueueStats>, CoordError> {
        let Some(kv) = self.client.get(self.meta_key(), ReadConsistency::Linearizable).await? else {
            return Ok(None);
        };
        let meta: QueueMeta = postcard::from_bytes(&kv.value)
            .map_err(|e| CoordError::Corrupt(format!("queue {} meta does not decode: {e}", self.name)))?;
        Ok(Some(QueueStats {
            ready: meta.ready,
            in_flight: meta.in_flight,
            acked: meta.acked,
            dead_lettered: meta.dead_lettered,
            config: meta.config,
        }))
    }

    /// Up to `limit` stored items (ready and in flight) in sequence order.
    pub async fn list(&self, limit: u32) -> Result<Vec<ItemInfo>, CoordError> {
        let prefix = [queue_prefix(&self.name), b"item/".to_vec()].concat();
        let page = self.client.scan_prefix(&prefix, limit, ReadConsistency::Linearizable).await?;
        page.kvs
            .into_iter()
            .map(|kv| {
                let seq = std::str::from_utf8(&kv.key[prefix.len()..])
                    .ok()
                    .and_then(|s| u64::from_str_radix(s, 16).ok())
                    .ok_or_else(|| CoordError::Corrupt(format!("queue item key {:?}", kv.key)))?;
                let item = postcard::from_bytes(&kv.value)
                    .map_err(|e| CoordError::Corrupt(format!("queue item {seq} does not decode: {e}")))?;
                Ok(ItemInfo { seq, item })
            })
            .collect()
    }
}
