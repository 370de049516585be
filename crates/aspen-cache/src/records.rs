//! What the cache keeps in the KV, under its own prefix `_aspen/cache/`:
//!
//! - `cache/<name>`: a named cache's [`CacheRecord`] (its public key, who may read, how NARs
//!   are served, how long paths are kept);
//! - `secret/<name>`: the cache's signing key, sealed with the cluster's secrets key
//!   (`aspen_app::secrets`); no token opens it, only the app on a node holding that key;
//! - `path/<cache>/<hash part>`: a [`PathRecord`], one store path the cache serves. Its NAR
//!   is a blob, stored once uncompressed and pinned as `cache/<cache>/<hash part>`: the same
//!   NAR in two caches is one blob with two pins;
//! - `staged/<cache>/<file name>`: a [`StagedNar`], a NAR uploaded over HTTP before its
//!   narinfo, under a lease, so one that never gets its narinfo goes away;
//! - `pin/<cache>/<pin name>`: a [`PinRecord`], a store path garbage collection keeps with its
//!   closure whatever its age;
//! - `activity/<cache>`: rewritten by every transaction that adds a path, so garbage
//!   collection knows nothing was added (and no closure grew) while it decided;
//! - `gc-fence/<cache>`: rewritten by every collection that deletes, so a push that checked
//!   its references are there knows none went before it committed.
//!
//! Records are postcard; each is frozen (`tests/golden.rs`).

use aspen_core::AspenError;
use serde::{Deserialize, Serialize};

/// Prefix of every cache record.
pub const CACHE_PREFIX: &str = "_aspen/cache/";
/// Prefix of the blob pins the cache holds.
pub const PIN_SCOPE: &str = "cache/";
/// Longest cache name.
pub const MAX_CACHE_NAME: usize = 64;
/// Longest pin name.
pub const MAX_PIN_NAME: usize = 128;

/// How the gateway serves a cache's NARs: the NAR is stored once, uncompressed, and
/// compressed on the fly when a cache asks for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Compression {
    #[default]
    None,
    Xz,
    Zstd,
}

impl Compression {
    /// The name narinfo's `Compression:` gives it.
    pub fn nix_name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Xz => "xz",
            Compression::Zstd => "zstd",
        }
    }

    /// What a NAR's file name ends with.
    pub fn extension(self) -> &'static str {
        match self {
            Compression::None => ".nar",
            Compression::Xz => ".nar.xz",
            Compression::Zstd => ".nar.zst",
        }
    }

    pub fn parse(text: &str) -> Result<Self, AspenError> {
        match text {
            "none" => Ok(Compression::None),
            "xz" => Ok(Compression::Xz),
            "zstd" => Ok(Compression::Zstd),
            other => Err(AspenError::invalid(format!("unknown compression {other:?}: it is none, xz or zstd"))),
        }
    }

    /// The compression of an uploaded NAR file, by its name.
    pub fn of_file_name(name: &str) -> Result<Self, AspenError> {
        for c in [Compression::Xz, Compression::Zstd, Compression::None] {
            if name.ends_with(c.extension()) {
                return Ok(c);
            }
        }
        Err(AspenError::invalid(format!(
            "NAR file {name:?} is not .nar, .nar.xz or .nar.zst (upload with ?compression=none, xz or zstd)"
        )))
    }
}

/// A named cache. Frozen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheRecord {
    pub created_ms: u64,
    /// Its signing key's public half, `name:base64`, for `trusted-public-keys`.
    pub public_key: String,
    /// Whether anyone may read it over HTTP without a token.
    pub public_reads: bool,
    pub compression: Compression,
    /// How long a path is kept after it was last pushed, unless pinned or referenced by a
    /// kept path; 0 keeps paths until they are deleted.
    pub retention_secs: u64,
    /// The `Priority:` of its `nix-cache-info` (lower is tried first).
    pub priority: u32,
}

/// One store path in a cache. Frozen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathRecord {
    /// The store path's base name (`<hash>-<name>`).
    pub store_path: String,
    /// The blob holding its NAR, uncompressed.
    pub nar_blob: [u8; 32],
    pub nar_hash: [u8; 32],
    pub nar_size: u64,
    /// Base names.
    pub references: Vec<String>,
    pub deriver: Option<String>,
    pub ca: Option<String>,
    /// `name:base64` signatures: the cache's own, and any the pusher's narinfo carried.
    pub sigs: Vec<String>,
    /// When it was last pushed, by the receiving node's clock (ms since the Unix epoch).
    pub pushed_ms: u64,
}

/// A NAR uploaded ahead of its narinfo. Frozen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StagedNar {
    pub nar_blob: [u8; 32],
    pub nar_hash: [u8; 32],
    pub nar_size: u64,
}

