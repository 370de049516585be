//! Work queues, applied inside the state machine.
//!
//! A queue is a set of ordinary keys under `_aspen/coord/queue/<name>/`, so snapshots,
//! scans, watches and capabilities treat it like any other data. What makes it a queue is
//! that each operation is one [`QueueCommand`] applied at one revision, with the leader's
//! clock from the log entry as "now":
//!
//! | key | holds |
//! | --- | --- |
//! | `meta` | [`QueueMeta`]: configuration, next sequence number, counts |
//! | `item/<seq>` | [`QueueItem`]: payload, deliveries so far, ready or in flight until a deadline |
//! | `ready/<seq>` | index of ready items, oldest first |
//! | `inflight/<deadline>/<seq>` | index of delivered items, earliest visibility deadline first |
//! | `dedup/<id>`, `dedup-expiry/<when>/<id>` | dedup ids remembered for the dedup window |
//!
//! Numbers in keys are 16 lowercase hex digits, so key order is numeric order.
//!
//! A dequeue seeks to the first key of one index (a B-tree lookup, whatever the depth) and
//! moves the item to the other index in the same write: no moment exists where an item is
//! both ready and in flight, or neither. Items whose visibility deadline has passed are
//! delivered again before newer ready items. Every delivery bumps the item's delivery
//! count, and the [`Receipt`] of a delivery names that count: once an item is delivered
//! again, the earlier receipt can no longer ack, nack or extend it, so an item is acked at
//! most once. An item already delivered `max_deliveries` times is moved to the dead-letter
//! queue instead of being delivered again.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::AspenError;
use crate::keys::prefix_end;
use crate::limits::{MAX_LEASE_TTL_MS, MAX_VALUE_BYTES};
use crate::store::KvStore;
use crate::types::Event;

/// Where queue keys live (inside the coordination prefix).
pub const QUEUE_PREFIX: &str = "_aspen/coord/queue/";
/// Longest queue name, in bytes.
pub const MAX_QUEUE_NAME_BYTES: usize = 128;
/// Longest dedup id, in bytes.
pub const MAX_DEDUP_ID_BYTES: usize = 256;
/// Largest payload: a value, less room for the item's own fields.
pub const MAX_PAYLOAD_BYTES: usize = MAX_VALUE_BYTES - 1024;
/// Most items one enqueue adds, one dequeue delivers, one ack acks or one redrive moves.
pub const MAX_QUEUE_BATCH: usize = 1_000;
/// Most items one dequeue moves to the dead-letter queue (or drops as unreadable); the
/// rest move on later dequeues.
pub const MAX_DEAD_LETTER_PER_DEQUEUE: u32 = 64;
/// Expired dedup records one enqueue forgets, so they never pile up.
const DEDUP_SWEEP: usize = 16;

/// How a queue behaves; set by [`QueueCommand::Configure`], defaults otherwise.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueConfig {
    /// How long a delivered item stays invisible when the dequeue names no timeout.
    pub visibility_ms: u64,
    /// Deliveries after which an item is dead-lettered instead of delivered again; 0: never.
    pub max_deliveries: u32,
    /// The dead-letter queue; `None` means `<name>.dlq`.
    pub dead_letter: Option<String>,
    /// How long an enqueue's dedup id is remembered.
    pub dedup_window_ms: u64,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig { visibility_ms: 30_000, max_deliveries: 0, dead_letter: None, dedup_window_ms: 300_000 }
    }
}

impl QueueConfig {
    /// The dead-letter queue of queue `name`.
    pub fn dead_letter_queue(&self, name: &str) -> String {
        self.dead_letter.clone().unwrap_or_else(|| format!("{name}.dlq"))
    }
}

