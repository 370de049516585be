//! The blob app's protocols: [`BLOB_ALPN`] between clients and nodes, and the member calls
//! one node makes to the blob app of another (over the node's members-only ALPN).
//!
//! Each request is one bi-stream starting with one postcard frame. Bytes of a blob travel
//! raw on the same stream: after an `Add` frame until the client finishes its side; after an
//! `AddBatch` frame as `count` items, each an 8-byte big-endian length and that many bytes;
//! after a `Data` answer, exactly the announced length. Every enum here is frozen: variants
//! are only appended (`tests/golden.rs`).

use aspen_core::AspenError;
use serde::{Deserialize, Serialize};

use crate::records::BlobHash;

/// ALPN of the blob app's client protocol.
pub const BLOB_ALPN: &[u8] = b"aspen/blob/1";
/// The blob app's name: the `app` of its capabilities and its member-stream route.
pub const APP: &str = "blob";
/// Reading blobs (get, has, status) and listing pins.
pub const READ: &str = "read";
/// Adding blobs, pinning and unpinning.
pub const WRITE: &str = "write";

/// Most entries one list or pins answer names.
pub const MAX_LIST: u32 = 10_000;
/// Entries a list answers when the request names no limit.
pub const DEFAULT_LIST: u32 = 1_000;
/// Most blobs one batch add carries.
pub const MAX_BATCH: u32 = 4_096;
/// Largest blob of a batch add (large blobs go one per `Add`).
pub const MAX_BATCH_ITEM_BYTES: u64 = 64 * 1024 * 1024;
/// Most blob copies one repair round makes.
pub const MAX_REPAIR_COPIES: usize = 256;

/// A request on [`BLOB_ALPN`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BlobRequest {
    /// Adds the raw bytes that follow this frame, until the client finishes its side.
    /// With `expected`, bytes that hash to anything else are refused. Answered with `Added`
    /// once the replica target holds the blob.
    Add { expected: Option<BlobHash> },
    /// Reads a blob: the whole of it, or `len` bytes from `offset`. Answered with `Data`
    /// and the bytes.
    Get { hash: BlobHash, range: Option<ByteRange> },
    /// Whether some member holds the blob complete. Answered with `Has`.
    Has { hash: BlobHash },
    /// The complete blobs the cluster's members hold, in hash order after `after`.
    /// Answered with `List`.
    List { after: Option<BlobHash>, limit: u32 },
    /// What every member says of the blob. Answered with `Status`.
    Status { hash: BlobHash },
    /// Names a blob with a pin (the blob must be held somewhere). Answered with `Done`.
    Pin { name: String, hash: BlobHash },
    /// Removes a pin. Answered with `Unpinned`.
    Unpin { name: String },
    /// Pins whose names start with `prefix`, in name order after `after`. Answered with `Pins`.
    Pins { prefix: String, after: Option<String>, limit: u32 },
    /// Adds `count` blobs that follow this frame (each an 8-byte big-endian length, then
    /// its bytes), with one replication round for all of them. Answered with `AddedBatch`.
    AddBatch { count: u32 },
}

impl BlobRequest {
    /// Short name, for logs and errors.
    pub fn name(&self) -> &'static str {
        match self {
            BlobRequest::Add { .. } => "blob_add",
            BlobRequest::Get { .. } => "blob_get",
            BlobRequest::Has { .. } => "blob_has",
            BlobRequest::List { .. } => "blob_list",
            BlobRequest::Status { .. } => "blob_status",
            BlobRequest::Pin { .. } => "blob_pin",
            BlobRequest::Unpin { .. } => "blob_unpin",
            BlobRequest::Pins { .. } => "blob_pins",
            BlobRequest::AddBatch { .. } => "blob_add_batch",
        }
    }

    /// True when sending it twice has the same effect as once (content-addressed adds
    /// store the same bytes once; a pin names the same hash again).
    pub fn is_repeatable(&self) -> bool {
        !matches!(self, BlobRequest::Unpin { .. })
    }
}

/// `len` bytes from `offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ByteRange {
    pub offset: u64,
    pub len: u64,
}

/// An answer on [`BLOB_ALPN`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BlobResponse {
    Added(Added),
    /// The blob is `size` bytes; `len` bytes from `offset` follow this frame, raw.
    Data {
        size: u64,
        offset: u64,
        len: u64,
    },
    Has {
        size: Option<u64>,
    },
    List {
        blobs: Vec<BlobEntry>,
        more: bool,
    },
    Status {
        holders: Vec<BlobHolder>,
    },
    Unpinned {
        existed: bool,
    },
    Pins {
        pins: Vec<PinEntry>,
        more: bool,
    },
    AddedBatch {
        blobs: Vec<Added>,
    },
    Done,
    Error(AspenError),
}

impl aspen_client::Answer for BlobResponse {
    fn error(&self) -> Option<&AspenError> {
        match self {
            BlobResponse::Error(e) => Some(e),
            _ => None,
        }
    }
    fn into_error(self) -> Result<Self, AspenError> {
        match self {
            BlobResponse::Error(e) => Err(e),
            other => Ok(other),
        }
    }
}

/// A stored blob: its hash and size, and how many nodes held it when the add was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Added {
    pub hash: BlobHash,
    pub size: u64,
    pub replicas: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobEntry {
    pub hash: BlobHash,
    pub size: u64,
}

/// What one member said of a blob: its size when it holds it complete, or why it could not
/// be asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobHolder {
    pub node_id: u64,
    pub size: Option<u64>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinEntry {
    pub name: String,
    pub hash: BlobHash,
}

/// A call from the blob app on one member to the blob app on another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemberCall {
    /// Fetch the blob from the other members now (`from` first) and keep it durably.
    /// Answered with `Held`.
    Replicate { hash: BlobHash, from: Option<u64> },
    /// Whether this node holds the blob complete (no fetch). Answered with `Held`.
    Has { hash: BlobHash },
    /// The complete blobs this node holds, in hash order after `after`. Answered with `List`.
    List { after: Option<BlobHash>, limit: u32 },
}

/// The answer to a [`MemberCall`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemberAnswer {
    Held { size: Option<u64> },
    List { blobs: Vec<BlobEntry>, more: bool },
    Error(AspenError),
}

/// A list request's limit: 0 means [`DEFAULT_LIST`]; over [`MAX_LIST`] is refused.
pub fn list_limit(limit: u32) -> Result<u32, AspenError> {
    match limit {
        0 => Ok(DEFAULT_LIST),
        l if l > MAX_LIST => Err(AspenError::invalid(format!("blob list limit {l} is over MAX_LIST = {MAX_LIST}"))),
        l => Ok(l),
    }
}
