//! `aspen queue`: work queues with visibility timeouts, acks, dead letters and redrive.

use std::io::Read as _;
use std::time::Duration;

use anyhow::{Context as _, bail};
use aspen_client::Client;
use aspen_coord::{NewItem, Queue, QueueConfig, Receipt};
use serde_json::{Value, json};

use crate::context::Ctx;
use crate::duration::{format_duration, parse_duration};
use crate::output;

#[derive(Debug, clap::Subcommand)]
pub enum QueueCommand {
    /// Create a queue, or change its configuration (unset options keep their defaults).
    Create {
        name: String,
        /// How long a popped item stays hidden when the pop names no --visibility.
        #[arg(long, value_parser = parse_duration, default_value = "30s")]
        visibility: Duration,
        /// Deliveries after which an item moves to the dead-letter queue (0: never).
        #[arg(long, default_value_t = 0)]
        max_deliveries: u32,
        /// The dead-letter queue [default: NAME.dlq].
        #[arg(long)]
        dead_letter: Option<String>,
        /// How long a --dedup-id is remembered.
        #[arg(long, value_parser = parse_duration, default_value = "5m")]
        dedup_window: Duration,
    },
    /// Add items at the end (one per PAYLOAD; `-` reads one item from stdin); prints their
    /// sequence numbers.
    Push {
        name: String,
        #[arg(required = true)]
        payloads: Vec<String>,
        /// Add the item only if no item with this id was pushed within the dedup window
        /// (one payload only).
        #[arg(long)]
        dedup_id: Option<String>,
    },
    /// Take items: prints `RECEIPT PAYLOAD` per item. Ack each receipt before its
    /// visibility timeout ends, or the item is delivered again.
    Pop {
        name: String,
        /// Most items to take.
        #[arg(long, default_value_t = 1)]
        max: u32,
        /// How long the items stay hidden from other pops [default: the queue's].
        #[arg(long, value_parser = parse_duration)]
        visibility: Option<Duration>,
        /// Wait this long for an item when the queue is empty.
        #[arg(long, value_parser = parse_duration, default_value = "0s")]
        wait: Duration,
    },
    /// Acknowledge items: they are done and gone.
    Ack {
        name: String,
        #[arg(required = true)]
        receipts: Vec<Receipt>,
    },
    /// Give an item back, visible again after --delay (at once, at the head, by default).
    Nack {
        name: String,
        receipt: Receipt,
        #[arg(long, value_parser = parse_duration, default_value = "0s")]
        delay: Duration,
    },
    /// Keep a popped item hidden for longer.
    Extend {
        name: String,
        receipt: Receipt,
        /// New visibility timeout, from now.
        #[arg(long, value_parser = parse_duration)]
        visibility: Duration,
    },
    /// Show a queue's counts and configuration.
    Stats { name: String },
    /// List stored items (ready and in flight), oldest first.
    List {
        name: String,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Move items from the dead-letter queue back to the end of NAME.
    Redrive {
        name: String,
        /// The queue to move from [default: NAME's dead-letter queue].
        #[arg(long)]
        from: Option<String>,
        #[arg(long, default_value_t = 1000)]
        max: u32,
    },
}

fn read_payload(arg: String) -> anyhow::Result<Vec<u8>> {
    if arg != "-" {
        return Ok(arg.into_bytes());
    }
    let mut bytes = Vec::new();
    std::io::stdin().read_to_end(&mut bytes).context("cannot read the payload from stdin")?;
    Ok(bytes)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

pub async fn run(ctx: &Ctx, client: &Client, cmd: QueueCommand) -> anyhow::Result<()> {
    match cmd {
        QueueCommand::Create { name, visibility, max_deliveries, dead_letter, dedup_window } => {
            let config = QueueConfig {
                visibility_ms: millis(visibility),
                max_deliveries,
                dead_letter,
                dedup_window_ms: millis(dedup_window),
            };
            Queue::new(client, &name)?.configure(config.clone()).await?;
            if ctx.json {
                output::print_json(&json!({"queue": name, "configured": true}))?;
            } else {
                output::print_line(&format!(
                    "queue {name} configured; dead letters go to {}",
                    config.dead_letter_queue(&name)
                ))?;
            }
        }
        QueueCommand::Push { name, payloads, dedup_id } => {
            if dedup_id.is_some() && payloads.len() != 1 {
                bail!("--dedup-id applies to one payload; {} were given", payloads.len());
            }
            let queue = Queue::new(client, &name)?;
            let items = payloads
                .into_iter()
                .map(|p| Ok(NewItem { payload: read_payload(p)?, dedup_id: dedup_id.clone() }))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let added = queue.enqueue_batch(items).await?;
            if ctx.json {
                let list: Vec<Value> = added.iter().map(|e| json!({"seq": e.seq, "duplicate": e.duplicate})).collect();
                output::print_json(&json!({"queue": name, "items": list}))?;
            } else {
                for e in added {
                    let note = if e.duplicate { " (duplicate: already pushed)" } else { "" };
                    output::print_line(&format!("{}{note}", e.seq))?;
                }
            }
        }
        QueueCommand::Pop { name, max, visibility, wait } => {
            let queue = Queue::new(client, &name)?;
            let messages = if wait.is_zero() {
                queue.try_dequeue(max, visibility).await?
            } else {
                queue.dequeue(max, visibility, wait).await?
            };
            if messages.is_empty() {
                bail!(
                    "queue {name} has no visible item{}",
                    if wait.is_zero() { String::new() } else { format!(" after waiting {}", format_duration(wait)) }
                );
            }
            if ctx.json {
                let list: Vec<Value> = messages
                    .iter()
                    .map(|m| {
                        let mut obj = output::bytes_object("payload", &m.payload);
                        obj.insert("receipt".into(), json!(m.receipt.to_string()));
                        obj.insert("enqueued_ms".into(), json!(m.enqueued_ms));
                        Value::Object(obj)
                    })
                    .collect();
                output::print_json(&json!({"queue": name, "items": list}))?;
            } else {
                for m in messages {
                    output::print_line(&format!("{} {}", m.receipt, output::text(&m.payload)))?;
                }
            }
        }
        QueueCommand::Ack { name, receipts } => {
            let acked = Queue::new(client, &name)?.ack_many(&receipts).await?;
            let stale: Vec<String> =
                receipts.iter().zip(&acked).filter(|(_, ok)| !**ok).map(|(r, _)| r.to_string()).collect();
            if ctx.json {
                output::print_json(
                    &json!({"queue": name, "acked": acked.iter().filter(|a| **a).count(), "stale": stale}),
                )?;
            } else {
                output::print_line(&format!("acked {} of {}", acked.iter().filter(|a| **a).count(), receipts.len()))?;
            }
            if !stale.is_empty() {
                bail!(
                    "stale receipts (already acked, or redelivered after their visibility timeout): {}",
                    stale.join(" ")
                );
            }
        }
        QueueCommand::Nack { name, receipt, delay } => {
            Queue::new(client, &name)?.nack(receipt, delay).await?;
            output::print_line(&format!("{receipt} visible again in {}", format_duration(delay)))?;
        }
        QueueCommand::Extend { name, receipt, visibility } => {
            Queue::new(client, &name)?.extend(receipt, visibility).await?;
            output::print_line(&format!("{receipt} hidden for {}", format_duration(visibility)))?;
        }
        QueueCommand::Stats { name } => {
            let Some(s) = Queue::new(client, &name)?.stats().await? else {
                bail!("queue {name} does not exist (it is created by its first push or by `aspen queue create`)");
            };
            let dlq = s.config.dead_letter_queue(&name);
            if ctx.json {
                output::print_json(&json!({
                    "queue": name, "ready": s.ready, "in_flight": s.in_flight, "acked": s.acked,
                    "dead_lettered": s.dead_lettered, "visibility_ms": s.config.visibility_ms,
                    "max_deliveries": s.config.max_deliveries, "dead_letter": dlq,
                    "dedup_window_ms": s.config.dedup_window_ms,
                }))?;
            } else {
                output::print_line(&format!(
                    "ready={} in_flight={} acked={} dead_lettered={} visibility={} max_deliveries={} dead_letter={dlq}",
                    s.ready,
                    s.in_flight,
                    s.acked,
                    s.dead_lettered,
                    format_duration(Duration::from_millis(s.config.visibility_ms)),
                    s.config.max_deliveries
                ))?;
            }
        }
        QueueCommand::List { name, limit } => {
            let items = Queue::new(client, &name)?.list(limit).await?;
            if ctx.json {
                let list: Vec<Value> = items
                    .iter()
                    .map(|i| {
                        let mut obj = output::bytes_object("payload", &i.item.payload);
                        obj.insert("seq".into(), json!(i.seq));
                        obj.insert("deliveries".into(), json!(i.item.deliveries));
                        obj.insert(
                            "in_flight".into(),
                            json!(matches!(i.item.state, aspen_core::queue::ItemState::InFlight { .. })),
                        );
                        Value::Object(obj)
                    })
                    .collect();
                output::print_json(&json!({"queue": name, "items": list}))?;
            } else {
                for i in items {
                    let state = match i.item.state {
                        aspen_core::queue::ItemState::Ready => "ready",
                        aspen_core::queue::ItemState::InFlight { .. } => "in-flight",
                    };
                    output::print_line(&format!(
                        "{} {state} deliveries={} {}",
                        i.seq,
                        i.item.deliveries,
                        output::text(&i.item.payload)
                    ))?;
                }
            }
        }
        QueueCommand::Redrive { name, from, max } => {
            let queue = Queue::new(client, &name)?;
            let from = match from {
                Some(f) => f,
                None => queue.stats().await?.map(|s| s.config).unwrap_or_default().dead_letter_queue(&name),
            };
            let moved = queue.redrive_from(&from, max).await?;
            if ctx.json {
                output::print_json(&json!({"queue": name, "from": from, "moved": moved}))?;
            } else {
                output::print_line(&format!("moved {moved} items from {from} to {name}"))?;
            }
        }
    }
    Ok(())
}