/// The `meta` key of a queue.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct QueueMeta {
    pub config: QueueConfig,
    /// The sequence number the next enqueued item gets.
    pub next_seq: u64,
    pub ready: u64,
    pub in_flight: u64,
    /// Items acked, ever.
    pub acked: u64,
    /// Items moved to the dead-letter queue, ever.
    pub dead_lettered: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ItemState {
    Ready,
    /// Delivered; invisible to dequeues until the leader's clock reaches the deadline.
    InFlight {
        deadline_ms: u64,
    },
}

/// The `item/<seq>` key of a queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueItem {
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
    /// Times this item has been delivered.
    pub deliveries: u32,
    /// Leader time of the enqueue, in ms since the Unix epoch.
    pub enqueued_ms: u64,
    pub dedup_id: Option<String>,
    pub state: ItemState,
}

/// Names one delivery of one item: only the latest delivery's receipt is honoured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Receipt {
    pub seq: u64,
    pub delivery: u32,
}

impl std::fmt::Display for Receipt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.seq, self.delivery)
    }
}

impl std::str::FromStr for Receipt {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("receipt {s:?} is not of the form SEQ.DELIVERY (e.g. 42.1), as dequeue prints it");
        let (seq, delivery) = s.split_once('.').ok_or_else(bad)?;
        Ok(Receipt { seq: seq.parse().map_err(|_| bad())?, delivery: delivery.parse().map_err(|_| bad())? })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewItem {
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
    /// An enqueue whose dedup id was seen within the dedup window adds nothing and
    /// returns the earlier item's sequence number.
    pub dedup_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum QueueCommand {
    /// Creates the queue, or changes its configuration.
    Configure {
        queue: String,
        config: QueueConfig,
    },
    Enqueue {
        queue: String,
        items: Vec<NewItem>,
    },
    /// Delivers up to `max` items, each invisible to other dequeues for `visibility_ms`
    /// (the queue's default when `None`).
    Dequeue {
        queue: String,
        max: u32,
        visibility_ms: Option<u64>,
    },
    Ack {
        queue: String,
        receipts: Vec<Receipt>,
    },
    /// Gives a delivered item back: visible again after `delay_ms` (at once when 0, ahead of
    /// newer items). Its delivery count stays.
    Nack {
        queue: String,
        receipt: Receipt,
        delay_ms: u64,
    },
    /// Keeps a delivered item invisible for `visibility_ms` from now.
    Extend {
        queue: String,
        receipt: Receipt,
        visibility_ms: u64,
    },
    /// Moves up to `max` ready items from `from` (usually a dead-letter queue) to the end
    /// of `to`, with their delivery counts reset.
    Redrive {
        from: String,
        to: String,
        max: u32,
    },
}

impl QueueCommand {
    /// Every queue this command may write to, for the capability check. `Configure` names
    /// the dead-letter queue too: later dequeues move items there on its authority.
    pub fn queues(&self) -> Vec<String> {
        match self {
            QueueCommand::Configure { queue, config } => vec![queue.clone(), config.dead_letter_queue(queue)],
            QueueCommand::Enqueue { queue, .. }
            | QueueCommand::Dequeue { queue, .. }
            | QueueCommand::Ack { queue, .. }
            | QueueCommand::Nack { queue, .. }
            | QueueCommand::Extend { queue, .. } => vec![queue.clone()],
            QueueCommand::Redrive { from, to, .. } => vec![from.clone(), to.clone()],
        }
    }

    /// Payload bytes, for the batch size bound.
    pub fn payload_bytes(&self) -> usize {
        match self {
            QueueCommand::Enqueue { items, .. } => items.iter().map(|i| i.payload.len() + 32).sum(),
            _ => 64,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    pub receipt: Receipt,
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
    pub enqueued_ms: u64,
    pub dedup_id: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enqueued {
    pub seq: u64,
    /// The dedup id was seen within the window: nothing was added, `seq` is the earlier item.
    pub duplicate: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum QueueResult {
    Configured,
    Enqueued {
        items: Vec<Enqueued>,
    },
    Delivered {
        items: Vec<Delivery>,
        /// Items this dequeue moved to the dead-letter queue.
        dead_lettered: u32,
        /// When nothing was delivered: how long until the earliest in-flight item becomes
        /// visible again, if any is in flight.
        next_visible_in_ms: Option<u64>,
    },
    /// One flag per receipt: acked, or stale (the item was acked already, or delivered again).
    Acked {
        acked: Vec<bool>,
    },
    /// A nack or extend: the item is invisible for this long from now.
    Rescheduled {
        visible_in_ms: u64,
    },
    Redriven {
        moved: u64,
    },
}

/// The key prefix of queue `name`.
pub fn queue_prefix(name: &str) -> Vec<u8> {
    format!("{QUEUE_PREFIX}{name}/").into_bytes()
}

fn hex(n: u64) -> String {
    format!("{n:016x}")
}

struct Keys {
    prefix: String,
}

impl Keys {
    fn new(queue: &str) -> Self {
        Keys { prefix: format!("{QUEUE_PREFIX}{queue}/") }
    }
    fn meta(&self) -> Vec<u8> {
        format!("{}meta", self.prefix).into_bytes()
    }
    fn item(&self, seq: u64) -> Vec<u8> {
        format!("{}item/{}", self.prefix, hex(seq)).into_bytes()
    }
    fn ready(&self, seq: u64) -> Vec<u8> {
        format!("{}ready/{}", self.prefix, hex(seq)).into_bytes()
    }
    fn ready_all(&self) -> Vec<u8> {
        format!("{}ready/", self.prefix).into_bytes()
    }
    fn inflight(&self, deadline_ms: u64, seq: u64) -> Vec<u8> {
        format!("{}inflight/{}/{}", self.prefix, hex(deadline_ms), hex(seq)).into_bytes()
    }
    fn inflight_all(&self) -> Vec<u8> {
        format!("{}inflight/", self.prefix).into_bytes()
    }
    /// The first in-flight key whose deadline is after `now_ms`.
    fn inflight_after(&self, now_ms: u64) -> Vec<u8> {
        format!("{}inflight/{}", self.prefix, hex(now_ms.saturating_add(1))).into_bytes()
    }
    fn dedup(&self, id: &str) -> Vec<u8> {
        format!("{}dedup/{id}", self.prefix).into_bytes()
    }
    fn dedup_expiry(&self, expires_ms: u64, id: &str) -> Vec<u8> {
        format!("{}dedup-expiry/{}/{id}", self.prefix, hex(expires_ms)).into_bytes()
    }
    fn dedup_expiry_all(&self) -> Vec<u8> {
        format!("{}dedup-expiry/", self.prefix).into_bytes()
    }
    fn dedup_expiry_until(&self, now_ms: u64) -> Vec<u8> {
        format!("{}dedup-expiry/{}", self.prefix, hex(now_ms.saturating_add(1))).into_bytes()
    }
}

/// The sequence number at the end of an index key (`.../<16 hex digits>`).
fn seq_of(key: &[u8]) -> Option<u64> {
    let tail = key.get(key.len().checked_sub(16)?..)?;
    u64::from_str_radix(std::str::from_utf8(tail).ok()?, 16).ok()
}

/// The deadline in an in-flight index key (`.../inflight/<deadline>/<seq>`).
fn deadline_of(key: &[u8]) -> Option<u64> {
    let field = key.get(key.len().checked_sub(33)?..key.len() - 17)?;
    u64::from_str_radix(std::str::from_utf8(field).ok()?, 16).ok()
}

#[derive(Serialize, Deserialize)]
struct DedupRecord {
    seq: u64,
    expires_ms: u64,
}

/// Checks a command against the limits; the apply step runs it again.
pub fn validate(command: &QueueCommand) -> Result<(), AspenError> {
    for queue in command.queues() {
        validate_name(&queue)?;
    }
    let batch = |what: &str, n: usize| {
        if n == 0 || n > MAX_QUEUE_BATCH {
            return Err(AspenError::invalid(format!(
                "{what} must be 1..={MAX_QUEUE_BATCH} (MAX_QUEUE_BATCH), got {n}"
            )));
        }
        Ok(())
    };
    match command {
        QueueCommand::Configure { queue, config } => {
            visibility(config.visibility_ms)?;
            if config.dead_letter_queue(queue) == *queue {
                return Err(AspenError::invalid(format!("queue {queue:?} cannot be its own dead-letter queue")));
            }
            if config.dedup_window_ms > MAX_LEASE_TTL_MS {
                return Err(AspenError::invalid(format!(
                    "dedup window {} ms is over the limit of {MAX_LEASE_TTL_MS} ms",
                    config.dedup_window_ms
                )));
            }
            Ok(())
        }
        QueueCommand::Enqueue { items, .. } => {
            batch("items per enqueue", items.len())?;
            for item in items {
                if item.payload.len() > MAX_PAYLOAD_BYTES {
                    return Err(AspenError::ValueTooLarge { len: item.payload.len(), max: MAX_PAYLOAD_BYTES });
                }
                if let Some(id) = &item.dedup_id
                    && (id.is_empty() || id.len() > MAX_DEDUP_ID_BYTES)
                {
                    return Err(AspenError::invalid(format!(
                        "dedup id must be 1..={MAX_DEDUP_ID_BYTES} bytes, got {}",
                        id.len()
                    )));
                }
            }
            Ok(())
        }
        QueueCommand::Dequeue { max, visibility_ms, .. } => {
            batch("items per dequeue", *max as usize)?;
            visibility_ms.map_or(Ok(()), visibility)
        }
        QueueCommand::Ack { receipts, .. } => batch("receipts per ack", receipts.len()),
        QueueCommand::Nack { delay_ms, .. } => {
            if *delay_ms > MAX_LEASE_TTL_MS {
                return Err(AspenError::invalid(format!("nack delay {delay_ms} ms is over {MAX_LEASE_TTL_MS} ms")));
            }
            Ok(())
        }
        QueueCommand::Extend { visibility_ms, .. } => visibility(*visibility_ms),
        QueueCommand::Redrive { from, to, max } => {
            if from == to {
                return Err(AspenError::invalid(format!("redrive from {from:?} to itself")));
            }
            batch("items per redrive", *max as usize)
        }
    }
}

/// A queue name: 1 to 128 bytes of ASCII letters, digits, `.`, `_` and `-`.
pub fn validate_name(name: &str) -> Result<(), AspenError> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if name.is_empty() || name.len() > MAX_QUEUE_NAME_BYTES || !name.chars().all(ok_char) {
        return Err(AspenError::invalid(format!(
            "queue name {name:?} must be 1..={MAX_QUEUE_NAME_BYTES} bytes of ASCII letters, digits, '.', '_' or '-'"
        )));
    }
    Ok(())
}

fn visibility(ms: u64) -> Result<(), AspenError> {
    if !(1..=MAX_LEASE_TTL_MS).contains(&ms) {
        return Err(AspenError::invalid(format!("visibility timeout {ms} ms is outside [1, {MAX_LEASE_TTL_MS}] ms")));
    }
    Ok(())
}

/// The writes of one queue command, all at one revision.
struct Tx<'a, S: KvStore> {
    store: &'a mut S,
    events: &'a mut Vec<Event>,
    revision: u64,
    changed: bool,
}

impl<'a, S: KvStore> Tx<'a, S> {
    fn new(store: &'a mut S, events: &'a mut Vec<Event>) -> Self {
        let revision = store.revision() + 1;
        Tx { store, events, revision, changed: false }
    }

    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), AspenError> {
        crate::store::put(self.store, key, value, None, self.revision, self.events)?;
        self.changed = true;
        Ok(())
    }

    fn put_record<T: Serialize>(&mut self, key: &[u8], record: &T) -> Result<(), AspenError> {
        let bytes = postcard::to_allocvec(record).map_err(AspenError::internal)?;
        self.put(key, &bytes)
    }

    fn delete(&mut self, key: &[u8]) -> Result<(), AspenError> {
        self.changed |= crate::store::delete(self.store, key, self.revision, self.events)?;
        Ok(())
    }

    /// A record, or `None` when the key is absent or does not decode (someone wrote
    /// over it with a plain put): such keys are treated as absent and replaced.
    fn record<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, AspenError> {
        Ok(self.store.get(key)?.and_then(|e| postcard::from_bytes(&e.value).ok()))
    }

    fn first_key(&self, start: &[u8], end: &[u8]) -> Result<Option<Vec<u8>>, AspenError> {
        Ok(self.store.range_keys(start, end, 1)?.into_iter().next())
    }

    fn finish(self) {
        if self.changed {
            self.store.set_revision(self.revision);
        }
    }
}

fn meta_or_default<S: KvStore>(tx: &Tx<'_, S>, keys: &Keys) -> Result<QueueMeta, AspenError> {
    Ok(tx.record(&keys.meta())?.unwrap_or(QueueMeta { next_seq: 1, ..QueueMeta::default() }))
}

/// Applies one queue command. Everything it checks is checked before anything changes.
pub(crate) fn apply<S: KvStore>(
    store: &mut S,
    now_ms: u64,
    command: &QueueCommand,
    events: &mut Vec<Event>,
) -> Result<QueueResult, AspenError> {
    validate(command)?;
    let mut tx = Tx::new(store, events);
    let result = match command {
        QueueCommand::Configure { queue, config } => {
            let keys = Keys::new(queue);
            let mut meta = meta_or_default(&tx, &keys)?;
            meta.config = config.clone();
            tx.put_record(&keys.meta(), &meta)?;
            Ok(QueueResult::Configured)
        }
        QueueCommand::Enqueue { queue, items } => enqueue(&mut tx, queue, items, now_ms),
        QueueCommand::Dequeue { queue, max, visibility_ms } => dequeue(&mut tx, queue, *max, *visibility_ms, now_ms),
        QueueCommand::Ack { queue, receipts } => ack(&mut tx, queue, receipts),
        QueueCommand::Nack { queue, receipt, delay_ms } => reschedule(&mut tx, queue, *receipt, *delay_ms, now_ms),
        QueueCommand::Extend { queue, receipt, visibility_ms } => {
            reschedule(&mut tx, queue, *receipt, (*visibility_ms).max(1), now_ms)
        }
        QueueCommand::Redrive { from, to, max } => redrive(&mut tx, from, to, *max, now_ms),
    };
    tx.finish();
    result
}

fn enqueue<S: KvStore>(
    tx: &mut Tx<'_, S>,
    queue: &str,
    items: &[NewItem],
    now_ms: u64,
) -> Result<QueueResult, AspenError> {
    let keys = Keys::new(queue);
    let mut meta = meta_or_default(tx, &keys)?;
    sweep_dedup(tx, &keys, now_ms)?;
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        if let Some(id) = &item.dedup_id {
            match tx.record::<DedupRecord>(&keys.dedup(id))? {
                Some(seen) if seen.expires_ms > now_ms => {
                    out.push(Enqueued { seq: seen.seq, duplicate: true });
                    continue;
                }
                Some(stale) => tx.delete(&keys.dedup_expiry(stale.expires_ms, id))?,
                None => {}
            }
        }
        let seq = append(tx, &keys, &mut meta, item.payload.clone(), item.dedup_id.clone(), now_ms)?;
        if let Some(id) = &item.dedup_id {
            let expires_ms = now_ms.saturating_add(meta.config.dedup_window_ms);
            tx.put_record(&keys.dedup(id), &DedupRecord { seq, expires_ms })?;
            tx.put(&keys.dedup_expiry(expires_ms, id), b"")?;
        }
        out.push(Enqueued { seq, duplicate: false });
    }
    tx.put_record(&keys.meta(), &meta)?;
    Ok(QueueResult::Enqueued { items: out })
}

/// Adds a ready item at the end of the queue; the caller writes `meta`.
fn append<S: KvStore>(
    tx: &mut Tx<'_, S>,
    keys: &Keys,
    meta: &mut QueueMeta,
    payload: Vec<u8>,
    dedup_id: Option<String>,
    now_ms: u64,
) -> Result<u64, AspenError> {
    let seq = meta.next_seq.max(1);
    meta.next_seq = seq + 1;
    meta.ready += 1;
    let item = QueueItem { payload, deliveries: 0, enqueued_ms: now_ms, dedup_id, state: ItemState::Ready };
    tx.put_record(&keys.item(seq), &item)?;
    tx.put(&keys.ready(seq), b"")?;
    Ok(seq)
}

/// Forgets a few dedup ids whose window has passed.
fn sweep_dedup<S: KvStore>(tx: &mut Tx<'_, S>, keys: &Keys, now_ms: u64) -> Result<(), AspenError> {
    let due = tx.store.range_keys(&keys.dedup_expiry_all(), &keys.dedup_expiry_until(now_ms), DEDUP_SWEEP)?;
    let skip = keys.dedup_expiry_all().len() + 17;
    for key in due {
        if let Some(id) = key.get(skip..).and_then(|b| std::str::from_utf8(b).ok()) {
            let id = id.to_string();
            tx.delete(&keys.dedup(&id))?;
        }
        tx.delete(&key)?;
    }
    Ok(())
}

/// The next item to deliver: an in-flight item whose deadline has passed (oldest deadline
/// first), else the oldest ready item. Returns the index key and the sequence number.
fn next_candidate<S: KvStore>(
    tx: &Tx<'_, S>,
    keys: &Keys,
    now_ms: u64,
) -> Result<Option<(Vec<u8>, u64, bool)>, AspenError> {
    let expired = tx.first_key(&keys.inflight_all(), &keys.inflight_after(now_ms))?;
    let (key, was_ready) = match expired {
        Some(key) => (key, false),
        None => {
            let start = keys.ready_all();
            let end = prefix_end(&start);
            match tx.first_key(&start, &end)? {
                Some(key) => (key, true),
                None => return Ok(None),
            }
        }
    };
    let seq = seq_of(&key).unwrap_or(0);
    Ok(Some((key, seq, was_ready)))
}

fn dequeue<S: KvStore>(
    tx: &mut Tx<'_, S>,
    queue: &str,
    max: u32,
    visibility_ms: Option<u64>,
    now_ms: u64,
) -> Result<QueueResult, AspenError> {
    let keys = Keys::new(queue);
    let Some(mut meta) = tx.record::<QueueMeta>(&keys.meta())? else {
        return Ok(QueueResult::Delivered { items: Vec::new(), dead_lettered: 0, next_visible_in_ms: None });
    };
    let deadline_ms = now_ms.saturating_add(visibility_ms.unwrap_or(meta.config.visibility_ms));
    let mut items = Vec::new();
    let mut dead_lettered = 0;
    let mut dropped = 0;
    while items.len() < max as usize && dead_lettered + dropped < MAX_DEAD_LETTER_PER_DEQUEUE {
        let Some((index_key, seq, was_ready)) = next_candidate(tx, &keys, now_ms)? else {
            break;
        };
        let count = if was_ready { &mut meta.ready } else { &mut meta.in_flight };
        *count = count.saturating_sub(1);
        tx.delete(&index_key)?;
        let Some(mut item) = tx.record::<QueueItem>(&keys.item(seq))? else {
            // An index entry without a readable item (overwritten by a plain put): drop it.
            tx.delete(&keys.item(seq))?;
            dropped += 1;
            continue;
        };
        if meta.config.max_deliveries > 0 && item.deliveries >= meta.config.max_deliveries {
            tx.delete(&keys.item(seq))?;
            meta.dead_lettered += 1;
            dead_lettered += 1;
            let dlq = meta.config.dead_letter_queue(queue);
            let dlq_keys = Keys::new(&dlq);
            let mut dlq_meta = meta_or_default(tx, &dlq_keys)?;
            append(tx, &dlq_keys, &mut dlq_meta, item.payload, item.dedup_id, item.enqueued_ms)?;
            tx.put_record(&dlq_keys.meta(), &dlq_meta)?;
            continue;
        }
        item.deliveries += 1;
        item.state = ItemState::InFlight { deadline_ms };
        meta.in_flight += 1;
        tx.put(&keys.inflight(deadline_ms, seq), b"")?;
        tx.put_record(&keys.item(seq), &item)?;
        items.push(Delivery {
            receipt: Receipt { seq, delivery: item.deliveries },
            payload: item.payload,
            enqueued_ms: item.enqueued_ms,
            dedup_id: item.dedup_id,
        });
    }
    let next_visible_in_ms = if items.is_empty() {
        tx.first_key(&keys.inflight_all(), &prefix_end(&keys.inflight_all()))?
            .and_then(|k| deadline_of(&k))
            .map(|d| d.saturating_sub(now_ms))
    } else {
        None
    };
    if !items.is_empty() || dead_lettered + dropped > 0 {
        tx.put_record(&keys.meta(), &meta)?;
    }
    Ok(QueueResult::Delivered { items, dead_lettered, next_visible_in_ms })
}

/// The item a receipt names, if that receipt is its latest delivery and it is in flight.
fn in_flight<S: KvStore>(
    tx: &Tx<'_, S>,
    keys: &Keys,
    receipt: Receipt,
) -> Result<Option<(QueueItem, u64)>, AspenError> {
    Ok(match tx.record::<QueueItem>(&keys.item(receipt.seq))? {
        Some(item) if item.deliveries == receipt.delivery => match item.state {
            ItemState::InFlight { deadline_ms } => Some((item, deadline_ms)),
            ItemState::Ready => None,
        },
        _ => None,
    })
}

fn ack<S: KvStore>(tx: &mut Tx<'_, S>, queue: &str, receipts: &[Receipt]) -> Result<QueueResult, AspenError> {
    let keys = Keys::new(queue);
    let Some(mut meta) = tx.record::<QueueMeta>(&keys.meta())? else {
        return Ok(QueueResult::Acked { acked: vec![false; receipts.len()] });
    };
    let mut acked = Vec::with_capacity(receipts.len());
    for receipt in receipts {
        let Some((_, deadline_ms)) = in_flight(tx, &keys, *receipt)? else {
            acked.push(false);
            continue;
        };
        tx.delete(&keys.inflight(deadline_ms, receipt.seq))?;
        tx.delete(&keys.item(receipt.seq))?;
        meta.in_flight = meta.in_flight.saturating_sub(1);
        meta.acked += 1;
        acked.push(true);
    }
    if acked.iter().any(|a| *a) {
        tx.put_record(&keys.meta(), &meta)?;
    }
    Ok(QueueResult::Acked { acked })
}

/// Nack (`delay_ms` from now, 0: ready at once) or extend (`delay_ms` = the new visibility).
fn reschedule<S: KvStore>(
    tx: &mut Tx<'_, S>,
    queue: &str,
    receipt: Receipt,
    delay_ms: u64,
    now_ms: u64,
) -> Result<QueueResult, AspenError> {
    let keys = Keys::new(queue);
    let (Some(mut meta), Some((mut item, deadline_ms))) =
        (tx.record::<QueueMeta>(&keys.meta())?, in_flight(tx, &keys, receipt)?)
    else {
        return Err(AspenError::StaleReceipt { queue: queue.to_string(), receipt: receipt.to_string() });
    };
    tx.delete(&keys.inflight(deadline_ms, receipt.seq))?;
    if delay_ms == 0 {
        item.state = ItemState::Ready;
        meta.in_flight = meta.in_flight.saturating_sub(1);
        meta.ready += 1;
        tx.put(&keys.ready(receipt.seq), b"")?;
        tx.put_record(&keys.meta(), &meta)?;
    } else {
        let deadline_ms = now_ms.saturating_add(delay_ms);
        item.state = ItemState::InFlight { deadline_ms };
        tx.put(&keys.inflight(deadline_ms, receipt.seq), b"")?;
    }
    tx.put_record(&keys.item(receipt.seq), &item)?;
    Ok(QueueResult::Rescheduled { visible_in_ms: delay_ms })
}

fn redrive<S: KvStore>(
    tx: &mut Tx<'_, S>,
    from: &str,
    to: &str,
    max: u32,
    now_ms: u64,
) -> Result<QueueResult, AspenError> {
    let (from_keys, to_keys) = (Keys::new(from), Keys::new(to));
    let Some(mut from_meta) = tx.record::<QueueMeta>(&from_keys.meta())? else {
        return Ok(QueueResult::Redriven { moved: 0 });
    };
    let mut to_meta = meta_or_default(tx, &to_keys)?;
    let start = from_keys.ready_all();
    let end = prefix_end(&start);
    let mut moved = 0;
    for index_key in tx.store.range_keys(&start, &end, max as usize)? {
        let seq = seq_of(&index_key).unwrap_or(0);
        tx.delete(&index_key)?;
        from_meta.ready = from_meta.ready.saturating_sub(1);
        if let Some(item) = tx.record::<QueueItem>(&from_keys.item(seq))? {
            append(tx, &to_keys, &mut to_meta, item.payload, item.dedup_id, now_ms)?;
            moved += 1;
        }
        tx.delete(&from_keys.item(seq))?;
    }
    if moved > 0 {
        tx.put_record(&from_keys.meta(), &from_meta)?;
        tx.put_record(&to_keys.meta(), &to_meta)?;
    }
    Ok(QueueResult::Redriven { moved })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_keys_parse_back() {
        let keys = Keys::new("jobs");
        let k = keys.inflight(0xdead_beef, 42);
        assert_eq!(seq_of(&k), Some(42));
        assert_eq!(deadline_of(&k), Some(0xdead_beef));
        assert_eq!(seq_of(&keys.ready(7)), Some(7));
        assert!(keys.inflight(5, 1) < keys.inflight_after(5));
        assert!(keys.inflight(6, 1) > keys.inflight_after(5));
    }

    #[test]
    fn receipts_round_trip_and_bad_ones_are_named() {
        let r: Receipt = "42.3".parse().unwrap();
        assert_eq!(r, Receipt { seq: 42, delivery: 3 });
        assert_eq!(r.to_string(), "42.3");
        let err = "42".parse::<Receipt>().unwrap_err();
        assert!(err.contains("SEQ.DELIVERY"), "{err}");
    }

    #[test]
    fn names_are_checked() {
        assert!(validate_name("jobs.v2_a-b").is_ok());
        for bad in ["", "a/b", "a b", &"x".repeat(129)] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
    }
}

#[cfg(test)]
mod golden {
    use super::DedupRecord;
    use crate::golden::{check_file, sample};

    /// The dedup record is private to the apply step, but it is stored in the KV.
    #[test]
    fn the_dedup_record_keeps_its_bytes() {
        let path = crate::golden::crate_dir(env!("CARGO_MANIFEST_DIR")).join("tests/golden/queue_private.txt");
        check_file(&path, &[sample("DedupRecord", &DedupRecord { seq: 41, expires_ms: 1_700_000_300_000 })]);
    }
}
