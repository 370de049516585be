//! What a key under an AspenFS prefix holds: the frozen value format.
//!
//! A value written by a mount is [`MAGIC`] followed by a postcard-encoded [`Record`]. Any
//! other value is a plain file whose bytes are the value itself, so `aspen kv put
//! fs/home/notes.txt hello` makes a file a mount shows at once. A value that starts with
//! [`MAGIC`] but does not decode is reported as corrupt, never shown as file bytes.
//!
//! Frozen: new variants go at the end of each enum; a change of meaning is a new variant.

use serde::{Deserialize, Serialize};

/// The first bytes of every record a mount writes. No text file starts with a NUL byte.
pub const MAGIC: &[u8; 8] = b"\0aspenfs";

/// Mode bits of a file that a plain (non-record) value stands for.
pub const PLAIN_FILE_MODE: u32 = 0o644;
/// Mode bits of a directory that only exists because keys lie below it.
pub const IMPLICIT_DIR_MODE: u32 = 0o755;

/// One filesystem object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Record {
    /// A regular file. `mode` holds the permission bits only.
    File { mode: u32, mtime_ns: u64, data: FileData },
    /// A directory's explicit entry, kept under the directory's key plus `/` so that an
    /// empty directory exists.
    Dir { mode: u32, mtime_ns: u64 },
    /// A symbolic link to `target` (bytes, as the kernel gave them).
    Symlink {
        #[serde(with = "serde_bytes")]
        target: Vec<u8>,
        mtime_ns: u64,
    },
}

/// Where a file's bytes are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FileData {
    /// In the record itself.
    Inline(#[serde(with = "serde_bytes")] Vec<u8>),
    /// In blobs of `chunk_bytes` each (the last one shorter), in order.
    Chunks { size: u64, chunk_bytes: u32, chunks: Vec<[u8; 32]> },
}

impl FileData {
    pub fn size(&self) -> u64 {
        match self {
            FileData::Inline(bytes) => bytes.len() as u64,
            FileData::Chunks { size, .. } => *size,
        }
    }
}

/// A value that starts with [`MAGIC`] and does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an AspenFS record that does not decode: {0}")]
pub struct CorruptRecord(pub String);

impl Record {
    /// The value to store.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend(postcard::to_stdvec(self).expect("records always encode"));
        out
    }

    /// The record a stored value stands for; `plain_mtime_ns` is the mtime given to a plain
    /// value, which carries none.
    pub fn decode(value: &[u8], plain_mtime_ns: u64) -> Result<Record, CorruptRecord> {
        match value.strip_prefix(MAGIC.as_slice()) {
            Some(body) => postcard::from_bytes(body).map_err(|e| CorruptRecord(e.to_string())),
            None => Ok(Record::File {
                mode: PLAIN_FILE_MODE,
                mtime_ns: plain_mtime_ns,
                data: FileData::Inline(value.to_vec()),
            }),
        }
    }

    pub fn mtime_ns(&self) -> u64 {
        match self {
            Record::File { mtime_ns, .. } | Record::Dir { mtime_ns, .. } | Record::Symlink { mtime_ns, .. } => {
                *mtime_ns
            }
        }
    }
}

/// The largest file kept inline: a record must fit in one KV value.
pub fn max_inline_bytes() -> usize {
    // Magic, the variant tags, mode and mtime varints, the length varint: 40 bytes is ample.
    aspen_core::limits::MAX_VALUE_BYTES - 40
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_value_is_a_file_of_those_bytes() {
        let r = Record::decode(b"hello", 7).unwrap();
        assert_eq!(r, Record::File { mode: PLAIN_FILE_MODE, mtime_ns: 7, data: FileData::Inline(b"hello".to_vec()) });
    }

    #[test]
    fn records_round_trip_and_a_bad_one_is_corrupt() {
        let r = Record::Symlink { target: b"../x".to_vec(), mtime_ns: 1 };
        assert_eq!(Record::decode(&r.encode(), 0).unwrap(), r);
        let mut bad = MAGIC.to_vec();
        bad.push(200);
        assert!(Record::decode(&bad, 0).is_err());
    }

    #[test]
    fn the_largest_inline_file_fits_in_a_value() {
        let r =
            Record::File { mode: 0o100777, mtime_ns: u64::MAX, data: FileData::Inline(vec![0; max_inline_bytes()]) };
        assert!(r.encode().len() <= aspen_core::limits::MAX_VALUE_BYTES);
    }
}