/// A pin: a store path kept with its closure. Frozen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinRecord {
    /// The store path's base name.
    pub store_path: String,
    pub created_ms: u64,
}

pub fn cache_key(name: &str) -> Vec<u8> {
    format!("{CACHE_PREFIX}cache/{name}").into_bytes()
}

pub fn caches_prefix() -> Vec<u8> {
    format!("{CACHE_PREFIX}cache/").into_bytes()
}

pub fn secret_key(name: &str) -> Vec<u8> {
    format!("{CACHE_PREFIX}secret/{name}").into_bytes()
}

pub fn path_key(cache: &str, hash_part: &str) -> Vec<u8> {
    format!("{CACHE_PREFIX}path/{cache}/{hash_part}").into_bytes()
}

pub fn paths_prefix(cache: &str) -> Vec<u8> {
    format!("{CACHE_PREFIX}path/{cache}/").into_bytes()
}

pub fn staged_key(cache: &str, file_name: &str) -> Vec<u8> {
    format!("{CACHE_PREFIX}staged/{cache}/{file_name}").into_bytes()
}

pub fn pin_key(cache: &str, pin: &str) -> Vec<u8> {
    format!("{CACHE_PREFIX}pin/{cache}/{pin}").into_bytes()
}

pub fn pins_prefix(cache: &str) -> Vec<u8> {
    format!("{CACHE_PREFIX}pin/{cache}/").into_bytes()
}

pub fn activity_key(cache: &str) -> Vec<u8> {
    format!("{CACHE_PREFIX}activity/{cache}").into_bytes()
}

pub fn gc_fence_key(cache: &str) -> Vec<u8> {
    format!("{CACHE_PREFIX}gc-fence/{cache}").into_bytes()
}

/// The blob pin holding a path's NAR.
pub fn blob_pin(cache: &str, hash_part: &str) -> String {
    format!("{PIN_SCOPE}{cache}/{hash_part}")
}

/// The last `/`-separated part of a key: a cache's, path's or pin's name.
pub fn last_part(key: &[u8]) -> String {
    let text = String::from_utf8_lossy(key);
    text.rsplit('/').next().unwrap_or_default().to_string()
}

/// Cache names: 1 to 64 of `a-z 0-9 - _ .`, not starting with `.` or `-`. They appear in
/// URLs and KV keys.
pub fn validate_cache_name(name: &str) -> Result<(), AspenError> {
    validate_name("cache", name, MAX_CACHE_NAME)
}

/// Pin names, like cache names (up to 128 bytes).
pub fn validate_pin_name(name: &str) -> Result<(), AspenError> {
    validate_name("pin", name, MAX_PIN_NAME)
}

fn validate_name(what: &str, name: &str, max: usize) -> Result<(), AspenError> {
    if name.is_empty() || name.len() > max {
        return Err(AspenError::invalid(format!("a {what} name is 1 to {max} bytes, not {}", name.len())));
    }
    if name.starts_with(['.', '-']) {
        return Err(AspenError::invalid(format!("{what} name {name:?} starts with {:?}", &name[..1])));
    }
    if let Some(c) = name.chars().find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '-' | '_' | '.')) {
        return Err(AspenError::invalid(format!(
            "{what} name {name:?} holds {c:?}; it may hold only a-z, 0-9, '-', '_' and '.'"
        )));
    }
    Ok(())
}

pub fn encode<T: Serialize>(record: &T) -> Vec<u8> {
    postcard::to_stdvec(record).unwrap_or_default()
}

pub fn decode<'a, T: Deserialize<'a>>(what: &str, bytes: &'a [u8]) -> Result<T, AspenError> {
    postcard::from_bytes(bytes).map_err(|e| AspenError::internal(format!("a stored {what} record is unreadable: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_url_and_key_safe() {
        for good in ["main", "ci-cache", "a.b_c", "x"] {
            validate_cache_name(good).unwrap();
        }
        for bad in ["", "Main", "a/b", "-x", ".x", "a b", &"a".repeat(65)] {
            assert!(validate_cache_name(bad).is_err(), "{bad:?}");
        }
        assert_eq!(last_part(&path_key("main", "abc")), "abc");
    }

    #[test]
    fn compression_names_and_extensions_agree() {
        for c in [Compression::None, Compression::Xz, Compression::Zstd] {
            assert_eq!(Compression::parse(c.nix_name()).unwrap(), c);
            assert_eq!(Compression::of_file_name(&format!("nar/abc{}", c.extension())).unwrap(), c);
        }
        assert!(Compression::of_file_name("nar/abc.nar.bz2").unwrap_err().to_string().contains(".nar.xz"));
        assert!(Compression::parse("bzip2").is_err());
    }
}
