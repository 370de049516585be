//! The cache's client protocol, [`CACHE_ALPN`]: one request frame and one answer frame per
//! bi-stream. Requests that carry a NAR (`AddPath`, `StageNar`) send its bytes raw after the
//! request frame and finish the stream; `ReadNar` answers with a `Nar` frame and then the
//! bytes. Every enum here is frozen: variants are only appended (`tests/golden.rs`).

use aspen_core::AspenError;
use serde::{Deserialize, Serialize};

use crate::records::{CacheRecord, Compression, PinRecord};

/// The cache's ALPN.
pub const CACHE_ALPN: &[u8] = b"aspen/cache/1";
/// Most entries one list or query answers.
pub const MAX_LIST: u32 = 1_000;

/// The settings a cache is created with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheSettings {
    pub public_reads: bool,
    pub compression: Compression,
    pub retention_secs: u64,
    pub priority: u32,
    /// The signing key's name, as it appears in `trusted-public-keys` (default `<cache>-1`).
    pub key_name: Option<String>,
}

/// What a pusher says about a store path whose NAR follows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathUpload {
    /// The base name (`<hash>-<name>`).
    pub store_path: String,
    pub nar_hash: [u8; 32],
    pub nar_size: u64,
    pub references: Vec<String>,
    pub deriver: Option<String>,
    pub ca: Option<String>,
    /// Signatures the path already carries (kept beside the cache's own).
    pub sigs: Vec<String>,
}

/// A path as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathAdded {
    pub store_path: String,
    pub nar_blob: [u8; 32],
    /// On how many nodes the NAR is.
    pub replicas: u32,
}

/// A named cache.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheInfo {
    pub name: String,
    pub record: CacheRecord,
}

/// What one collection did (or, dry, would do).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct GcReport {
    pub kept: u64,
    pub deleted: u64,
    /// NAR bytes of the deleted paths (shared NARs count once per path).
    pub deleted_bytes: u64,
    pub dry_run: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CacheRequest {
    CreateCache {
        name: String,
        settings: CacheSettings,
    },
    ListCaches {
        after: Option<String>,
        limit: u32,
    },
    ShowCache {
        name: String,
    },
    /// Which of these store paths (base names) the cache lacks.
    QueryMissing {
        cache: String,
        store_paths: Vec<String>,
    },
    /// The narinfo text of a path, signed, as the gateway serves it.
    NarInfo {
        cache: String,
        hash_part: String,
    },
    /// Adds a path; its NAR follows the frame.
    AddPath {
        cache: String,
        path: PathUpload,
    },
    /// A byte range of a path's NAR, uncompressed; `nar_hash`, when given, must be the
    /// stored one.
    ReadNar {
        cache: String,
        hash_part: String,
        nar_hash: Option<[u8; 32]>,
        offset: u64,
        len: u64,
    },
    /// Stages a NAR file uploaded ahead of its narinfo (`nix copy --to http://`); the file
    /// (compressed as its name says) follows the frame.
    StageNar {
        cache: String,
        file_name: String,
    },
    /// Adds a path from a narinfo whose URL names a staged NAR.
    AddNarInfo {
        cache: String,
        text: String,
    },
    Pin {
        cache: String,
        name: String,
        store_path: String,
    },
    Unpin {
        cache: String,
        name: String,
    },
    ListPins {
        cache: String,
    },
    CollectGarbage {
        cache: String,
        dry_run: bool,
    },
}

impl CacheRequest {
    pub fn name(&self) -> &'static str {
        match self {
            CacheRequest::CreateCache { .. } => "cache_create",
            CacheRequest::ListCaches { .. } => "cache_list",
            CacheRequest::ShowCache { .. } => "cache_show",
            CacheRequest::QueryMissing { .. } => "cache_query_missing",
            CacheRequest::NarInfo { .. } => "cache_narinfo",
            CacheRequest::AddPath { .. } => "cache_add_path",
            CacheRequest::ReadNar { .. } => "cache_read_nar",
            CacheRequest::StageNar { .. } => "cache_stage_nar",
            CacheRequest::AddNarInfo { .. } => "cache_add_narinfo",
            CacheRequest::Pin { .. } => "cache_pin",
            CacheRequest::Unpin { .. } => "cache_unpin",
            CacheRequest::ListPins { .. } => "cache_pins",
            CacheRequest::CollectGarbage { .. } => "cache_gc",
        }
    }

    /// Whether sending it twice does what sending it once does.
    pub fn is_repeatable(&self) -> bool {
        matches!(
            self,
            CacheRequest::ListCaches { .. }
                | CacheRequest::ShowCache { .. }
                | CacheRequest::QueryMissing { .. }
                | CacheRequest::NarInfo { .. }
                | CacheRequest::AddNarInfo { .. }
                | CacheRequest::Pin { .. }
                | CacheRequest::Unpin { .. }
                | CacheRequest::ListPins { .. }
                | CacheRequest::CollectGarbage { .. }
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CacheResponse {
    Error(AspenError),
    Cache(CacheInfo),
    Caches {
        caches: Vec<CacheInfo>,
        more: bool,
    },
    Missing(Vec<String>),
    NarInfo(Option<String>),
    Added(PathAdded),
    /// The NAR's whole size; the range's bytes follow.
    Nar {
        size: u64,
    },
    Staged {
        nar_hash: [u8; 32],
        nar_size: u64,
    },
    Done,
    Pins(Vec<(String, PinRecord)>),
    Collected(GcReport),
}
