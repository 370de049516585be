//! Every bound Aspen enforces, named in one place.
//!
//! Exceeding any of them is a clear error that names the limit (see
//! [`crate::error::AspenError`]), never a silent truncation.

/// Largest key, in bytes.
pub const MAX_KEY_BYTES: usize = 4 * 1024;
/// Largest value, in bytes.
pub const MAX_VALUE_BYTES: usize = 1024 * 1024;
/// Most compares, and most operations in each branch, of one transaction.
pub const MAX_TXN_OPS: usize = 128;
/// Most entries a single scan returns; larger requests are refused.
pub const MAX_SCAN_LIMIT: u32 = 10_000;
/// Entries a scan returns when the request names no limit.
pub const DEFAULT_SCAN_LIMIT: u32 = 1_000;
/// Most bytes of keys and values one scan page carries; a page stops early at this budget
/// (with `more` set), so an answer always fits in a frame.
pub const MAX_SCAN_PAGE_BYTES: usize = 4 * 1024 * 1024;
/// Most bytes of keys and values in one watch frame; a batch of events is split by it.
pub const MAX_WATCH_FRAME_BYTES: usize = 2 * 1024 * 1024;
/// Snapshots a node keeps for scans that read every page at one revision.
pub const MAX_SCAN_SNAPSHOTS: usize = 64;
/// How long an unused scan snapshot is kept.
pub const SCAN_SNAPSHOT_IDLE_MS: u64 = 60_000;
/// Largest length-prefixed frame on any Aspen protocol.
pub const MAX_FRAME_BYTES: usize = 8 * 1024 * 1024;
/// Most client writes grouped into one Raft entry.
pub const MAX_WRITE_BATCH: usize = 1_024;
/// Most bytes of keys and values grouped into one Raft entry.
pub const MAX_WRITE_BATCH_BYTES: usize = 2 * 1024 * 1024;
/// Watch events each node keeps for watchers that resume from an older revision.
pub const WATCH_HISTORY_EVENTS: usize = 100_000;
/// Events buffered for one slow watcher before it is told to resume.
pub const WATCH_CHANNEL_EVENTS: usize = 16_384;
/// Shortest lease TTL, in milliseconds.
pub const MIN_LEASE_TTL_MS: u64 = 1_000;
/// Longest lease TTL, in milliseconds (one year).
pub const MAX_LEASE_TTL_MS: u64 = 365 * 24 * 3600 * 1000;
/// Most live leases in a cluster.
pub const MAX_LEASES: u64 = 1_000_000;
/// Most leases expired by one Raft entry.
pub const MAX_EXPIRE_PER_ENTRY: usize = 1_000;
/// Most keys deleted by one delete-range; larger ranges are refused whole.
pub const MAX_DELETE_RANGE_KEYS: u64 = 100_000;
/// Concurrent requests served on one client connection.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 1_024;
/// How long a node waits for the leader to answer a forwarded request.
pub const FORWARD_TIMEOUT_MS: u64 = 10_000;
/// Largest snapshot chunk sent in one frame.
pub const SNAPSHOT_CHUNK_BYTES: usize = 1024 * 1024;
/// Largest frame between Raft peers (an append carries up to [`MAX_RAFT_PAYLOAD_ENTRIES`] batches).
pub const MAX_RAFT_FRAME_BYTES: usize = 64 * 1024 * 1024;
/// Most log entries in one append RPC.
pub const MAX_RAFT_PAYLOAD_ENTRIES: u64 = 24;
/// Log entries between automatic snapshots.
pub const SNAPSHOT_EVERY_ENTRIES: u64 = 20_000;
/// Log bytes appended since the last snapshot that also trigger one: with large batches
/// the entry count alone would let the log grow to gigabytes.
pub const SNAPSHOT_EVERY_LOG_BYTES: u64 = 256 * 1024 * 1024;
/// Log entries kept behind a snapshot so slightly slow followers need no snapshot.
pub const LOG_KEPT_AFTER_SNAPSHOT: u64 = 5_000;
/// A QUIC connection with no traffic for this long is considered dead.
pub const CONNECTION_IDLE_TIMEOUT_MS: u32 = 5_000;
/// Keep-alive interval on every connection, well below the idle timeout.
pub const CONNECTION_KEEPALIVE_MS: u64 = 1_000;
