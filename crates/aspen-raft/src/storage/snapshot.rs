//! The snapshot file: a header frame, then one frame per record, then an end frame.
//! Frames are a 4-byte big-endian length and a postcard body, so snapshots stream in
//! constant memory both when built and when installed.

use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use aspen_core::limits::{MAX_KEY_BYTES, MAX_VALUE_BYTES};
use serde::{Deserialize, Serialize};

use super::io_err;
use crate::types::SnapshotMeta;

pub const FORMAT_VERSION: u32 = 2;
/// A record is at most a key, a value and their metadata.
const MAX_RECORD_BYTES: usize = MAX_KEY_BYTES + MAX_VALUE_BYTES + 1024;

#[derive(Debug, Serialize, Deserialize)]
pub struct SnapshotHeader {
    pub format_version: u32,
    pub meta: SnapshotMeta,
    pub revision: u64,
    pub next_lease_id: u64,
    pub cluster_root: Option<[u8; 32]>,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum SnapshotRecord {
    /// Key and its encoded `KvEntry`.
    Kv(#[serde(with = "serde_bytes")] Vec<u8>, #[serde(with = "serde_bytes")] Vec<u8>),
    /// Lease id and its encoded `LeaseRecord`.
    Lease(u64, #[serde(with = "serde_bytes")] Vec<u8>),
    /// A `lease_keys` table key.
    LeaseKey(#[serde(with = "serde_bytes")] Vec<u8>),
    End,
    /// A revoked token link hash.
    Revoked([u8; 32]),
}

pub struct SnapshotWriter {
    out: BufWriter<std::fs::File>,
    tmp: PathBuf,
}

impl SnapshotWriter {
    pub fn create(tmp: PathBuf, header: &SnapshotHeader) -> std::io::Result<Self> {
        let file = std::fs::File::create(&tmp)?;
        let mut w = SnapshotWriter { out: BufWriter::with_capacity(1 << 20, file), tmp };
        w.frame(header)?;
        Ok(w)
    }

    fn frame<T: Serialize>(&mut self, value: &T) -> std::io::Result<()> {
        let body = postcard::to_allocvec(value).map_err(io_err)?;
        self.out.write_all(&(body.len() as u32).to_be_bytes())?;
        self.out.write_all(&body)
    }

    pub fn record(&mut self, record: &SnapshotRecord) -> std::io::Result<()> {
        self.frame(record)
    }

    /// Ends, fsyncs and renames the file into place.
    pub fn finish(mut self, path: &Path) -> std::io::Result<()> {
        self.frame(&SnapshotRecord::End)?;
        let file = self.out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        std::fs::rename(&self.tmp, path)?;
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}

pub struct SnapshotReader<R: Read> {
    input: BufReader<R>,
}

impl<R: Read> SnapshotReader<R> {
    pub fn open(input: R) -> std::io::Result<(Self, SnapshotHeader)> {
        let mut r = SnapshotReader { input: BufReader::with_capacity(1 << 20, input) };
        let header: SnapshotHeader = r.frame(64 * 1024)?;
        if header.format_version != FORMAT_VERSION {
            return Err(io_err(format!("snapshot format {} is not {FORMAT_VERSION}", header.format_version)));
        }
        Ok((r, header))
    }

    fn frame<T: serde::de::DeserializeOwned>(&mut self, max: usize) -> std::io::Result<T> {
        let mut len = [0u8; 4];
        self.input.read_exact(&mut len)?;
        let len = u32::from_be_bytes(len) as usize;
        if len > max {
            return Err(io_err(format!("snapshot frame of {len} bytes is over {max}")));
        }
        let mut body = vec![0u8; len];
        self.input.read_exact(&mut body)?;
        postcard::from_bytes(&body).map_err(io_err)
    }

    /// The next record; `None` after the end frame.
    pub fn next_record(&mut self) -> std::io::Result<Option<SnapshotRecord>> {
        match self.frame(MAX_RECORD_BYTES)? {
            SnapshotRecord::End => Ok(None),
            r => Ok(Some(r)),
        }
    }
}

pub fn snapshot_file_name(meta: &SnapshotMeta) -> String {
    match &meta.last_log_id {
        Some(l) => format!("snap-{:020}-{:020}.bin", l.index, l.leader_id.term),
        None => "snap-empty.bin".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// A corrupt or hostile snapshot file is an error, never a panic, and never an
        /// allocation beyond the frame bounds checked before reading.
        #[test]
        fn arbitrary_snapshot_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1024)) {
            if let Ok((mut reader, _)) = SnapshotReader::open(std::io::Cursor::new(bytes)) {
                for _ in 0..64 {
                    match reader.next_record() {
                        Ok(Some(_)) => {}
                        _ => break,
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod golden {
    use std::collections::{BTreeMap, BTreeSet};

    use aspen_core::api::NodeAddr;
    use aspen_core::golden::{check_file, sample};

    use super::{FORMAT_VERSION, SnapshotHeader, SnapshotRecord};
    use crate::types::{SnapshotMeta, StoredMembership};

    /// A snapshot file is a header frame and record frames: both must keep their bytes, or a
    /// node could not install a snapshot a peer of the previous version built.
    #[test]
    fn snapshot_frames_keep_their_bytes() {
        let log_id = openraft::testing::log_id::<crate::TypeConfig>(3, 1, 9);
        let addr = NodeAddr { endpoint_id: [1; 32], addrs: vec!["127.0.0.1:7701".parse().unwrap()] };
        let membership =
            openraft::Membership::new(vec![BTreeSet::from([1])], BTreeMap::from([(1, addr)])).expect("membership");
        let meta = SnapshotMeta {
            last_log_id: Some(log_id),
            last_membership: StoredMembership::new(Some(log_id), membership),
        };
        let header = SnapshotHeader {
            format_version: FORMAT_VERSION,
            meta,
            revision: 42,
            next_lease_id: 7,
            cluster_root: Some([3; 32]),
        };
        let path = aspen_core::golden::crate_dir(env!("CARGO_MANIFEST_DIR")).join("tests/golden/snapshot.txt");
        check_file(
            &path,
            &[
                sample("Header", &header),
                sample("Record.Kv", &SnapshotRecord::Kv(b"k".to_vec(), b"entry".to_vec())),
                sample("Record.Lease", &SnapshotRecord::Lease(7, b"lease".to_vec())),
                sample("Record.LeaseKey", &SnapshotRecord::LeaseKey(b"lk".to_vec())),
                sample("Record.End", &SnapshotRecord::End),
                sample("Record.Revoked", &SnapshotRecord::Revoked([4; 32])),
            ],
        );
    }
}
